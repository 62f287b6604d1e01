"""benchmarks.reproduce: a quick reproduction with every claim row, equal footing of the arms, resume, a report
read from the JSON alone, the verdict rule, and one-line errors for bad input."""

import dataclasses
import json
import math
import os

import gin
import pytest

from benchmarks import claims, reproduce, reproduce_report
from tests.apps.train_helpers import assert_one_line_error, clean_gin, run_module  # noqa: F401  (fixture)

WORDS = ("def", "return", "self", "value", "class", "import", "for", "in", "if", "else", "None", "print")


def write_corpus(folder, files=60, lines=40):
    """A directory of Python-like text files, every split holding a few KiB."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        text = "".join(f"{WORDS[(index + line) % len(WORDS)]} name_{index}_{line % 7} = {line * index}\n"
                       for line in range(lines))
        (folder / f"module_{index:03d}.py").write_text(text)
    return str(folder)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick reproduction of every claim on a written corpus: (args list, output stem, JSON)."""
    root = tmp_path_factory.mktemp("reproduce")
    argv = ["--quick", f"--local_text_dir={write_corpus(root / 'texts')}", f"--data_dir={root / 'tfds'}",
            f"--output={root / 'out' / 'reproduce'}"]
    gin.clear_config()
    reproduce.main(argv)
    gin.clear_config()
    with open(root / "out" / "reproduce.json") as f:
        return argv, str(root / "out" / "reproduce"), json.load(f)


@pytest.mark.slow
def test_quick_reproduction_has_every_claim_row_with_a_verdict_cell(quick_run):
    _, stem, data = quick_run
    with open(stem + ".md") as f:
        report = f.read()
    rows = [line for line in report.splitlines() if line.startswith("| ") and ": " in line.split("|")[1]]
    comparisons = [c for claim in claims.CLAIMS.values() for c in claim.comparisons]
    assert len(rows) == len(comparisons)
    for row, comparison in zip(rows, comparisons):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert comparison.statement in cells[0] and cells[1] == comparison.paper
        assert cells[3] in reproduce_report.VERDICTS and cells[5] in reproduce_report.VERDICTS, row
    for claim in claims.CLAIMS:
        assert os.path.getsize(f"{stem}_{claim}.png") > 1000
    settings = reproduce.settings_of(reproduce.parse_args(quick_run[0]))
    for name, claim in claims.CLAIMS.items():  # one paired timing per claim: every arm, every round
        timing = reproduce_report.step_costs(data, settings, name)
        assert set(timing["arms"]) == set(claim.arms) and timing["rounds"] == reproduce.TIMING["quick"]["rounds"]
        assert all(len(times) == timing["rounds"] and min(times) > 0 for times in timing["arms"].values())
    # Seed 0 of every arm at both sweep rates, seed 1 at the rate with the better validation bits.
    arms = sum(len(c.arms) for c in claims.CLAIMS.values())
    assert len(data["runs"]) == arms * 3
    assert {r["split"] for r in data["runs"].values()} == {"test"}
    for name, claim in claims.CLAIMS.items():
        sweep = reproduce_report.sweep_runs(data, settings, name)
        for arm, records in reproduce_report.main_runs(data, settings, name).items():
            assert [r["seed"] for r in records] == [0, 1]
            validation = {lr: r["validation_bits_per_byte"] for lr, r in sweep[arm].items()}
            assert records[1]["learning_rate"] == min(validation, key=validation.get)


@pytest.mark.slow
def test_arms_of_a_comparison_share_tokens_and_parameters_within_two_percent(quick_run):
    argv, _, data = quick_run
    settings = reproduce.settings_of(reproduce.parse_args(argv))
    for name, claim in claims.CLAIMS.items():
        runs = [r for records in reproduce_report.main_runs(data, settings, name).values() for r in records]
        assert len({r["tokens"] for r in runs}) == 1
        counts = {r["arm"]: r["parameters"] for r in runs}
        assert set(counts) == set(claim.arms)
        assert max(counts.values()) <= min(counts.values()) * 1.02
        assert claims.check_parameter_counts(name, "quick") == counts


@pytest.mark.slow
def test_rerun_trains_nothing_and_the_report_is_regenerated_from_the_json(quick_run, monkeypatch, clean_gin):
    argv, stem, data = quick_run
    with open(stem + ".md") as f:
        written = f.read()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(reproduce, "train_run", refuse)
    monkeypatch.setattr(reproduce, "time_arms", refuse)
    reproduce.main(argv)
    with open(stem + ".json") as f:
        again = json.load(f)
    assert again["runs"] == data["runs"]
    settings = reproduce.settings_of(reproduce.parse_args(argv))
    report, section = reproduce_report.render(again, settings, stem)
    assert report.split("\n", 5)[5] == written.split("\n", 5)[5]  # all but the run's header lines
    assert reproduce_report.claims_table(again, reproduce_report.reported_by_claim(again, settings))[2] in section


@pytest.mark.slow
def test_runs_of_an_older_revision_of_a_claim_are_not_reused(quick_run, monkeypatch):
    argv, _, data = quick_run
    settings = reproduce.settings_of(reproduce.parse_args(argv))
    before = {name: reproduce_report.main_runs(data, settings, name) for name in claims.CLAIMS}
    assert all(before.values())
    revised = claims.CLAIMS["sparse"].revision + 1
    monkeypatch.setitem(claims.CLAIMS, "sparse", dataclasses.replace(claims.CLAIMS["sparse"], revision=revised))
    assert reproduce_report.main_runs(data, settings, "sparse") == {}
    assert reproduce_report.sweep_runs(data, settings, "sparse") == {}
    for name in ("routing", "combiner"):
        assert reproduce_report.main_runs(data, settings, name) == before[name]
    key = reproduce.run_key(settings, "sparse", "dense", 1e-3, 0)
    sparse_key = reproduce_report.claim_settings(settings, "sparse").key()
    assert key.endswith(f"{sparse_key}.r{revised}") and key not in data["runs"]
    section = "\n".join(reproduce_report.claim_section(data, settings, claims.CLAIMS["sparse"], None))
    assert f"Revision {revised} of these arms: {claims.CLAIMS['sparse'].revision_note}" in section
    assert "| dense attention | not run yet |" in section


def test_a_wider_sweep_reuses_the_runs_of_a_narrower_one():
    narrow = reproduce.settings_of(reproduce.parse_args(["--learning_rates=2e-3"]))
    wide = dataclasses.replace(narrow, learning_rates=(2e-3, 4e-3))
    assert reproduce.run_key(wide, "sparse", "fixed", 2e-3, 1) == reproduce.run_key(narrow, "sparse", "fixed", 2e-3, 1)
    assert reproduce.run_key(wide, "sparse", "fixed", 4e-3, 0) != reproduce.run_key(wide, "sparse", "fixed", 2e-3, 0)
    for changed in (dict(steps=99), dict(eval_windows=3), dict(jit=False), dict(local_text_dir="/text")):
        assert dataclasses.replace(narrow, **changed).key() != narrow.key(), changed


@pytest.mark.slow
def test_a_seed_0_run_at_a_rate_outside_the_sweep_is_not_part_of_it(quick_run):
    """Keys leave the rates out, so a wider sweep's runs sit beside a narrower one's; each reports its own."""
    argv, _, data = quick_run
    settings = reproduce.settings_of(reproduce.parse_args(argv))
    before = reproduce_report.main_runs(data, settings, "routing")
    record = before["local"][0]
    outside = dict(record, learning_rate=1e-2, validation_bits_per_byte=record["validation_bits_per_byte"] - 1)
    wider = dict(data, runs=dict(data["runs"], **{
        reproduce.run_key(settings, "routing", "local", 1e-2, 0): outside}))
    assert reproduce_report.main_runs(wider, settings, "routing") == before
    assert 1e-2 not in reproduce_report.sweep_runs(wider, settings, "routing")["local"]
    widened = dataclasses.replace(settings, learning_rates=settings.learning_rates + (1e-2,))
    assert 1e-2 in reproduce_report.sweep_runs(wider, widened, "routing")["local"]


def test_parameter_counts_of_the_full_miniatures_are_within_two_percent():
    for name in claims.CLAIMS:
        counts = claims.check_parameter_counts(name, "full")
        assert max(counts.values()) <= min(counts.values()) * 1.02, (name, counts)
    assert claims.CLAIMS["routing"].sizes["full"].sequence_length >= 4096


def test_arms_differ_only_in_attention():
    routing = {arm: claims.build_arm(256, claim="routing", arm=arm, scale="quick") for arm in ("local",
                                                                                                "routing_causal")}
    assert routing["local"].preset["routing_heads"] == 0 and routing["routing_causal"].preset["routing"] == "causal"
    same = {k for k, v in routing["local"].preset.items() if routing["routing_causal"].preset[k] == v}
    assert set(routing["local"].preset) - same == {"local_heads", "routing_heads", "num_clusters", "routing"}
    assert routing["routing_causal"].preset["decay"] == claims.ROUTING_DECAY == 0.99  # a miniature's k-means EMA
    with pytest.raises(ValueError, match="no arm"):
        claims.build_arm(256, claim="sparse", arm="axial")
    with pytest.raises(ValueError, match="byte"):
        claims.build_arm(300, claim="sparse", arm="dense")


@pytest.mark.parametrize("kind,arm,baseline,verdict", [
    ("beats", [3.0, 3.02], [3.2, 3.21], "holds"),
    ("beats", [3.3, 3.31], [3.2, 3.21], "does not hold"),
    ("beats", [3.0, 3.3], [3.1, 3.12], "inconclusive"),  # spread 0.3 > gap 0.04
    ("matches", [3.25, 3.26], [3.2, 3.21], "holds"),  # 1.7% worse: within 2%
    ("matches", [3.5, 3.51], [3.2, 3.21], "does not hold"),
    ("matches", [3.2, 3.5], [3.2, 3.21], "inconclusive"),
    ("beats", [3.0], [3.2, 3.21], "inconclusive"),  # one seed: no spread to judge the gap by
    ("beats", [3.0, 3.01], [3.2], "inconclusive"),
])
def test_verdict_rule(kind, arm, baseline, verdict):
    assert reproduce_report.judge(kind, arm, baseline) == verdict


def test_equal_time_reads_each_run_at_its_arms_paired_timing_not_its_own_clock():
    def run(own_seconds, bits):  # the run's own clock: compilation, evaluation and the machine's speed that day
        return {"eval_curve": [(s, own_seconds * s + 30.0, b) for s, b in zip([10, 20, 30, 40], bits)]}

    fast, slow = run(3.0, [4, 3, 2, 1]), run(0.5, [4.0, 3.0, 2.0, 1.0])
    timing = {"arms": {"fast": [0.9, 1.1], "slow": [2.0, 2.0]}}
    seconds, values = reproduce_report.equal_time({"fast": [fast], "slow": [slow]}, ("fast", "slow"), timing)
    assert seconds == pytest.approx(40.0)  # 40 steps at 1.0 s/step
    assert values["fast"] == [pytest.approx(1.0)] and values["slow"] == [pytest.approx(3.0)]  # slow at step 20
    assert reproduce_report.interpolate([(1, 10.0, 5.0)], 3.0) is None  # before the first evaluation


def test_a_claim_whose_arms_are_all_worse_than_xz_says_the_runs_are_too_short():
    claim = claims.CLAIMS["routing"]
    runs = {"local": [{"bits_per_byte": 3.5}, {"bits_per_byte": 3.6}], "routing_causal": [{"bits_per_byte": 3.4}]}
    note = " ".join(reproduce_report.budget_note(runs, {"xz_bits_per_byte": 1.6}, claim))
    assert claim.arms["routing_causal"] in note and "3.400 against 1.600" in note and "more --steps" in note
    runs["routing_causal"] = [{"bits_per_byte": 1.5}]
    assert reproduce_report.budget_note(runs, {"xz_bits_per_byte": 1.6}, claim) == []
    assert reproduce_report.budget_note(runs, None, claim) == []
    runs = {"local": [{"bits_per_byte": float("nan")}], "routing_causal": [{"bits_per_byte": 3.4}]}
    assert "3.400 against 1.600" in " ".join(reproduce_report.budget_note(runs, {"xz_bits_per_byte": 1.6}, claim))


def test_arms_still_on_a_plateau_while_others_left_it_are_named():
    claim = claims.CLAIMS["sparse"]

    def run(halfway, end):  # 320 steps, evaluated at 100, 160 (nearest half) and 320
        return {"steps": 320, "bits_per_byte": end,
                "eval_curve": [[100, 1.0, 3.9], [160, 2.0, halfway], [320, 3.0, end]]}

    runs = {"dense": [run(3.64, 3.63), run(3.62, 3.61)], "fixed": [run(3.50, 3.25), run(3.55, 3.26)],
            "strided": [run(3.50, 3.39)]}
    assert reproduce_report.at_half_steps(runs["dense"][0]) == 3.64

    def note(runs):
        halfway = reproduce_report.means_at_half_steps(runs)
        return " ".join(reproduce_report.plateau_note(runs, halfway, claim)).strip()

    text = note(runs)
    assert text.startswith("Still on a plateau: dense attention (0.3% fewer bits") and "fixed pattern" not in text
    assert "the other arms gained 3.1% or more" in text  # strided: 1 - 3.39 / 3.50
    runs["dense"] = [run(3.8, 3.6)]
    assert note(runs) == ""  # every arm moved
    assert note({"dense": [run(3.64, 3.63)], "fixed": [run(3.5, 3.49)]}) == ""


def test_the_paired_timing_and_its_load_are_described_in_the_claim_section():
    timing = {"status": "ok", "arms": {"local": [0.5]}, "others_cpu_share": 0.02, "rounds": 5,
              "steps_per_round": 12, "date": "2026-12-07T19:30:00"}
    note = " ".join(reproduce_report.timing_note(timing))
    assert "paired timing of 2026-12-07" in note and "5 rounds of 12 steps" in note and "used 2% of the CPU)" in note
    assert "disturbed" in " ".join(reproduce_report.timing_note(dict(timing, others_cpu_share=0.35)))
    assert "--retime" in " ".join(reproduce_report.timing_note(None))


def test_readme_section_is_replaced_and_the_rest_kept():
    text = f"# Title\n\nintro\n{reproduce_report.README_START}\nold\n{reproduce_report.README_END}\ntail\n"
    assert reproduce_report.replace_section(text, "new\n") == (
        f"# Title\n\nintro\n{reproduce_report.README_START}\nnew\n{reproduce_report.README_END}\ntail\n")
    appended = reproduce_report.replace_section("# Title\n", "new\n")
    assert appended.startswith("# Title\n") and f"{reproduce_report.README_START}\nnew\n" in appended


@pytest.mark.parametrize("args,message", [
    (["--claims=routing,flash"], "unknown claim 'flash'; choose from routing, sparse, combiner"),
    (["--steps=0"], "--steps=0 is too short to reach one evaluation"),
    (["--steps=3", "--evals=6"], "3 steps (claim 'routing') are too short to reach 6 evaluations"),
    (["--learning_rates=fast"], "--learning_rates='fast' is not a list of numbers"),
    (["--local_text_dir=/no/such/folder"], "is not a directory"),
    (["--readme=/no/such/README.md"], "--readme='/no/such/README.md' is not a file"),
    (["--report_only", "--output=/no/such/stem"], "--report_only: no results at /no/such/stem.json"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    result = run_module("benchmarks.reproduce", "--quick", *args, timeout=120)
    assert message in assert_one_line_error(result)


def test_a_text_directory_too_small_names_both_sizes(tmp_path):
    folder = write_corpus(tmp_path / "small", files=60, lines=1)
    result = run_module("benchmarks.reproduce", "--claims=routing", f"--local_text_dir={folder}",
                        f"--data_dir={tmp_path / 'tfds'}", f"--output={tmp_path / 'out'}", timeout=300)
    line = assert_one_line_error(result)
    assert "split has" in line and "bytes, but claim 'routing' needs 65,536 (16 windows of 4,096 tokens)" in line
    assert not os.path.exists(tmp_path / "out.json")


@pytest.mark.slow
def test_held_out_text_is_what_xz_is_compared_on(quick_run, clean_gin):
    argv, stem, data = quick_run
    args = reproduce.parse_args(argv)
    settings = reproduce.settings_of(args)
    text = reproduce.held_out_text(settings, "routing", args.data_dir)
    held = data["held_out"][f"routing/{reproduce_report.claim_settings(settings, 'routing').key()}"]
    assert held["bytes"] == len(text) == 2 * 128
    import lzma
    assert math.isclose(held["xz_bits_per_byte"], 8 * len(lzma.compress(text, preset=9)) / len(text))


@pytest.mark.slow
def test_experiments_table_cells_show_the_miniature_labelled_as_such(quick_run):
    argv, _, data = quick_run
    settings = reproduce.settings_of(reproduce.parse_args(argv))
    enwik8 = "| Sparse Transformer | enwik8 | `sparse_transformer/enwik8.gin` | 94.9M | 0.99 bits/byte"
    readme = ("| family | experiment | gin file | parameters (zoo) | paper | zoo measured |\n"
              f"{enwik8} | not yet trained |\n"
              "| Sparse Transformer | CIFAR-10 | `sparse_transformer/cifar10.gin` | 59.2M | 2.80 bits/dim "
              "| not yet trained |\n")
    reported = reproduce_report.reported_by_claim(data, settings)
    lines = reproduce_report.fill_experiments_table(readme, data, reported).split("\n")
    fixed = [r["bits_per_byte"] for r in reproduce_report.main_runs(data, settings, "sparse")["fixed"]]
    assert lines[1].startswith(f"{enwik8} | miniature only: {sum(fixed) / len(fixed):.3f} held-out bits/byte")
    assert lines[1].endswith("not this experiment |") and lines[0] == readme.split("\n")[0]
    assert lines[2] == readme.split("\n")[2]  # no miniature of that one


def longer_copy(data, settings, claim, steps, seeds, shift, learning_rates=None):
    """`data` plus a copy of `claim`'s runs (only `seeds`) as if trained for `steps` (and swept over
    `learning_rates`, default the same), bits raised by `shift`."""
    longer = dataclasses.replace(settings, steps=steps, learning_rates=learning_rates or settings.learning_rates)
    base = json.loads(json.dumps(dataclasses.asdict(reproduce_report.claim_settings(settings, claim))))
    runs = dict(data["runs"])
    for record in data["runs"].values():
        if record["claim"] == claim and record["seed"] in seeds and record["settings"] == base:
            key = reproduce.run_key(longer, claim, record["arm"], record["learning_rate"], record["seed"])
            runs[key] = dict(record, bits_per_byte=record["bits_per_byte"] + shift,
                             settings=dataclasses.asdict(longer))
    return dict(data, runs=runs)


@pytest.mark.slow
def test_each_claim_is_reported_at_its_longest_finished_reproduction(quick_run):
    argv, stem, data = quick_run
    settings = reproduce.settings_of(reproduce.parse_args(argv))
    steps = claims.CLAIMS["routing"].sizes["quick"].steps
    longer = longer_copy(data, settings, "routing", steps * 4, (0, 1), shift=1.0)
    reported = reproduce_report.reported_settings(longer, settings, "routing")
    assert reported.steps == steps * 4 and reported.key() != reproduce_report.claim_settings(settings, "routing").key()
    assert reproduce_report.reported_settings(longer, settings, "sparse") == reproduce_report.claim_settings(
        settings, "sparse")
    local = [r["bits_per_byte"] for r in reproduce_report.main_runs(longer, reported, "routing")["local"]]
    assert local == [r["bits_per_byte"] + 1.0 for r in reproduce_report.main_runs(data, settings, "routing")["local"]]
    report, _ = reproduce_report.render(longer, settings, stem)
    routing_row = next(line for line in report.splitlines() if line.startswith("| routing: routing + local"))
    assert f"local {reproduce_report.fmt(local)}" in routing_row
    rates = ",".join(f"{rate:g}" for rate in settings.learning_rates)
    for claim, claim_steps in (("routing", steps * 4), ("sparse", steps), ("combiner", steps)):  # what reruns it
        assert (f"`python -m benchmarks.reproduce --quick --claims={claim} --steps={claim_steps} "
                f"--learning_rates={rates} --local_text_dir={settings.local_text_dir}`") in report
    def sparse_rows(lines):
        return [line for line in lines if line.startswith("| sparse: ")]

    table = reproduce_report.claims_table(data, reproduce_report.reported_by_claim(data, settings))
    assert sparse_rows(report.splitlines()) == sparse_rows(table)
    # A longer reproduction with one seed per arm is unfinished: the claim stays at the length it has finished.
    partial = longer_copy(data, settings, "routing", steps * 8, (0,), shift=2.0)
    assert reproduce_report.reported_settings(partial, settings, "routing") == reproduce_report.claim_settings(
        settings, "routing")
    # The same length swept over other rates is reported too (the sweep table shows which).
    resweep = longer_copy(data, settings, "routing", steps * 4, (0, 1), shift=1.0,
                          learning_rates=tuple(reversed(settings.learning_rates)))
    assert reproduce_report.reported_settings(resweep, settings, "routing").learning_rates == tuple(
        reversed(settings.learning_rates))


@pytest.mark.slow
def test_findings_are_printed_in_their_claim_section(quick_run):
    argv, _, data = quick_run
    settings = reproduce.settings_of(reproduce.parse_args(argv))

    def section(findings):
        claim = dataclasses.replace(claims.CLAIMS["combiner"], findings=findings)
        return "\n".join(reproduce_report.claim_section(data, settings, claim, None))

    assert "What we found: a reason." in section("a reason")
    assert "What we found" not in section("")


def test_time_verdicts_come_from_an_undisturbed_paired_timing_only():
    """The runs' own clocks (here the routing runs' 3x slower day) do not enter; a missing or disturbed paired
    timing makes the time verdicts inconclusive and says how to redo it."""
    def run(seed, own_seconds_per_step, last_bits):
        steps, bits = [10, 20, 30, 40], [4.0, 3.0, 2.5, last_bits]
        return {"seed": seed, "status": "ok", "tokens": 400, "parameters": 1000, "bits_per_byte": last_bits,
                "eval_curve": [(s, s * own_seconds_per_step, b) for s, b in zip(steps, bits)]}

    claim = claims.CLAIMS["routing"]
    comparison = next(c for c in claim.comparisons if c.name == "routing_beats_local")
    runs = {"routing_causal": [run(0, 1.5, 1.0), run(1, 1.5, 1.1)], "local": [run(0, 0.5, 2.0), run(1, 0.5, 2.1)]}
    timing = {"status": "ok", "arms": {"routing_causal": [0.5, 0.52], "local": [0.5, 0.5]}, "others_cpu_share": 0.0,
              "rounds": 2}

    def row(timing, kind_comparison=comparison):
        return reproduce_report.comparison_row(claim, kind_comparison, runs, timing)

    assert row(timing)["time_verdict"] == "holds" and row(timing)["time"].startswith("at 20 s: ")
    slower = row(dict(timing, arms={"routing_causal": [2.0, 2.0], "local": [0.5, 0.5]}))
    assert slower["time_verdict"] == "does not hold" and slower["steps_verdict"] == "holds"  # routing at step 10
    disturbed = row(dict(timing, others_cpu_share=0.3))
    assert disturbed["time_verdict"] == "inconclusive" and "paired timing disturbed: other processes used 30%" in (
        disturbed["time"])
    missing = row(None)
    assert missing["time_verdict"] == "inconclusive" and "--retime" in missing["time"]
    assert missing["steps_verdict"] == "holds"
    sparse = claims.CLAIMS["sparse"]
    faster = next(c for c in sparse.comparisons if c.kind == "faster")
    sparse_runs = {"fixed": runs["local"], "dense": runs["routing_causal"]}
    sparse_timing = dict(timing, arms={"fixed": [0.2, 0.21, 0.2], "dense": [0.5, 0.52, 0.51]}, rounds=3)
    speed = reproduce_report.comparison_row(sparse, faster, sparse_runs, sparse_timing)
    assert speed["steps_verdict"] == "holds" and "(paired timing, 3 rounds)" in speed["steps"]
    assert reproduce_report.comparison_row(sparse, faster, sparse_runs, None)["steps_verdict"] == "inconclusive"
