"""Reading the benchmarks' raw results and formatting their numbers: what every part of the report
(`benchmarks.report`) shares."""

import json
import os

from benchmarks import attention as kernel_benchmark
from benchmarks import harness
from benchmarks import families

COMMANDS = {
    "attention": "python -m benchmarks.attention",
    "attention_jit": "python -m benchmarks.attention --jit",
    "families": "python -m benchmarks.families",
    "small_models": "python -m benchmarks.small_models",
    "quality": "python -m benchmarks.quality",
    # The routing preset with its cosine stretched to the steps 30 minutes hold (18,254 on the machine measured).
    "quality_30min": "python -m benchmarks.quality --configs=routing --budget_s=1800 "
                     "--gin_param='TRAIN_STEPS = 18254' --output=benchmarks/results/quality_30min",
    "decoding": "python -m benchmarks.decoding",
}
PEER = "pytorch"
QUALITY_INPUTS = ("quality", "quality_30min")  # the presets' 10-minute budget, and the 30-minute stretch run


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


def quoted_bindings(settings):
    """A quality run's gin bindings on top of the presets as "`A = 1`; `B = 2`" ("" when none)."""
    return "; ".join(f"`{p}`" for p in settings.get("gin_params") or [])


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


def attention_runs(results):
    """[(jit, records)] of the attention inputs present, jit off first."""
    return [(name == "attention_jit", results[name]["records"]) for name in ("attention", "attention_jit")
            if results[name]]


def kernel_names(results):
    """Every kernel of the attention inputs, dense (the baseline) first."""
    names = [r["kernel"] for _, records in attention_runs(results) for r in records]
    return ordered(names, first=(kernel_benchmark.BASELINE,))


def config_names(records):
    return ordered([r["config"] for r in records], first=families.CONFIGS)


def jit_settings(records):
    """The jit settings the TF configurations ran with, on first."""
    return sorted({r["jit"] for r in records if r["jit"] is not None}, reverse=True)


def lengths_of(records, key="length"):
    return sorted({r[key] for r in records})
