"""One Markdown report of every benchmark, regenerated from the raw results alone.

    python -m benchmarks.report                      # or `make bench`, which runs the harnesses first
    python -m benchmarks.report --results_dir=DIR --readme=''

Reads what the harnesses wrote in benchmarks/results/; each input is optional, and a missing one leaves its
section a "Not measured yet" line with the command that measures it:
  - attention.json, attention_jit.json (`python -m benchmarks.attention [--jit]`): each kernel's forward +
    backward time and memory against dense attention, their growth exponents with length, jit off against on;
  - families.json (`python -m benchmarks.families`): a whole training step of each family against Keras
    MultiHeadAttention and the PyTorch peer: tokens/s, peak memory, fraction of the machine's matmul FLOP rate;
  - quality.json (`python -m benchmarks.quality`): held-out bits/byte after a fixed training budget, next to xz -9;
  - decoding.json (`python -m benchmarks.decoding`): cached decoding against re-running the full model;
  - attention_maps/*.png (`python -m benchmarks.attention_maps`): embedded as they are.
It ends with the facts of every measured comparison where the zoo is behind a peer: slower or bigger than the
PyTorch package or than dense attention, or slower with jit_compile on than off.

Writes benchmarks/results/REPORT.md, its plots in benchmarks/results/plots/, and a summary (headline table,
plots, link to the report) between README.md's `<!-- benchmark-report:start -->` and
`<!-- benchmark-report:end -->` lines. No number is typed by hand: rerunning this after a benchmark updates
every table, plot and summary line that depends on it.
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")

from matplotlib import pyplot as plt, ticker  # noqa: E402

from benchmarks import attention as kernel_benchmark  # noqa: E402
from benchmarks import harness  # noqa: E402
from benchmarks import families  # noqa: E402

COMMANDS = {
    "attention": "python -m benchmarks.attention",
    "attention_jit": "python -m benchmarks.attention --jit",
    "families": "python -m benchmarks.families",
    "quality": "python -m benchmarks.quality",
    "decoding": "python -m benchmarks.decoding",
}
ZOO_CONFIGS = ("routing", "sparse", "combiner")
PEER = "pytorch"
PEERS = (("the PyTorch peer", PEER, "PyTorch"), ("dense attention", "dense", "dense"))  # title, config, name
ATTENTION_MAPS = {  # file in attention_maps/: caption
    "overview.png": "Effective attention of every variant",
    "routing_clusters.png": "Routing clusters of a tiny trained model on held-out text",
    "routing_attention.png": "The routing heads' attention on that text, also sorted by cluster",
}
PLOT_CAPTIONS = {
    "kernels_time": "Each attention kernel's forward + backward time against length",
    "kernels_memory": "Each attention kernel's forward + backward memory against length",
    "families_tokens_per_s": "Training-step tokens/s of each family against length",
    "families_memory": "Training-step peak memory of each family against length",
    "quality": "Training bits/byte against wall time, with xz -9",
    "decoding": "Cached decoding against the full pass, per new token",
}
README_START, README_END = "<!-- benchmark-report:start -->", "<!-- benchmark-report:end -->"
MARKERS = "osD^vPX*h<>p"
DPI = 100
CURVE_SMOOTHING = 8  # logged training steps averaged in the quality plot


# ----------------------------------------------------------------------------------------------------------
# Inputs and formatting.


def load_results(results_dir):
    """{input name: its JSON as a dict with "records" (decoding.json's bare list wrapped), or None if absent}."""
    results = {}
    for name in COMMANDS:
        path = os.path.join(results_dir, name + ".json")
        if not os.path.exists(path):
            results[name] = None
            continue
        with open(path) as f:
            data = json.load(f)
        results[name] = data if isinstance(data, dict) else {"records": data}
    return results


def not_measured(name):
    return f"Not measured yet: run `{COMMANDS[name]}`."


def number(value):
    """About three significant digits, thousands separated: 0.42, 41.7, 1,871."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def times(value):
    """A ratio as "4.43x"; "n/a" when it was not measured."""
    return "n/a" if value is None else number(value) + "x"


def kilo(length):
    """1024 -> "1k": the length labels of tables' fitted ranges and of plot axes."""
    return f"{length // 1024}k" if length % 1024 == 0 else f"{length:,}"


def jit_name(jit):
    return "n/a" if jit is None else ("on" if jit else "off")


def measured(record):
    """True for a record with numbers (decoding.json's records have no status: all of them are)."""
    return record is not None and record.get("status", "ok") == "ok"


def time_text(record):
    """The record's time in ms, with attention.py's "*" when other processes disturbed it."""
    marked = harness.disturbed(record)
    return number(record["time_ms"]) + ("*" if marked else "")


def measured_cell(record, text):
    """text(record) for a measured record, else its status (why it has no numbers)."""
    return text(record) if measured(record) else record["status"]


def table(header, rows, text_columns=1):
    """Markdown table lines; the first `text_columns` columns left-aligned, the numbers right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    return ["| " + " | ".join(map(str, row)) + " |" for row in [header, align, *rows]]


def disturbed_note(records):
    """The footnote of the "*" marks, or nothing when no time was disturbed."""
    if not any(harness.disturbed(r) for r in records):
        return []
    return [f"\\* Other processes used more than {100 * harness.BUSY_SHARE:.0f}% of the machine's CPU during "
            "these timed calls: their times are inflated.", ""]


def settings_text(settings):
    """A settings dict as "batch 1, heads 8, lengths 1024,2048"."""
    return ", ".join(f"{key} {','.join(map(str, value)) if isinstance(value, list) else value}"
                     for key, value in settings.items())


def source_text(name, data):
    """How an input was made: its command, date and settings as far as the JSON records them."""
    parts = [f"`{data.get('command') or COMMANDS[name]}`"]
    if data.get("date"):
        parts.append(data["date"])
    if data.get("settings"):
        parts.append("settings: " + settings_text(data["settings"]))
    if data.get("wall_s"):
        parts.append(f"wall time {data['wall_s'] / 60:.0f} min")
    return "; ".join(parts)


def machines(results):
    """{input name: the machine line its JSON records} for the inputs that record one."""
    return {name: data["machine"] for name, data in results.items() if data and data.get("machine")}


def machine_lines(results, names):
    """A section's machine line, only when the inputs came from different machines."""
    recorded = machines(results)
    if len(set(recorded.values())) < 2:
        return []
    return [f"Machine ({name}.json): {recorded.get(name, 'not recorded')}." for name in names
            if results[name]] + [""]


def image(path, caption, relative_to):
    return f"![{caption}]({os.path.relpath(path, relative_to)})"


def ordered(names, first=()):
    """Unique names, `first` (those present) in front, the rest in their order of appearance."""
    names = list(dict.fromkeys(names))
    return [n for n in first if n in names] + [n for n in names if n not in first]


# ----------------------------------------------------------------------------------------------------------
# Attention kernels (attention.json, attention_jit.json).


def attention_runs(results):
    """[(jit, records)] of the attention inputs present, jit off first."""
    return [(name == "attention_jit", results[name]["records"]) for name in ("attention", "attention_jit")
            if results[name]]


def kernel_names(results):
    """Every kernel of the attention inputs, dense (the baseline) first."""
    names = [r["kernel"] for _, records in attention_runs(results) for r in records]
    return ordered(names, first=(kernel_benchmark.BASELINE,))


def kernel_records(records, name):
    return sorted((r for r in records if r["kernel"] == name), key=lambda r: r["length"])


def kernels_table(records, names):
    """Per kernel and length: time, memory and dense/kernel ratios (dense of the same run and length)."""
    rows = []
    for name in names:
        for record in kernel_records(records, name):
            if not measured(record):
                rows.append([name, f"{record['length']:,}", record["status"], "", "", ""])
                continue
            dense = kernel_benchmark.find(records, kernel_benchmark.BASELINE, record["length"])
            rows.append([name, f"{record['length']:,}", time_text(record), number(record["memory_mib"]),
                         *(times(harness.ratio(dense, record, key)) for key in ("time_ms", "memory_mib"))])
    return table(["kernel", "length", "time (ms)", "memory (MiB)", "dense/kernel time", "dense/kernel memory"],
                 rows)


def exponent_cells(records, name):
    """[time exponent, memory exponent, lengths fitted] of one kernel in one run."""
    own = kernel_records(records, name)
    exponents = [harness.growth_exponent(own, key) for key in ("time_ms", "memory_mib")]
    fitted = ", ".join(kilo(r["length"]) for r in own if measured(r))
    return ["n/a" if e is None else f"{e:.2f}" for e in exponents] + [fitted or "none"]


def exponents_table(results, names):
    """Growth exponents of time and memory with length (log-log least squares), per kernel and jit setting."""
    runs = attention_runs(results)
    header = ["kernel"]
    for jit, _ in runs:
        header += [f"time exponent, jit {jit_name(jit)}", f"memory exponent, jit {jit_name(jit)}",
                   f"lengths fitted, jit {jit_name(jit)}"]
    rows = [[name] + [cell for _, records in runs for cell in exponent_cells(records, name)] for name in names]
    return table(header, rows)


def jit_table(pairs, what):
    """jit off against on: pairs of (name, length, off record, on record); times and memory, off/on ratios."""
    rows = []
    for name, length, off, on in pairs:
        rows.append([name, f"{length:,}",
                     f"{measured_cell(off, time_text)} / {measured_cell(on, time_text)}",
                     times(harness.ratio(off, on, "time_ms")) if measured(off) and measured(on) else "n/a",
                     " / ".join(measured_cell(r, lambda r: number(r["memory_mib"])) for r in (off, on)),
                     times(harness.ratio(off, on, "memory_mib")) if measured(off) and measured(on) else "n/a"])
    return table([what, "length", "time off / on (ms)", "time off/on", "memory off / on (MiB)",
                  "memory off/on"], rows)


def attention_jit_pairs(results, names):
    """(kernel, length, jit-off record, jit-on record) for every kernel and length run both ways."""
    off, on = results["attention"]["records"], results["attention_jit"]["records"]
    return [(name, r["length"], r, kernel_benchmark.find(on, name, r["length"])) for name in names
            for r in kernel_records(off, name) if kernel_benchmark.find(on, name, r["length"])]


def attention_section(results, plots, report_dir):
    lines = ["## Attention kernels, forward + backward", ""] + machine_lines(results, ("attention", "attention_jit"))
    lines += ["The gradient of sum(out) with respect to q, k and v, each kernel in a fresh process (see "
              "benchmarks/attention.py). dense/kernel: dense attention's time or memory in the same run at the "
              "same length over the kernel's.", ""]
    names = kernel_names(results)
    for name, jit in (("attention", False), ("attention_jit", True)):
        lines += [f"### jit_compile {jit_name(jit)}", ""]
        if not results[name]:
            lines += [not_measured(name), ""]
            continue
        records = results[name]["records"]
        lines += kernels_table(records, names) + [""] + disturbed_note(records)
    if attention_runs(results):
        lines += ["### Growth with length", "",
                  "Least-squares slope of log(value) against log(length) over the measured lengths: 1 is "
                  "linear, 2 quadratic.", ""] + exponents_table(results, names) + [""]
    if results["attention"] and results["attention_jit"]:
        lines += ["### jit_compile off against on", "", "off/on above 1: jit_compile on is faster (or smaller).",
                  ""] + jit_table(attention_jit_pairs(results, names), "kernel") + [""]
    for key in ("kernels_time", "kernels_memory"):
        if key in plots:
            lines += [image(plots[key], PLOT_CAPTIONS[key], report_dir), ""]
    return lines


# ----------------------------------------------------------------------------------------------------------
# Training step of each family (families.json).


def family_record(records, config, length, jit):
    """The record of one (config, length, jit); the PyTorch peer has no jit setting."""
    jit = None if config == PEER else jit
    return next((r for r in records if (r["config"], r["length"], r["jit"]) == (config, length, jit)), None)


def config_names(records):
    return ordered([r["config"] for r in records], first=families.CONFIGS)


def jit_settings(records):
    """The jit settings the TF configurations ran with, on first."""
    return sorted({r["jit"] for r in records if r["jit"] is not None}, reverse=True)


def lengths_of(records, key="length"):
    return sorted({r[key] for r in records})


def flop_fraction(record, peak):
    """Achieved FLOP rate over the matmul ceiling measured in the same run."""
    if peak is None or peak.get("status") != "ok":
        return "n/a"
    return f"{record['flops_per_s'] / peak['flops_per_s']:.3f}"


def family_cells(record, dense, peer, peak):
    """tokens/s, MiB, FLOP fraction, then speed and memory against dense and against the PyTorch peer."""
    if not measured(record):
        return [record["status"] if record else "not run"] + [""] * 6
    return [f"{record['tokens_per_s']:,.0f}", number(record["memory_mib"]), flop_fraction(record, peak),
            *(times(harness.ratio(other, record, key)) if other else "n/a"
              for other in (dense, peer) for key in ("time_ms", "memory_mib"))]


FAMILY_HEADER = ["tokens/s", "MiB", "FLOP fraction", "speed vs dense", "memory dense/this", "speed vs PyTorch",
                 "memory PyTorch/this"]


def families_table(data, jit):
    """Every config at every length, at one jit setting (the peer's one measurement in each table)."""
    records = data["records"]
    rows = []
    for length in lengths_of(records):
        dense, peer = (family_record(records, c, length, jit) for c in ("dense", PEER))
        for config in config_names(records):
            record = family_record(records, config, length, jit)
            if record:
                rows.append([config, f"{length:,}", *family_cells(record, dense, peer, data.get("peak"))])
    return table(["config", "length", *FAMILY_HEADER], rows)


def families_jit_pairs(records):
    """(config, length, jit-off record, jit-on record) of every TF configuration run both ways."""
    pairs = [(config, length, family_record(records, config, length, False),
              family_record(records, config, length, True))
             for config in config_names(records) if config != PEER for length in lengths_of(records)]
    return [pair for pair in pairs if pair[2] and pair[3]]


def peak_text(peak):
    if peak is None or peak.get("status") != "ok":
        return "not measured" if peak is None else peak["status"]
    return f"{peak['flops_per_s'] / 1e9:,.1f} GFLOP/s"


def families_section(results, plots, report_dir):
    lines = ["## Training step of each family", ""] + machine_lines(results, ("families",))
    data = results["families"]
    if not data:
        return lines + [not_measured("families"), ""]
    lines += ["The loss and its gradients with respect to every weight (see benchmarks/families.py): dense is "
              "Keras MultiHeadAttention, pytorch the PyTorch routing-transformer package on the routing "
              "configuration (no jit setting: its one measurement appears in every table). speed vs X: X's time "
              "over this one's; memory X/this: X's peak memory over this one's. FLOP fraction: the step's "
              "analytic matmul FLOP rate over the best float32 matmul rate of the same run "
              f"({peak_text(data.get('peak'))}).", ""]
    for jit in jit_settings(data["records"]):
        lines += [f"### jit_compile {jit_name(jit)}", ""] + families_table(data, jit) + [""]
    pairs = families_jit_pairs(data["records"])
    if pairs:
        lines += ["### jit_compile off against on", "", "off/on above 1: jit_compile on is faster (or smaller).",
                  ""] + jit_table(pairs, "config") + [""]
    for key in ("families_tokens_per_s", "families_memory"):
        if key in plots:
            lines += [image(plots[key], PLOT_CAPTIONS[key], report_dir), ""]
    return lines


# ----------------------------------------------------------------------------------------------------------
# Quality at a fixed budget (quality.json) and decoding (decoding.json).


def quality_section(results, plots, report_dir):
    lines = ["## Held-out quality after a fixed training budget", ""] + machine_lines(results, ("quality",))
    data = results["quality"]
    if not data:
        return lines + [not_measured("quality"), ""]
    xz = data["xz_bits_per_byte"]  # None when no run finished
    if xz:
        split = data["settings"].get("eval_split", "validation")
        lines += [f"xz -9 compresses the same {data['held_out_bytes']:,} held-out bytes ({split} split) to {xz:.3f} "
                  "bits/byte; this/xz below 1 beats it.", ""]
    scratch = any("from_scratch_bits_per_byte" in r for r in data["records"] if measured(r))
    if scratch:
        lines += ["Held-out bytes are predicted with context, as xz compresses them: windows start every "
                  "`eval_stride` bytes and score their last `eval_stride`; \"from scratch\" is the same model on "
                  "consecutive windows, whose first bytes are predicted from nothing.", ""]
    if data.get("matmul_flops_per_s"):
        lines += [f"The machine's float32 matmul rate: {data['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s; the budget "
                  "buys steps in proportion.", ""]
    rows = []
    for r in data["records"]:
        if not measured(r):
            rows.append([r["config"], jit_name(r["jit"]), r["status"], "", "", "", "", "", ""] + [""] * scratch)
            continue
        rows.append([r["config"] + ("*" if harness.disturbed(r) else ""), jit_name(r["jit"]),
                     f"{r['parameters']:,}" if "parameters" in r else "n/a",
                     f"{r['steps']:,}", f"{r['tokens_per_s']:,.0f}",
                     number(r["train_wall_s"] / 60), number(r["train_cpu_s"] / 60), f"{r['bits_per_byte']:.3f}",
                     times(r["bits_per_byte"] / xz if xz else None)] + from_scratch_cells(r, scratch))
    lines += table(["config", "jit", "parameters", "steps", "tokens/s", "wall minutes", "CPU-minutes",
                    "held-out bits/byte", "this/xz -9"] + ["from scratch"] * scratch, rows,
                   text_columns=2) + [""] + disturbed_note(data["records"])
    if "quality" in plots:
        lines += [image(plots["quality"], PLOT_CAPTIONS["quality"], report_dir), ""]
    return lines


def decoding_section(results, plots, report_dir):
    lines = ["## Generation: cached decoding against the full pass", ""] + machine_lines(results, ("decoding",))
    data = results["decoding"]
    if not data:
        return lines + [not_measured("decoding"), ""]
    lines += ["Time per new token: cached incremental decoding against one forward pass over the whole prefix "
              "(see benchmarks/decoding.py).", ""]
    rows = [[r["kernel"], f"{r['prefix']:,}", number(1e3 * r["cached_s"]), number(1e3 * r["full_s"]),
             times(r["full_s"] / r["cached_s"])] for r in data["records"] if measured(r)]
    lines += table(["kernel", "prefix", "cached ms/token", "full pass ms/token", "full/cached"], rows) + [""]
    if "decoding" in plots:
        lines += [image(plots["decoding"], PLOT_CAPTIONS["decoding"], report_dir), ""]
    return lines


def attention_maps_section(results_dir):
    lines = ["## Attention maps", ""]
    found = [(os.path.join(results_dir, "attention_maps", f), caption) for f, caption in ATTENTION_MAPS.items()
             if os.path.exists(os.path.join(results_dir, "attention_maps", f))]
    if not found:
        return lines + ["Not drawn yet: run `python -m benchmarks.attention_maps`.", ""]
    return lines + [line for path, caption in found for line in (image(path, caption, results_dir), "")]


# ----------------------------------------------------------------------------------------------------------
# Where the zoo is behind a peer.


def slower(label, record, other, other_name):
    """A fact line when `record` took longer than `other` (both measured), else None."""
    speed = harness.ratio(other, record, "time_ms") if measured(record) and measured(other) else None
    if speed is None or speed >= 1:
        return None
    return f"- {label}: {times(speed)} {other_name}'s speed ({time_text(record)} vs {time_text(other)} ms)"


def bigger(label, record, other, other_name):
    """A fact line when `record` needed more memory than `other` (both measured), else None."""
    share = harness.ratio(record, other, "memory_mib") if measured(record) and measured(other) else None
    if share is None or share <= 1:
        return None
    return (f"- {label}: {times(share)} {other_name}'s memory ({number(record['memory_mib'])} vs "
            f"{number(other['memory_mib'])} MiB)")


def behind(comparisons):
    """Fact lines of (label, record, other record, other's name) comparisons; "- none" when all are ahead."""
    facts = []
    for comparison in comparisons:
        facts += [fact for fact in (slower(*comparison), bigger(*comparison)) if fact]
    return facts or ["- none"]


def families_comparisons(records, other_config, other_name):
    """(label, zoo record, other record, other's name) for every zoo config, length and jit setting."""
    comparisons = []
    for jit in jit_settings(records):
        for length in lengths_of(records):
            other = family_record(records, other_config, length, jit)
            comparisons += [(f"{config}, {length:,} tokens, jit {jit_name(jit)}", record, other, other_name)
                            for config in ZOO_CONFIGS
                            if (record := family_record(records, config, length, jit))]
    return comparisons


def kernel_comparisons(results):
    """(label, kernel record, dense record of the same run and length, "dense") for every kernel and length."""
    return [(f"{r['kernel']}, {r['length']:,} tokens, jit {jit_name(jit)}", r,
             kernel_benchmark.find(records, kernel_benchmark.BASELINE, r["length"]), "dense")
            for jit, records in attention_runs(results) for r in records if r["kernel"] != kernel_benchmark.BASELINE]


def jit_slower(pairs):
    """Fact lines where jit_compile on was slower than off."""
    facts = [slower(f"{name}, {length:,} tokens, jit on", on, off, "jit off") for name, length, off, on in pairs]
    return [fact for fact in facts if fact] or ["- none"]


def behind_section(results):
    lines = ["## Where the zoo is behind a peer", "",
             "Every measured comparison where a zoo configuration is slower or needs more memory than the peer "
             "it is compared with. X's speed: X's time over this one's; X's memory: this one's peak memory over "
             "X's.", ""]
    records = results["families"]["records"] if results["families"] else None
    for title, other_config, other_name in PEERS:
        lines += [f"### Training step against {title} (families.json)", ""]
        lines += behind(families_comparisons(records, other_config, other_name)) if records else [
            not_measured("families")]
        lines.append("")
    lines += ["### Kernels alone against dense attention (attention.json, attention_jit.json)", ""]
    lines += behind(kernel_comparisons(results)) if attention_runs(results) else [not_measured("attention")]
    lines += ["", "### jit_compile on slower than off", "", "Training step (families.json):", ""]
    lines += jit_slower(families_jit_pairs(records)) if records else [not_measured("families")]
    lines += ["", "Kernels alone (attention.json against attention_jit.json):", ""]
    missing = [name for name in ("attention", "attention_jit") if not results[name]]
    if missing:
        lines += [not_measured(name) for name in missing]
    else:
        lines += jit_slower(attention_jit_pairs(results, kernel_names(results)))
    lines.append("")
    all_records = [r for _, run in attention_runs(results) for r in run]
    return lines + disturbed_note(all_records)


# ----------------------------------------------------------------------------------------------------------
# Plots.


def colours(names):
    """A distinct colour per name: dense black, the PyTorch peer grey, the others from tab10 (tab20 past 10)."""
    others = [n for n in names if n not in (kernel_benchmark.BASELINE, PEER)]
    if len(others) <= 10:
        palette = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(others)}
    else:  # tab20's dark shades first, then its light ones
        palette = {name: plt.get_cmap("tab20")((2 * i + 2 * i // 20) % 20) for i, name in enumerate(others)}
    return {**palette, kernel_benchmark.BASELINE: "black", PEER: "grey"}


def series(records, x, y, **match):
    """(xs, ys) of the measured records whose fields equal `match`, sorted by x; non-positive ys left out."""
    points = sorted((r[x], r[y]) for r in records
                    if measured(r) and all(r.get(k) == v for k, v in match.items()) and r[y] > 0)
    return [p[0] for p in points], [p[1] for p in points]


def length_axis(ax, lengths, label="sequence length (tokens)"):
    """A log2 x axis with a tick at each length, labelled 1k, 2k, ..."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [kilo(length) for length in lengths])
    ax.minorticks_off()
    ax.set_xlabel(label)
    ax.grid(True, which="major", alpha=0.3)


def log_y_axis(ax):
    """A log y axis with plain-number ticks at 1, 2, 5, 10, 20, ... (readable on a short range too)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.10g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def legend_outside(fig, axes):
    """One legend for every panel, right of the axes (labels deduplicated across the panels)."""
    entries = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    fig.legend(entries.values(), entries.keys(), loc="outside right upper", fontsize=8)


def save_figure(fig, path):
    """Writes the figure as a PNG through a .tmp file (like harness.write_atomically)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path + ".tmp", format="png", dpi=DPI)
    plt.close(fig)
    os.replace(path + ".tmp", path)
    return path


def panels(count, width=5.0, height=4.0):
    """A figure of `count` side-by-side panels sharing the y axis, room on the right for the legend."""
    fig, axes = plt.subplots(1, count, figsize=(width * count + 2.2, height), sharey=True, squeeze=False,
                             layout="constrained")
    return fig, list(axes[0])


def plot_kernels(results, key, ylabel, path):
    """`key` against length, log-log, one line per kernel; a panel per jit setting."""
    runs, names = attention_runs(results), kernel_names(results)
    colour = colours(names)
    fig, axes = panels(len(runs))
    for ax, (jit, records) in zip(axes, runs):
        for i, name in enumerate(names):
            xs, ys = series(records, "length", key, kernel=name)
            ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], color=colour[name], markersize=4,
                    linewidth=2.2 if name == kernel_benchmark.BASELINE else 1.3, label=name)
        log_y_axis(ax)
        length_axis(ax, lengths_of([r for _, run in runs for r in run]))
        ax.set_title(f"jit_compile {jit_name(jit)}")
    axes[0].set_ylabel(ylabel)
    legend_outside(fig, axes)
    fig.suptitle(f"Attention kernels, forward + backward: {ylabel}")
    return save_figure(fig, path)


def plot_families(data, key, ylabel, path, log_y):
    """`key` against length, one line per config (the PyTorch peer in every panel); a panel per jit setting."""
    records = data["records"]
    names = config_names(records)
    colour = colours(names)
    jits = jit_settings(records)
    fig, axes = panels(len(jits))
    for ax, jit in zip(axes, jits):
        for i, name in enumerate(names):
            xs, ys = series(records, "length", key, config=name, jit=None if name == PEER else jit)
            ax.plot(xs, ys, marker=MARKERS[i % len(MARKERS)], color=colour[name],
                    linestyle="--" if name == PEER else "-",
                    label=f"{name} (no jit setting)" if name == PEER else name)
        if log_y:
            log_y_axis(ax)
        else:
            ax.set_ylim(bottom=0)
        length_axis(ax, lengths_of(records))
        ax.set_title(f"jit_compile {jit_name(jit)}")
    axes[0].set_ylabel(ylabel)
    legend_outside(fig, axes)
    fig.suptitle(f"Training step of each family: {ylabel}")
    return save_figure(fig, path)


def moving_average(values, window):
    """Each value replaced by the mean of it and up to `window - 1` values before it: batch-1 losses are noisy."""
    return [sum(values[max(0, i + 1 - window):i + 1]) / len(values[max(0, i + 1 - window):i + 1])
            for i in range(len(values))]


def plot_quality(data, path):
    """Training bits/byte against wall minutes per (config, jit), xz -9's line, the final held-out values."""
    records = [r for r in data["records"] if measured(r)]
    colour = colours(config_names(records))
    fig, axes = panels(1, width=7.0, height=4.5)
    ax = axes[0]
    for r in records:
        style = dict(color=colour[r["config"]], linestyle="-" if r["jit"] else "--")
        ax.plot([t / 60 for t, _ in r["curve"]], moving_average([b for _, b in r["curve"]], CURVE_SMOOTHING),
                label=f"{r['config']}, jit {jit_name(r['jit'])}", **style)
        ax.plot([r["train_wall_s"] / 60], [r["bits_per_byte"]], marker="o", markeredgecolor="black", **style)
    if data["xz_bits_per_byte"]:
        ax.axhline(data["xz_bits_per_byte"], color="black", linestyle=":",
                   label=f"xz -9 ({data['xz_bits_per_byte']:.3f} bits/byte)")
    ax.set_xlabel("training wall time (minutes)")
    ax.set_ylabel("bits/byte")
    ax.grid(True, alpha=0.3)
    legend_outside(fig, axes)
    ax.set_title(f"Training bits/byte (mean of the last {CURVE_SMOOTHING} logged steps) at a fixed budget; "
                 "circles: held-out bits/byte at the end", fontsize=9)
    return save_figure(fig, path)


def plot_decoding(data, path):
    """Milliseconds per new token against prefix length: cached (solid) and full pass (dashed), per kernel."""
    records = data["records"]
    names = ordered([r["kernel"] for r in records])
    colour = colours(names)
    fig, axes = panels(1, width=6.0)
    ax = axes[0]
    for name in names:
        for key, style, marker, kind in (("cached_s", "-", "o", "cached"), ("full_s", "--", "s", "full pass")):
            xs, ys = series(records, "prefix", key, kernel=name)
            ax.plot(xs, [1e3 * y for y in ys], linestyle=style, marker=marker, color=colour[name],
                    label=f"{name}, {kind}")
    log_y_axis(ax)
    length_axis(ax, lengths_of(records, "prefix"), "prefix length (tokens)")
    ax.set_ylabel("ms per new token")
    legend_outside(fig, axes)
    ax.set_title("Generation: cached decoding against the full pass", fontsize=10)
    return save_figure(fig, path)


def draw_plots(results, plots_dir):
    """Draws the plots of the inputs present; {plot name: path}."""
    plots = {}
    if attention_runs(results):
        for name, key, ylabel in (("kernels_time", "time_ms", "time (ms)"),
                                  ("kernels_memory", "memory_mib", "memory (MiB)")):
            plots[name] = plot_kernels(results, key, ylabel, os.path.join(plots_dir, name + ".png"))
    if results["families"] and jit_settings(results["families"]["records"]):
        plots["families_tokens_per_s"] = plot_families(results["families"], "tokens_per_s", "tokens/s",
                                                       os.path.join(plots_dir, "families_tokens_per_s.png"), False)
        plots["families_memory"] = plot_families(results["families"], "memory_mib", "peak memory (MiB)",
                                                 os.path.join(plots_dir, "families_memory.png"), True)
    if results["quality"] and any(measured(r) for r in results["quality"]["records"]):
        plots["quality"] = plot_quality(results["quality"], os.path.join(plots_dir, "quality.png"))
    if results["decoding"]:
        plots["decoding"] = plot_decoding(results["decoding"], os.path.join(plots_dir, "decoding.png"))
    return plots


# ----------------------------------------------------------------------------------------------------------
# The report and the README summary.


def header(results):
    lines = ["# Benchmark report", "",
             "Generated by `python -m benchmarks.report` (`make bench` runs it after the benchmarks) from the raw "
             "results in benchmarks/results/*.json: every number, table and plot below is read from those files, "
             "none is typed by hand. Rerun it to regenerate this file, its plots and the README summary.", ""]
    recorded = machines(results)
    silent = [name + ".json" for name, data in results.items() if data and name not in recorded]
    if len(set(recorded.values())) == 1:
        lines += [f"- Machine: {next(iter(recorded.values()))} (recorded by "
                  f"{', '.join(name + '.json' for name in recorded)}"
                  + (f"; {', '.join(silent)} record none)." if silent else ").")]
    elif recorded:
        lines += ["- Machines: the inputs come from different machines; each section names its own."]
    for name, data in results.items():
        lines.append(f"- {name}.json: " + (source_text(name, data) if data else not_measured(name)))
    return lines + [""]


def report(results, plots, results_dir):
    """The whole Markdown report."""
    lines = header(results)
    lines += attention_section(results, plots, results_dir)
    lines += families_section(results, plots, results_dir)
    lines += quality_section(results, plots, results_dir)
    lines += decoding_section(results, plots, results_dir)
    lines += attention_maps_section(results_dir)
    lines += behind_section(results)
    return "\n".join(lines).rstrip("\n") + "\n"


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


def from_scratch_cells(record, shown):
    """The "from scratch" cell of a quality row (bits/byte on consecutive windows), if the table has one."""
    if not shown:
        return []
    value = record.get("from_scratch_bits_per_byte")
    return [f"{value:.3f}" if value is not None else "n/a"]


def quality_headline(results):
    """The README's quality lines: held-out bits/byte of each preset after the same budget, next to xz -9."""
    data = results["quality"]
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
    return ["", f"Held-out ({split} split) bits/byte of each family's `cpu_small.gin` preset after "
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
             f"[{link}]({link}).", "", *headline(results), *quality_headline(results), ""]
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results_dir", default=harness.RESULTS_DIR,
                        help="where the benchmarks' JSON lie; REPORT.md and plots/ are written there")
    parser.add_argument("--readme", default=os.path.join(harness.REPO_ROOT, "README.md"),
                        help="README whose marked part gets the summary; '' to skip")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    results_dir = os.path.abspath(args.results_dir)
    results = load_results(results_dir)
    plots = draw_plots(results, os.path.join(results_dir, "plots"))
    report_path = os.path.join(results_dir, "REPORT.md")
    harness.write_atomically(report_path, report(results, plots, results_dir))
    print(f"Wrote {report_path} and {len(plots)} plots in {os.path.join(results_dir, 'plots')}", file=sys.stderr)
    if args.readme:
        readme = os.path.abspath(args.readme)
        if update_readme(readme, readme_summary(results, plots, report_path, os.path.dirname(readme))):
            print(f"Updated the benchmark summary in {readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
