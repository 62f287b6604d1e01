"""The report's plots (PNG, matplotlib's Agg backend), drawn from the raw results."""

import os

import matplotlib

matplotlib.use("Agg")

from matplotlib import pyplot as plt, ticker  # noqa: E402

from benchmarks import attention as kernel_benchmark  # noqa: E402
from benchmarks.report_format import (PEER, QUALITY_INPUTS, attention_runs, config_names, jit_name, jit_settings,
                                      kernel_names, kilo, lengths_of, measured, ordered)  # noqa: E402

PLOT_CAPTIONS = {
    "kernels_time": "Each attention kernel's forward + backward time against length",
    "kernels_memory": "Each attention kernel's forward + backward memory against length",
    "families_tokens_per_s": "Training-step tokens/s of each family against length",
    "families_memory": "Training-step peak memory of each family against length",
    "quality": "Training bits/byte against wall time, with xz -9",
    "quality_30min": "Training bits/byte against wall time over 30 minutes, with xz -9",
    "decoding": "Cached decoding against the full pass, per new token",
}
MARKERS = "osD^vPX*h<>p"
DPI = 100
CURVE_SMOOTHING = 8  # logged training steps averaged in the quality plot


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
    for name in QUALITY_INPUTS:
        if results[name] and any(measured(r) for r in results[name]["records"]):
            plots[name] = plot_quality(results[name], os.path.join(plots_dir, name + ".png"))
    if results["decoding"]:
        plots["decoding"] = plot_decoding(results["decoding"], os.path.join(plots_dir, "decoding.png"))
    return plots
