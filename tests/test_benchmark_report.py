"""benchmarks.report: tables, plots, README summary and "behind" facts from small synthetic results, and one
run on the repository's own results (copied, so that they stay untouched)."""

import json
import os
import shutil

import pytest

from benchmarks import harness
from benchmarks import report, report_format, report_plots, report_readme

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KERNELS = ("dense", "local", "routing_balanced", "routing_causal", "combiner_fixed", "combiner_logsparse",
           "combiner_axial", "combiner_mixture", "sparse_strided", "sparse_fixed", "sparse_fixed_c8")
LENGTHS = (1024, 2048, 4096, 8192)
PLOTS = ("kernels_time", "kernels_memory", "families_tokens_per_s", "families_memory", "quality", "quality_30min",
         "decoding")
README = "# Zoo\n\nIntro text.\n\n{start}\nold summary\n{end}\n\nText after.\n"


def kernel_time_memory(kernel, length, jit):
    """Synthetic (ms, MiB): dense c L^2 (443 ms and 2,000 MiB at 4k, 10% slower with jit), local linear (100 ms
    and 500 MiB at 4k), sparse_fixed c L^2 time and linear memory, combiner_axial slower than dense at 4k with jit
    off; the others spread out between, twice as fast with jit."""
    scale = length / 4096
    if kernel == "dense":
        return 443 * scale**2 * (1.1 if jit else 1), 2000 * scale**2
    if (kernel, length, jit) == ("combiner_axial", 4096, False):
        return 500, 300
    if kernel == "local":
        return 100 * scale, 500 * scale
    if kernel == "sparse_fixed":
        return 1e-5 * length**2, 0.01 * length
    index = KERNELS.index(kernel)
    return (20 + 15 * index) * scale**(1 + index / 10) * (0.5 if jit else 1), (100 + 40 * index) * scale


def attention_record(kernel, length, jit):
    if kernel == "dense" and length == 8192:
        return {"kernel": kernel, "length": length, "status": "skipped (needs ~32.0 GiB)"}
    time_ms, memory_mib = kernel_time_memory(kernel, length, jit)
    return {"kernel": kernel, "length": length, "status": "ok", "time_ms": time_ms, "memory_mib": memory_mib,
            "others_cpu_share": 0.5 if (kernel, length, jit) == ("local", 2048, False) else 0.0}


def attention_input(jit):
    return {"machine": "Test CPU, 2 cores", "settings": {"jit": jit, "lengths": list(LENGTHS), "repeats": 5},
            "kernels": {name: {} for name in KERNELS}, "wall_s": 60.0,
            "records": [attention_record(k, length, jit) for length in LENGTHS for k in KERNELS]}


def family_record(config, length, jit, time_ms, memory_mib):
    return {"config": config, "length": length, "jit": jit, "status": "ok", "time_ms": time_ms,
            "memory_mib": memory_mib, "tokens_per_s": length / (time_ms / 1000), "step_flops": 1e10,
            "flops_per_s": 1e10 / (time_ms / 1000)}


def families_input():
    """At 1k: PyTorch 200 ms, routing 250 ms with jit off (slower), sparse 100 ms (faster)."""
    times = {"dense": 180, "routing": 250, "sparse": 100, "combiner": 150}
    records = []
    for length in (1024, 4096):
        scale = length // 1024
        for config, time_ms in times.items():
            for jit in (True, False):
                time_ms_at_length = time_ms * scale * (0.9 if jit else 1)
                records.append(family_record(config, length, jit, time_ms_at_length, 400 * scale))
        records.append(family_record("pytorch", length, None, 200 * scale, 300 * scale))
    return {"peak": {"status": "ok", "flops_per_s": 1e11}, "records": records}


def quality_input():
    records = [{"config": config, "jit": jit, "status": "ok", "parameters": 1_000_000, "steps": 1200,
                "train_wall_s": 600.0,
                "train_cpu_s": 1150.0, "tokens_per_s": 8000.0, "bits_per_byte": 2.0 + 0.1 * i,
                "eval_stride": 128, "from_scratch_bits_per_byte": 2.05 + 0.1 * i,
                "curve": [[60.0 * t, 8.0 / (1 + t) + 1.8 + 0.1 * i] for t in range(11)]}
               for i, (config, jit) in enumerate((c, j) for c in ("dense", "routing", "sparse", "combiner")
                                                 for j in (True, False))]
    records[-1] = {"config": "combiner", "jit": False, "status": "timeout"}
    records[2]["others_cpu_share"] = 0.5  # routing, jit on: trained while other processes took half the CPU
    records[3]["others_cpu_share"] = 0.01
    return {"machine": "Test CPU, 2 cores", "command": "python -m benchmarks.quality", "date": "2026-11-25",
            "matmul_flops_per_s": 5.0e10,
            "settings": {"sequence_length": 256, "budget_s": 600.0, "eval_split": "test"},
            "held_out_bytes": 100000, "xz_bits_per_byte": 2.5, "records": records}


def quality_30min_input():
    """The stretch run: routing alone for 30 minutes, its schedule stretched by a binding."""
    data = quality_input()
    data["records"] = [dict(data["records"][2], steps=3600, train_wall_s=1800.0, bits_per_byte=2.25,
                            from_scratch_bits_per_byte=2.3, others_cpu_share=0.0)]
    data["settings"].update(budget_s=1800.0, gin_params=["TRAIN_STEPS = 3600"])
    data["command"] = "python -m benchmarks.quality --configs=routing --budget_s=1800"
    return data


def decoding_input():
    return [{"kernel": kernel, "prefix": prefix, "cached_s": 0.002, "full_s": 0.05 * prefix / 1024,
             "speedup": 25 * prefix / 1024} for kernel in ("local", "strided", "fixed") for prefix in (1024, 4096)]


def small_models_input():
    """Routing at 1,024 x 8: 2,000 ms with jit on (faster than PyTorch's 2,500), 3,000 ms with jit off (slower,
    and bigger); sparse at the same shape timed out."""
    def record(config, jit, time_ms, memory_mib):
        return {"config": config, "length": 1024, "batch": 8, "jit": jit, "status": "ok", "time_ms": time_ms,
                "memory_mib": memory_mib, "tokens_per_second": 8192 / (time_ms / 1000)}
    return {"machine": "Test CPU, 2 cores", "records": [
        record("routing", True, 2000, 500), record("routing", False, 3000, 900), record("pytorch", None, 2500, 600),
        {"config": "sparse", "length": 1024, "batch": 8, "jit": True, "status": "timeout"}]}


def write_inputs(results_dir, names=("attention", "attention_jit", "families", "small_models", "quality",
                                     "quality_30min", "decoding")):
    """Writes the named synthetic inputs (and an attention-map PNG) into results_dir."""
    inputs = {"attention": lambda: attention_input(False), "attention_jit": lambda: attention_input(True),
              "families": families_input, "small_models": small_models_input, "quality": quality_input,
              "quality_30min": quality_30min_input, "decoding": decoding_input}
    os.makedirs(os.path.join(results_dir, "attention_maps"), exist_ok=True)
    with open(os.path.join(results_dir, "attention_maps", "overview.png"), "wb") as f:
        f.write(PNG_SIGNATURE)
    for name in names:
        with open(os.path.join(results_dir, name + ".json"), "w") as f:
            json.dump(inputs[name](), f)


def run_report(results_dir, readme=""):
    report.main([f"--results_dir={results_dir}", f"--readme={readme}"])
    with open(os.path.join(results_dir, "REPORT.md")) as f:
        return f.read()


def section(text, title):
    """The text of the "## title" section."""
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """(results dir, REPORT.md text, README path) of one run on every synthetic input."""
    root = tmp_path_factory.mktemp("synthetic")
    results_dir = str(root / "results")
    write_inputs(results_dir)
    readme = root / "README.md"
    readme.write_text(README.format(start=report_readme.README_START, end=report_readme.README_END))
    return results_dir, run_report(results_dir, str(readme)), readme


def test_kernel_table_ratios_and_statuses_come_from_the_inputs(synthetic):
    _, text, _ = synthetic
    attention = section(text, "Attention kernels, forward + backward")
    assert "| local | 4,096 | 100 | 500 | 4.43x | 4.00x |" in attention  # dense 443 ms, 2,000 MiB
    assert "| dense | 8,192 | skipped (needs ~32.0 GiB) |" in attention
    assert "| local | 2,048 | 50.0* |" in attention  # disturbed by other processes
    assert "\\* Other processes used more than 10%" in attention


def test_growth_exponents_are_fitted_over_the_measured_lengths(synthetic):
    _, text, _ = synthetic
    growth = section(text, "Attention kernels, forward + backward").split("### Growth with length")[1]
    assert "| sparse_fixed | 2.00 | 1.00 | 1k, 2k, 4k, 8k | 2.00 | 1.00 | 1k, 2k, 4k, 8k |" in growth
    assert "| dense | 2.00 | 2.00 | 1k, 2k, 4k |" in growth  # 8k skipped


def test_families_quality_and_decoding_tables(synthetic):
    _, text, _ = synthetic
    # routing with jit off at 1k: 250 ms vs PyTorch's 200 ms, 400 vs 300 MiB; tokens/s = 1024 / 0.25 s.
    assert "| routing | 1,024 | 4,096 | 400 | 0.400 | 0.72x | 1.00x | 0.80x | 0.75x |" in section(
        text, "Training step of each family")
    quality = section(text, "Held-out quality after 10 minutes of training")
    assert "| dense | on | 1,000,000 | 1,200 | 8,000 | 10.0 | 19.2 | 2.000 | 0.80x | 2.050 |" in quality  # xz: 2.5
    assert "\"from scratch\" is the same model on consecutive windows" in quality
    assert "(test split) to 2.500 bits/byte" in quality and "matmul rate: 50 GFLOP/s" in quality
    assert "| combiner | off | timeout |" in quality
    assert "| routing* | on |" in quality and "| routing | off |" in quality and "\\* Other processes used" in quality
    longer = section(text, "Held-out quality after 30 minutes of training")
    assert "Bindings on top of the presets: `TRAIN_STEPS = 3600`." in longer
    assert "| routing | on | 1,000,000 | 3,600 | 8,000 | 30.0 | 19.2 | 2.250 | 0.90x | 2.300 |" in longer
    small = section(text, "Small batched models against the PyTorch package")
    assert "| 1,024 x 8 | routing | on | 4,096 | 500 | 1.25x |" in small
    assert "| 1,024 x 8 | pytorch | n/a | 3,277 | 600 | - |" in small
    assert "| 1,024 x 8 | sparse | on | timeout | timeout | - |" in small
    decoding = section(text, "Generation: cached decoding against the full pass")
    assert "| strided | 4,096 | 2.00 | 200 | 100x |" in decoding


def test_behind_lists_slower_configs_only(synthetic):
    _, text, _ = synthetic
    behind = section(text, "Where the zoo is behind a peer")
    against_peer = behind.split("### Training step against the PyTorch peer")[1].split("###")[0]
    assert "- routing, 1,024 tokens, jit off: 0.80x PyTorch's speed (250 vs 200 ms)" in against_peer
    assert "- routing, 1,024 tokens, jit off: 1.33x PyTorch's memory (400 vs 300 MiB)" in against_peer
    assert not any("sparse" in line and "speed" in line for line in against_peer.splitlines())
    small = behind.split("### Small batched models against the PyTorch peer")[1].split("###")[0]
    assert "- routing, 1,024 x 8, jit off: 0.83x PyTorch's speed (3,000 vs 2,500 ms)" in small
    assert "- routing, 1,024 x 8, jit off: 1.50x PyTorch's memory (900 vs 600 MiB)" in small
    assert "jit on" not in small and "sparse" not in small  # faster and smaller; not measured
    kernels = behind.split("### Kernels alone against dense attention")[1].split("###")[0]
    assert "- combiner_axial, 4,096 tokens, jit off: 0.89x dense's speed (500 vs 443 ms)" in kernels
    assert "- local, " not in kernels  # never slower nor bigger than dense
    steps, kernels = behind.split("### jit_compile on slower than off")[1].split("Kernels alone")
    assert "- none" in steps  # every training step is faster with jit on here
    assert "- dense, 1,024 tokens, jit on: 0.91x jit off's speed (30.5 vs 27.7 ms)" in kernels
    assert "- local, " not in kernels


def test_every_plot_is_a_png(synthetic):
    results_dir, text, _ = synthetic
    for name in PLOTS:
        path = os.path.join(results_dir, "plots", name + ".png")
        with open(path, "rb") as f:
            content = f.read()
        assert content.startswith(PNG_SIGNATURE) and len(content) > 5000, name
        assert f"(plots/{name}.png)" in text
    assert "(attention_maps/overview.png)" in text


def test_readme_summary_replaces_only_the_marked_part(synthetic):
    _, _, readme = synthetic
    text = readme.read_text()
    before, rest = text.split(report_readme.README_START + "\n")
    summary, after = rest.split(report_readme.README_END)
    assert before == "# Zoo\n\nIntro text.\n\n" and after == "\n\nText after.\n"
    assert "old summary" not in summary
    assert "[results/REPORT.md](results/REPORT.md)" in summary
    # The headline at 4k (the longest length, dense measured there): 1 s per step of 4,096 tokens.
    assert "| routing | 4,096 | off | 4,096 | 1,600 |" in summary and "| routing | 1,024 |" not in summary
    # Quality: the measured runs best first against xz -9 (2.5 bits/byte); the timed-out run is left out.
    assert ("Held-out (test split) bits/byte of each family's `cpu_small.gin` preset after 10 minutes of training "
            "on a CPU doing 50 GFLOP/s of float32 matmul" in summary and "100,000 bytes: 2.500" in summary)
    assert "| dense | on | 1,000,000 | 1,200 | 2.000 | 0.80x | 2.050 |" in summary and "timeout" not in summary
    assert ("`cpu_small.gin` preset with `TRAIN_STEPS = 3600` after 30 minutes of training" in summary
            and "| routing | on | 1,000,000 | 3,600 | 2.250 | 0.90x | 2.300 |" in summary)
    assert all(f"(results/plots/{name}.png)" in summary for name in PLOTS)


def test_readme_without_markers_is_left_alone(tmp_path, capsys):
    write_inputs(str(tmp_path / "results"), names=("decoding",))
    readme = tmp_path / "README.md"
    readme.write_text("# Zoo\n\nNo markers here.\n")
    run_report(str(tmp_path / "results"), str(readme))
    assert readme.read_text() == "# Zoo\n\nNo markers here.\n"
    assert "left unchanged" in capsys.readouterr().err


def test_missing_inputs_say_how_to_measure_them(tmp_path):
    text = run_report(str(tmp_path))
    for command in report_format.COMMANDS.values():
        assert f"Not measured yet: run `{command}`." in text
    assert "Not drawn yet: run `python -m benchmarks.attention_maps`." in text
    assert not os.path.exists(tmp_path / "plots") or not os.listdir(tmp_path / "plots")


def test_reads_the_repository_results(tmp_path):
    results_dir = str(tmp_path / "results")
    shutil.copytree(harness.RESULTS_DIR, results_dir, ignore=shutil.ignore_patterns("plots", "REPORT.md"))
    text = run_report(results_dir)
    present = [name for name in report_format.COMMANDS if os.path.exists(os.path.join(results_dir, name + ".json"))]
    assert present, "no benchmark results in the repository"
    for name in present:
        assert f"Not measured yet: run `{report_format.COMMANDS[name]}`." not in text
    assert len(os.listdir(os.path.join(results_dir, "plots"))) >= 1


def test_moving_average_of_the_quality_curves():
    assert report_plots.moving_average([4.0, 2.0, 6.0, 0.0], 2) == [4.0, 3.0, 4.0, 3.0]
