"""The report's sections, one per benchmark input, read from its JSON: tables, their notes and plots, and the
facts of every comparison where the zoo is behind a peer."""

import os

from benchmarks import attention as kernel_benchmark
from benchmarks import harness
from benchmarks.report_format import (PEER, attention_runs, config_names, disturbed_note, image,
                                      jit_name, jit_settings, kernel_names, kilo, lengths_of, machine_lines, measured,
                                      measured_cell, not_measured, number, quoted_bindings, table, time_text, times)
from benchmarks.report_plots import PLOT_CAPTIONS

ZOO_CONFIGS = ("routing", "sparse", "combiner")
PEERS = (("the PyTorch peer", PEER, "PyTorch"), ("dense attention", "dense", "dense"))  # title, config, name
ATTENTION_MAPS = {  # file in attention_maps/: caption
    "overview.png": "Effective attention of every variant",
    "routing_clusters.png": "Routing clusters of a tiny trained model on held-out text",
    "routing_attention.png": "The routing heads' attention on that text, also sorted by cluster",
}
FAMILY_HEADER = ["tokens/s", "MiB", "FLOP fraction", "speed vs dense", "memory dense/this", "speed vs PyTorch",
                 "memory PyTorch/this"]


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


def family_record(records, config, length, jit):
    """The record of one (config, length, jit); the PyTorch peer has no jit setting."""
    jit = None if config == PEER else jit
    return next((r for r in records if (r["config"], r["length"], r["jit"]) == (config, length, jit)), None)


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


def small_models_section(results):
    lines = ["## Small batched models against the PyTorch package", ""] + machine_lines(results, ("small_models",))
    data = results["small_models"]
    if not data:
        return lines + [not_measured("small_models"), ""]
    lines += ["The size people train on 2 CPU cores (see benchmarks/small_models.py): 4 layers, d=256, the loss "
              "and its gradients with respect to every weight, at each length x batch. vs PyTorch: this one's "
              "tokens/s over the PyTorch routing-transformer package's at the same shape.", ""]
    rows = []
    for r in data["records"]:
        peer = small_model_peer(data["records"], r)
        speed = harness.ratio(peer, r, "time_ms") if measured(r) and measured(peer) and r is not peer else None
        rows.append([f"{r['length']:,} x {r['batch']}", r["config"], jit_name(r["jit"]),
                     measured_cell(r, lambda r: f"{r['tokens_per_second']:,.0f}"),
                     measured_cell(r, lambda r: number(r["memory_mib"])), times(speed) if speed else "-"])
    return lines + table(["length x batch", "config", "jit", "tokens/s", "MiB", "vs PyTorch"], rows, 3) + [""]


def small_model_peer(records, record):
    """The PyTorch record at `record`'s shape, or None."""
    return next((r for r in records if r["config"] == PEER and (r["length"], r["batch"]) ==
                 (record["length"], record["batch"])), None)


def small_models_comparisons(records):
    """(label, zoo record, PyTorch record, "PyTorch") for every zoo record of small_models.json."""
    return [(f"{r['config']}, {r['length']:,} x {r['batch']}, jit {jit_name(r['jit'])}", r,
             small_model_peer(records, r), "PyTorch") for r in records if r["config"] != PEER]


def quality_section(results, plots, report_dir, name):
    """The table of one benchmarks.quality run (`name`: one of QUALITY_INPUTS)."""
    data = results[name]
    budget = f"{data['settings']['budget_s'] / 60:g} minutes of training" if data else "a fixed training budget"
    lines = [f"## Held-out quality after {budget}", ""] + machine_lines(results, (name,))
    if not data:
        return lines + [not_measured(name), ""]
    if quoted_bindings(data["settings"]):
        lines += [f"Bindings on top of the presets: {quoted_bindings(data['settings'])}.", ""]
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
    if name in plots:
        lines += [image(plots[name], PLOT_CAPTIONS[name], report_dir), ""]
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
    small = results["small_models"]
    lines += ["### Small batched models against the PyTorch peer (small_models.json)", ""]
    lines += behind(small_models_comparisons(small["records"])) if small else [not_measured("small_models")]
    lines += ["", "### Kernels alone against dense attention (attention.json, attention_jit.json)", ""]
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


def from_scratch_cells(record, shown):
    """The "from scratch" cell of a quality row (bits/byte on consecutive windows), if the table has one."""
    if not shown:
        return []
    value = record.get("from_scratch_bits_per_byte")
    return [f"{value:.3f}" if value is not None else "n/a"]
