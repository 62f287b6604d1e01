"""The report of benchmarks.reproduce, read from its JSON alone: one row per comparison with the paper's numbers,
the zoo's (mean and range over seeds, at equal steps and at equal training time) and a verdict word, the
learning-rate sweep, learning curves per claim, and the README section "The papers' claims, in miniature".

Verdicts (lower bits/byte is better; spread = the larger range over seeds of the two arms compared; an arm with
a single seed has no spread, so its comparisons are `inconclusive`):
- beats: gap = baseline mean - arm mean; `holds` if gap > spread, `does not hold` if gap < -spread, else
  `inconclusive`; against several baselines every one must hold.
- matches: margin = 2% of the baseline mean - (arm mean - baseline mean); the same rule on the margin.
- faster: the same rule as beats on seconds per step, over the rounds of the claim's paired timing.
The equal-time view reads each run's curve against steps x its arm's seconds per step from the paired timing
(`reproduce.time_arms`: every arm timed in one process, in turn), never against the run's own clock, which moved
with this machine's speed between the days of a claim's runs; a paired timing that other processes disturbed
makes the equal-time verdict `inconclusive`.
"""

import dataclasses
import json
import math
import os

from benchmarks import harness
from benchmarks import claims as claim_specs

README_START, README_END = "<!-- reproduce:start -->", "<!-- reproduce:end -->"
VERDICTS = ("holds", "does not hold", "inconclusive")


def claim_settings(settings, claim):
    """`settings` with the steps of `claim`'s size where --steps left them open."""
    steps = settings.steps or claim_specs.CLAIMS[claim].sizes[settings.scale].steps
    return dataclasses.replace(settings, steps=steps)


def best_rate(sweep):
    """The learning rate of the sweep record (seed 0, one per rate) with the best validation bits, or None."""
    scored = {r["learning_rate"]: r["validation_bits_per_byte"] for r in sweep
              if r.get("status") == "ok" and math.isfinite(r["validation_bits_per_byte"])}
    return min(scored, key=scored.get) if scored else None


def claim_records(data, settings, claim):
    """{run key: record} of `claim` under `settings` at its swept rates, in the JSON's order (run keys leave the
    rates out, so the runs of a wider sweep share the key and are left out here)."""
    key = claim_specs.runs_key(claim_settings(settings, claim).key(), claim)
    return {run_key: record for run_key, record in data["runs"].items()
            if run_key.endswith(key) and record.get("claim") == claim
            and record["learning_rate"] in settings.learning_rates}


def sweep_runs(data, settings, claim):
    """{arm: {learning_rate: record}} of the seed-0 runs (the sweep) of `claim` under `settings`."""
    sweep = {}
    for record in claim_records(data, settings, claim).values():
        if record.get("seed") == 0:
            sweep.setdefault(record["arm"], {})[record["learning_rate"]] = record
    return sweep


def main_runs(data, settings, claim):
    """{arm: [record of each seed, by seed]}: the finished runs of `claim` under `settings` at each arm's rate
    chosen by the sweep."""
    rates = {arm: best_rate(list(by_rate.values())) for arm, by_rate in sweep_runs(data, settings, claim).items()
             if all(by_rate.get(lr, {}).get("status") == "ok" for lr in settings.learning_rates)}
    runs = {}
    for _, record in sorted(claim_records(data, settings, claim).items()):
        if record.get("status") == "ok" and record["learning_rate"] == rates.get(record["arm"]):
            runs.setdefault(record["arm"], []).append(record)
    return {arm: sorted(records, key=lambda r: r["seed"]) for arm, records in runs.items()}


def timing_key(settings, claim):
    """What a claim's paired timing depends on: its arms (the claim's revision), their size (scale) and XLA; not
    the steps, rates or corpus of its runs."""
    return f"{claim}/" + claim_specs.runs_key(f"{settings.scale}/jit={'on' if settings.jit else 'off'}", claim)


def step_costs(data, settings, claim):
    """The finished paired timing of `claim` (`reproduce.time_arms`) under `settings`, or None."""
    record = data.get("step_costs", {}).get(timing_key(settings, claim))
    return record if record and record.get("status") == "ok" else None


def seconds_per_step(timing, arm):
    """The mean over the paired timing's rounds of one arm's seconds per step."""
    return stats(timing["arms"][arm])[0]


def reported_settings(data, settings, claim):
    """The settings `claim` is reported under: its longest reproduction in the JSON that differs from `settings`
    only in the step count and the swept learning rates (more rates first at equal length) and has at least two
    seeds of every arm; else `settings`. So a claim run longer in parts (`--claims=routing --steps=384`) is
    reported at that length beside claims run at the default."""
    variable = ("steps", "learning_rates")

    def fixed_fields(fields):  # JSON-normalised (a tuple and the list it is saved as compare equal)
        return {k: v for k, v in json.loads(json.dumps(fields)).items() if k not in variable}

    wanted = fixed_fields(dataclasses.asdict(settings))
    found = {(record["settings"]["steps"], tuple(record["settings"]["learning_rates"]))
             for record in data["runs"].values()
             if record.get("claim") == claim and "settings" in record and fixed_fields(record["settings"]) == wanted}
    arms = claim_specs.CLAIMS[claim].arms
    for steps, rates in sorted(found, key=lambda found: (found[0], len(found[1])), reverse=True):
        candidate = dataclasses.replace(settings, steps=steps, learning_rates=rates)
        runs = main_runs(data, candidate, claim)
        if all(len(runs.get(arm, ())) >= 2 for arm in arms):
            return candidate
    return claim_settings(settings, claim)


def interpolate(curve, seconds):
    """The held-out bits of an eval curve [(step, train_seconds, bits)] at `seconds`, linear between points;
    None outside the curve."""
    points = [(s, b) for _, s, b in curve if s is not None]
    for (s0, b0), (s1, b1) in zip(points, points[1:]):
        if s0 <= seconds <= s1:
            return b0 if s1 == s0 else b0 + (b1 - b0) * (seconds - s0) / (s1 - s0)
    return points[-1][1] if points and math.isclose(points[-1][0], seconds) else None


def timed_curve(record, per_step):
    """The run's eval curve [(step, training seconds, bits)] at `per_step` seconds per step (its arm's paired
    timing; compilation and evaluation excluded)."""
    return [(step, step * per_step, bits) for step, _, bits in record["eval_curve"]]


def equal_time(runs, arms, timing):
    """The training seconds every run of `arms` reached at its arm's paired-timing cost, i.e. the first arm to
    finish's total, and each arm's held-out bits there: (seconds, {arm: [bits per seed]})."""
    per_step = {arm: seconds_per_step(timing, arm) for arm in arms}
    seconds = min(timed_curve(r, per_step[arm])[-1][1] for arm in arms for r in runs[arm])
    return seconds, {arm: [interpolate(timed_curve(r, per_step[arm]), seconds) for r in runs[arm]] for arm in arms}


def stats(values):
    """(mean, low, high) of the finite values, or None."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    return (sum(values) / len(values), min(values), max(values)) if values else None


def judge(kind, arm_values, baseline_values):
    """The verdict word of one arm against one baseline (see the module docstring)."""
    arm, base = stats(arm_values), stats(baseline_values)
    if arm is None or base is None or min(len(arm_values), len(baseline_values)) < 2:
        return "inconclusive"  # one seed has no spread to judge a gap by
    spread = max(arm[2] - arm[1], base[2] - base[1])
    if kind == "matches":
        gap = claim_specs.MATCH_TOLERANCE * base[0] - (arm[0] - base[0])
    else:
        gap = base[0] - arm[0]
    if gap > spread:
        return "holds"
    if gap < -spread:
        return "does not hold"
    return "inconclusive"


def combine(verdicts):
    if all(v == "holds" for v in verdicts):
        return "holds"
    if any(v == "does not hold" for v in verdicts):
        return "does not hold"
    return "inconclusive"


def check_equal_footing(runs, arms, claim):
    """The arms of a comparison saw the same tokens per seed and have parameters within 2%; ValueError if not."""
    tokens = {(arm, r["seed"]): r["tokens"] for arm in arms for r in runs[arm]}
    if len(set(tokens.values())) > 1:
        raise ValueError(f"claim {claim!r}: the arms trained on different token counts: {tokens}")
    parameters = {arm: runs[arm][0]["parameters"] for arm in arms}
    if max(parameters.values()) > min(parameters.values()) * (1 + claim_specs.PARAMETER_TOLERANCE):
        raise ValueError(f"claim {claim!r}: parameter counts differ by more than 2%: {parameters}")


def fmt(values, digits=3):
    s = stats(values)
    if s is None:
        return "n/a"
    return f"{s[0]:.{digits}f} [{s[1]:.{digits}f}, {s[2]:.{digits}f}]" if len(values) > 1 else f"{s[0]:.{digits}f}"


def timing_problem(timing):
    """Why the paired timing cannot judge time (not made yet, or disturbed by other processes), or None."""
    if timing is None:
        return "no paired timing yet (`--retime`)"
    if harness.disturbed(timing):
        return (f"paired timing disturbed: other processes used {timing['others_cpu_share']:.0%} of the CPU "
                "(`--retime`)")
    return None


def comparison_row(claim, comparison, runs, timing):
    """The report row of one comparison: dict of its cells, or None when an arm has no finished run. `timing`:
    the claim's paired timing (`step_costs`), or None; without an undisturbed one, time verdicts are
    `inconclusive`."""
    arms = (comparison.arm,) + comparison.baselines
    if any(not runs.get(arm) for arm in arms):
        return None
    check_equal_footing(runs, arms, claim.name)
    labels = {arm: arm.replace("_", " ") for arm in arms}
    problem = timing_problem(timing)
    if comparison.kind == "faster":
        if timing is None:
            return dict(steps=problem, steps_verdict="inconclusive", time="(a speed claim)",
                        time_verdict="inconclusive")
        values = {arm: timing["arms"][arm] for arm in arms}
        cell = " · ".join(f"{labels[a]} {fmt(values[a])} s/step" for a in arms) + (
            f" ({problem})" if problem else f" (paired timing, {timing['rounds']} rounds)")
        verdict = "inconclusive" if problem else combine(
            [judge("beats", values[comparison.arm], values[b]) for b in comparison.baselines])
        return dict(steps=cell, steps_verdict=verdict, time="(a speed claim)", time_verdict=verdict)
    kind = comparison.kind
    at_steps = {arm: [r["bits_per_byte"] for r in runs[arm]] for arm in arms}
    if timing is None:
        time, time_verdict = problem, "inconclusive"
    else:
        seconds, at_time = equal_time(runs, arms, timing)
        time = f"at {seconds:.0f} s: " + " · ".join(f"{labels[a]} {fmt(at_time[a])}" for a in arms)
        time_verdict = combine([judge(kind, at_time[comparison.arm], at_time[b]) for b in comparison.baselines])
        if problem:
            time, time_verdict = f"{time} ({problem})", "inconclusive"
    return dict(steps=" · ".join(f"{labels[a]} {fmt(at_steps[a])}" for a in arms),
                steps_verdict=combine([judge(kind, at_steps[comparison.arm], at_steps[b])
                                       for b in comparison.baselines]),
                time=time, time_verdict=time_verdict)


def reported_by_claim(data, settings):
    """{claim name: its `reported_settings`}: what every part of the report shows of each claim."""
    return {name: reported_settings(data, settings, name) for name in claim_specs.CLAIMS}


def claims_table(data, reported):
    """The headline table, one row per comparison of every claim, each claim at its settings in `reported`
    (`reported_by_claim`; rows without runs say so)."""
    lines = ["| claim | paper | zoo, equal steps: held-out bits/byte, mean [range] | verdict | "
             "zoo, equal training time (compilation excluded) | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    for claim in claim_specs.CLAIMS.values():
        runs = main_runs(data, reported[claim.name], claim.name)
        timing = step_costs(data, reported[claim.name], claim.name)
        for comparison in claim.comparisons:
            row = comparison_row(claim, comparison, runs, timing)
            statement = f"{claim.name}: {comparison.statement}"
            if row is None:
                lines.append(f"| {statement} | {comparison.paper} | not run yet | | | |")
                continue
            lines.append(f"| {statement} | {comparison.paper} | {row['steps']} | {row['steps_verdict']} | "
                         f"{row['time']} | {row['time_verdict']} |")
    return lines


def claim_section(data, settings, claim, plot_path):
    """Arms, sweep and curves of one claim."""
    runs = main_runs(data, settings, claim.name)
    size = claim.sizes[settings.scale]
    lines = [f"## {claim.title}", "",
             f"Every arm: {size.layers} layers, width {size.width}, {size.heads} heads, context "
             f"{size.sequence_length:,}, batch {size.batch_size}, block/window/segment {size.block}; "
             f"source of the paper's numbers: {claim.source}.", ""]
    if claim.revision > 1:
        lines += [f"Revision {claim.revision} of these arms: {claim.revision_note}. Runs of earlier revisions stay in "
                  "the JSON and are not reported.", ""]
    held = data.get("held_out", {}).get(f"{claim.name}/{claim_settings(settings, claim.name).key()}")
    if held:
        lines += [f"Held-out: {held['bytes']:,} bytes of the test split; xz -9 on the same bytes: "
                  f"{held['xz_bits_per_byte']:.3f} bits/byte.", ""]
    timing = step_costs(data, settings, claim.name)
    lines += ["| arm | parameters | learning rate | seeds | steps | tokens | s/step (paired timing) | held-out "
              "bits/byte per seed | mean at half the steps |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    halfway = means_at_half_steps(runs)
    for arm, label in claim.arms.items():
        records = runs.get(arm)
        if not records:
            lines.append(f"| {label} | not run yet | | | | | | | |")
            continue
        first = records[0]
        per_step = f"{seconds_per_step(timing, arm):.3f}" if timing else "n/a"
        lines.append(f"| {label} | {first['parameters']:,} | {first['learning_rate']:g} | {len(records)} | "
                     f"{first['steps']:,} | {first['tokens']:,} | {per_step} | "
                     + ", ".join(f"{r['bits_per_byte']:.3f}" for r in records) + f" | {halfway[arm]:.3f} |")
    lines += budget_note(runs, held, claim)
    lines += plateau_note(runs, halfway, claim)
    lines += timing_note(timing)
    if claim.findings:
        lines += ["", f"What we found: {claim.findings}."]
    sweep = sweep_runs(data, settings, claim.name)
    if sweep:
        rates = sorted({lr for by_rate in sweep.values() for lr in by_rate})
        lines += ["", f"Learning-rate sweep (seed 0, {settings.steps} steps, validation bits/byte; the best rate "
                      "of each arm, in bold, is the rate of all its seeds):", "",
                  "| arm | " + " | ".join(f"{lr:g}" for lr in rates) + " |", "| --- |" + " ---: |" * len(rates)]
        for arm, by_rate in sweep.items():
            ok = {lr: r["validation_bits_per_byte"] for lr, r in by_rate.items() if r.get("status") == "ok"}
            best = runs[arm][0]["learning_rate"] if runs.get(arm) else None
            cells = [("**{:.3f}**" if lr == best else "{:.3f}").format(ok[lr]) if lr in ok else
                     by_rate.get(lr, {}).get("status", "") for lr in rates]
            lines.append(f"| {claim.arms[arm]} | " + " | ".join(cells) + " |")
        edge = sorted(arm for arm, by_rate in sweep.items() if runs.get(arm) and len(rates) > 1
                      and runs[arm][0]["learning_rate"] in (rates[0], rates[-1]))
        if edge:
            lines += ["", "At the edge of the swept range (a wider sweep might find a better rate): "
                      + ", ".join(claim.arms[arm] for arm in edge) + "."]
    if plot_path:
        lines += ["", f"![{claim.title}: held-out bits/byte during training]({os.path.basename(plot_path)})"]
    return lines + [""]


PLATEAU_GAIN = 0.02  # an arm whose held-out bits/byte fell by less over the second half of its runs is "flat"


def at_half_steps(record):
    """Held-out bits/byte at the in-run evaluation nearest half the run's steps."""
    _, _, value = min(record["eval_curve"], key=lambda point: abs(point[0] - record["steps"] / 2))
    return value


def means_at_half_steps(runs):
    """{arm: the mean over its seeds of `at_half_steps`} of every arm with runs."""
    return {arm: stats([at_half_steps(r) for r in records])[0] for arm, records in runs.items() if records}


def plateau_note(runs, halfway, claim):
    """A sentence naming the arms still on a plateau (held-out bits/byte fell by less than PLATEAU_GAIN over the
    second half of their runs, seed means; `halfway`: each arm's mean `at_half_steps`) while others were not:
    their comparisons measure how soon each arm leaves it, not what it reaches; else nothing."""
    gains = {arm: 1 - stats([r["bits_per_byte"] for r in runs[arm]])[0] / mean for arm, mean in halfway.items()}
    flat = [arm for arm, gain in gains.items() if gain < PLATEAU_GAIN]
    if not flat or len(flat) == len(gains):
        return []
    return ["", "Still on a plateau: " + ", ".join(f"{claim.arms[arm]} ({gains[arm]:.1%} fewer bits over the second "
                                                    "half of its runs)" for arm in flat)
            + f", while the other arms gained {min(g for a, g in gains.items() if a not in flat):.1%} or more. At this "
              "budget, comparisons with these arms measure how soon each arm leaves the plateau, not what it "
              "reaches; more --steps would tell."]


def budget_note(runs, held, claim):
    """When even the best arm is still worse than xz -9 on the held-out bytes: a sentence saying that the runs
    are too short for the claim (the models are far from trained); else nothing."""
    finite = {arm: stats([r["bits_per_byte"] for r in records]) for arm, records in runs.items()}
    means = {arm: values[0] for arm, values in finite.items() if values}
    if not held or not means or min(means.values()) <= held["xz_bits_per_byte"]:
        return []
    best = min(means, key=means.get)
    return ["", f"Every arm is still worse than xz -9 on the same bytes (best: {claim.arms[best]}, "
                f"{means[best]:.3f} against {held['xz_bits_per_byte']:.3f} bits/byte): at this budget the models "
                "are far from trained, so the comparisons are between early stages of training and test little of "
                "what the claim is about; more --steps would."]


def timing_note(timing):
    """How the s/step column and the equal-time view were timed: the paired timing's rounds, date and load."""
    if timing is None:
        return ["", "Not timed yet: the equal-time view needs the claim's paired timing (`--retime`)."]
    load = f"other processes used {timing['others_cpu_share']:.0%} of the CPU"
    return ["", f"s/step: the paired timing of {timing.get('date', 'an unrecorded date')[:10]}, every arm's compiled "
                f"step timed in one process, {timing['rounds']} rounds of {timing['steps_per_round']} steps each, "
                f"the arms in turn ({load}" + (", so its times are disturbed" if harness.disturbed(timing) else "")
                + "); the equal-time view reads each run's curve at these costs."]


def plot_claim(data, settings, claim, path):
    """Held-out bits/byte of every run against step and training seconds, one colour per arm; the path, or None."""
    runs = main_runs(data, settings, claim.name)
    if not runs:
        return None
    timing = step_costs(data, settings, claim.name)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (by_step, by_time) = pyplot.subplots(1, 2, figsize=(11, 4))
    for index, (arm, records) in enumerate(sorted(runs.items())):
        colour = f"C{index}"
        for n, record in enumerate(records):
            label = claim.arms[arm] if n == 0 else None
            points = record["eval_curve"]
            by_step.plot([p[0] for p in points], [p[2] for p in points], color=colour, marker="o", label=label)
            if timing:
                points = timed_curve(record, seconds_per_step(timing, arm))
                by_time.plot([p[1] for p in points], [p[2] for p in points], color=colour, marker="o", label=label)
    by_step.set_xlabel("step")
    by_time.set_xlabel("training seconds at the paired timing's s/step" if timing else "not timed yet")
    for axes in (by_step, by_time):
        axes.set_ylabel("held-out bits/byte")
        axes.grid(alpha=0.3)
    by_step.legend(fontsize=7)
    figure.suptitle(claim.title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)
    return path


def corpus_name(settings):
    return settings.local_text_dir or "the Python standard library (local_text)"


def last_run(data):
    """The date of the newest invocation that added to the JSON."""
    runs = data.get("invocations") or [{"date": data.get("date")}]
    return runs[-1]["date"]


def claim_command(settings, claim):
    """The command that trains (or, from the JSON, reuses) the runs `claim` is reported under."""
    flags = ["--quick"] if settings.scale == "quick" else []
    flags += [f"--claims={claim}", f"--steps={settings.steps}",
              "--learning_rates=" + ",".join(f"{rate:g}" for rate in settings.learning_rates)]
    if settings.local_text_dir:
        flags.append(f"--local_text_dir={settings.local_text_dir}")
    return "`python -m benchmarks.reproduce " + " ".join(flags) + "`"


def render(data, settings, output):
    """(the full report, the README section); writes the curve PNGs next to `output`."""
    reported = reported_by_claim(data, settings)
    header = [f"- Machine: {data.get('machine', 'unknown')}", f"- Corpus: {corpus_name(settings)}",
              "- Runs (each claim at its longest finished reproduction; rerunning a command reuses its runs): "
              + "; ".join(claim_command(s, name) for name, s in reported.items())
              + f"; last run {last_run(data)}; "
              f"{settings.evals} held-out evaluations of {settings.eval_windows} "
              f"windows, jit {'on' if settings.jit else 'off'}, scale {settings.scale!r}.",
              "- Each cell: mean [lowest, highest] over seeds of held-out (test split) bits/byte; verdicts: "
              "`holds`, `does not hold`, or `inconclusive` when the spread over seeds is larger than the gap "
              f"(\"matches\" allows {claim_specs.MATCH_TOLERANCE:.0%} more bits than the baseline). These are "
              "miniatures of the papers' experiments (small models, minutes of CPU training, local text), not "
              "the experiments themselves.", ""]
    table = claims_table(data, reported)
    sections = []
    for claim in claim_specs.CLAIMS.values():
        plot = plot_claim(data, reported[claim.name], claim, f"{output}_{claim.name}.png")
        sections += claim_section(data, reported[claim.name], claim, plot)
    report = ["# The papers' claims, in miniature", ""] + header + table + [""] + sections
    readme = ["Generated by `python -m benchmarks.reproduce` from `benchmarks/results/reproduce.json`; arms, "
              "learning-rate sweeps and curves in [benchmarks/results/reproduce.md]"
              "(benchmarks/results/reproduce.md).", ""] + header + table
    return "\n".join(report) + "\n", "\n".join(readme) + "\n"


def replace_section(text, section):
    """`text` with what lies between the README markers replaced by `section` (appended if absent)."""
    block = f"{README_START}\n{section}{README_END}"
    if README_START in text and README_END in text:
        before, rest = text.split(README_START, 1)
        return before + block + rest.split(README_END, 1)[1]
    return text.rstrip("\n") + "\n\n## The papers' claims, in miniature\n\n" + block + "\n"


# The README experiments-table rows (by gin file) whose "zoo measured" cell shows a miniature's arm.
EXPERIMENT_ROWS = {
    "routing_transformer/enwik8_8k.gin": ("routing", "routing_balanced"),
    "routing_transformer/enwik8_local_8k.gin": ("routing", "local"),
    "sparse_transformer/enwik8.gin": ("sparse", "fixed"),
    "combiner/cifar10_6l_fixed.gin": ("combiner", "fixed"),
    "combiner/cifar10_6l_logsparse.gin": ("combiner", "logsparse"),
    "combiner/cifar10_6l_axial.gin": ("combiner", "axial"),
    "combiner/cifar10_6l_mixture.gin": ("combiner", "mixture"),
}


def miniature_cell(data, settings, claim_name, arm):
    """The experiments table's cell for an arm of a miniature at `settings` (the claim's reported settings),
    labelled as such; None without runs."""
    records = main_runs(data, settings, claim_name).get(arm)
    if not records:
        return None
    size = claim_specs.CLAIMS[claim_name].sizes[settings.scale]
    mean = stats([r["bits_per_byte"] for r in records])[0]
    return (f"miniature only: {mean:.3f} held-out bits/byte on {corpus_name(settings)} ({size.layers} layers, "
            f"d={size.width}, context {size.sequence_length:,}, {records[0]['tokens'] / 1e6:.2f}M tokens, "
            f"{len(records)} seeds; see below), not this experiment")


def fill_experiments_table(text, data, reported):
    """`text` (the README) with the "zoo measured" cell of every `EXPERIMENT_ROWS` row set to its miniature at
    the claim's settings in `reported` (`reported_by_claim`)."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        for gin_file, (claim_name, arm) in EXPERIMENT_ROWS.items():
            if line.startswith("| ") and f"| `{gin_file}` |" in line:
                cell = miniature_cell(data, reported[claim_name], claim_name, arm)
                if cell:
                    lines[index] = line.rstrip().rstrip("|").rstrip().rsplit("|", 1)[0] + f"| {cell} |"
    return "\n".join(lines)


def write(data, settings, output, readme=None):
    """Writes `output`.md (and PNGs) from the JSON's data; rewrites the README's section and its experiments
    table's miniature cells if `readme` is given."""
    report, section = render(data, settings, output)
    harness.write_atomically(output + ".md", report)
    if readme:
        with open(readme) as f:
            text = f.read()
        harness.write_atomically(readme, fill_experiments_table(replace_section(text, section), data,
                                                                reported_by_claim(data, settings)))
    return report
