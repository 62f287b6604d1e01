"""The README summary: the headline tables, the plots and a link to the whole report, spliced between
README.md's `<!-- benchmark-report:start -->` and `<!-- benchmark-report:end -->` lines."""

import os
import sys

from benchmarks import harness
from benchmarks.report_format import (COMMANDS, PEER, QUALITY_INPUTS, config_names, image, jit_name, jit_settings,
                                      lengths_of, measured, not_measured, quoted_bindings, table, times)
from benchmarks.report_plots import PLOT_CAPTIONS
from benchmarks.report_tables import FAMILY_HEADER, family_cells, family_record, from_scratch_cells

README_START, README_END = "<!-- benchmark-report:start -->", "<!-- benchmark-report:end -->"


def headline_lengths(records):
    """The README table's lengths: the longest where dense attention was measured, and the longest of all."""
    dense = [r["length"] for r in records if r["config"] == "dense" and measured(r)]
    return sorted({max(dense, default=max(lengths_of(records))), max(lengths_of(records))})


def headline(results):
    """The README's table: each config's training step, both jit settings, at the `headline_lengths`."""
    data = results["families"]
    if not data:
        return [not_measured("families")]
    records = data["records"]
    lengths = headline_lengths(records)
    rows = []
    for length in lengths:
        for jit in jit_settings(records):
            dense, peer = (family_record(records, c, length, jit) for c in ("dense", PEER))
            for config in config_names(records):
                record = family_record(records, config, length, jit)
                if record and config != PEER:
                    rows.append([config, f"{length:,}", jit_name(jit),
                                 *family_cells(record, dense, peer, data.get("peak"))])
        peer = family_record(records, PEER, length, None)
        if peer:  # once per length, without a dense baseline: dense differs per jit setting
            rows.append([PEER, f"{length:,}", "n/a", *family_cells(peer, None, peer, data.get("peak"))])
    machine = f" on {data['machine']}" if data.get("machine") else ""
    return [f"A whole training step of each family at {' and '.join(f'{n:,}' for n in lengths)} tokens{machine} "
            f"(`{(data.get('command') or COMMANDS['families']).strip()}`; speed vs X: X's time over this one's):",
            "", *table(["config", "length", "jit", *FAMILY_HEADER], rows, text_columns=3)]


def quality_headline(results, name):
    """The README's lines on one quality run: held-out bits/byte of each preset after the same budget, next to
    xz -9."""
    data = results[name]
    if not data or not data.get("xz_bits_per_byte"):
        return []
    xz = data["xz_bits_per_byte"]
    runs = sorted((r for r in data["records"] if measured(r)), key=lambda r: r["bits_per_byte"])
    settings = data["settings"]
    rate = data.get("matmul_flops_per_s")
    machine = f" on a CPU doing {rate / 1e9:.0f} GFLOP/s of float32 matmul" if rate else ""
    split = settings.get("eval_split", "validation")
    scratch = any("from_scratch_bits_per_byte" in r for r in runs)
    context = (" (every byte predicted from the bytes before it in its window, as xz does; \"from scratch\": "
               "consecutive windows, whose first bytes are predicted from nothing)") if scratch else ""
    bindings = f" with {quoted_bindings(settings)}" if quoted_bindings(settings) else ""
    return ["", f"Held-out ({split} split) bits/byte of each family's `cpu_small.gin` preset{bindings} after "
            f"{settings['budget_s'] / 60:g} minutes of training{machine} (`{data['command']}`){context}; xz -9 on "
            f"the same {data['held_out_bytes']:,} bytes: {xz:.3f}:", "",
            *table(["config", "jit", "parameters", "steps", "held-out bits/byte", "this/xz -9"]
                   + ["from scratch"] * scratch,
                   [[r["config"], jit_name(r["jit"]), f"{r['parameters']:,}" if "parameters" in r else "n/a",
                     f"{r['steps']:,}", f"{r['bits_per_byte']:.3f}", times(r["bits_per_byte"] / xz)]
                    + from_scratch_cells(r, scratch) for r in runs],
                   text_columns=2)]


def readme_summary(results, plots, report_path, readme_dir):
    """The README's part between the markers: headline table, plots and a link to the whole report."""
    link = os.path.relpath(report_path, readme_dir)
    lines = [f"Measured results, regenerated from the raw JSON by `python -m benchmarks.report`; every table is in "
             f"[{link}]({link}).", "", *headline(results),
             *(line for name in QUALITY_INPUTS for line in quality_headline(results, name)), ""]
    lines += [line for name, path in plots.items() for line in (image(path, PLOT_CAPTIONS[name], readme_dir), "")]
    return "\n".join(lines).rstrip("\n")


def update_readme(readme, summary):
    """Replaces what lies between the README's markers; leaves the README alone (and says so) without them."""
    text = ""
    if os.path.exists(readme):
        with open(readme) as f:
            text = f.read()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        print(f"{readme} has no {README_START} ... {README_END} lines: left unchanged.", file=sys.stderr)
        return False
    harness.write_atomically(readme, text[:start + len(README_START)] + "\n" + summary + "\n" + text[end:])
    return True
