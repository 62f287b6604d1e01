"""The zoo on an accelerator under Keras' JAX backend, without TensorFlow: every kernel's forward + backward and
one training step of every family at long lengths, against dense `keras.ops.dot_product_attention`.

    sh benchmarks/device_check.sh                      # on the GPU machine: installs the carried wheels first
    KERAS_BACKEND=jax python -m benchmarks.device_check [--lengths=8192,16384,32768,65536] [--budget_s=420]

Kernels (batch 1, 4 heads of 64): dense (`keras.ops.dot_product_attention`, causal; cuDNN's flash attention
where JAX has it), local, routing (balanced and strictly causal), the Sparse Transformer's fixed and strided
patterns, Combiner-Axial and -Mixture. Each is jit-compiled as the gradient of its output's sum with respect
to q, k and v; the time is the median of --repeats calls after one that compiles, and the memory JAX's peak
bytes in use over those calls (reset before each case where the backend allows it, else the peak so far).
Families: one `train_on_batch` of each family's model (2 layers of d=--width, 256 by default, 4 heads, a batch of one window of the
length) with XLA, as tokens per second. Every case runs in this process, shortest length first, and the cases
left when --budget_s is spent are reported as not run, so that one bounded call gives a full first row.
A case that fails (out of memory) is reported with the first line of its error.

No TensorFlow: importing it fails here on purpose (the GPU machine has none), so the library must not need it.
Output: benchmarks/results/device.md and device.json, with the device named.
"""

import os
import sys

if __name__ == "__main__" and os.environ.get("KERAS_BACKEND") != "jax":  # before Keras picks its backend
    sys.exit(f"error: run with KERAS_BACKEND=jax (it is {os.environ.get('KERAS_BACKEND')!r})")

from common.no_tensorflow import block_tensorflow  # noqa: E402

block_tensorflow("the device check")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import combiner  # noqa: E402
import routing_transformer  # noqa: E402
import sparse_transformer  # noqa: E402
from common.attention import get_kernel  # noqa: E402
from common.metrics import LanguageModelLoss  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results")
HEADS, HEAD_DIM, WINDOW = 4, 64, 512  # kernels: heads, per-head width; tokens per routing cluster


def sqrt_stride(length):
    """The power of two nearest sqrt(length): the sparse patterns' stride and Combiner's segment."""
    return 2 ** max(3, round(np.log2(length) / 2))


def kernel_cases(length):
    """{name: (kernel, options)} at `length`; dense is the baseline."""
    stride = sqrt_stride(length)
    clusters = max(length // WINDOW, 1)
    centroids = np.random.default_rng(0).standard_normal((HEADS, clusters, HEAD_DIM)).astype("float32")
    return {
        "dense": ("dot_product_attention", {}),
        "local": ("local", dict(block_size=min(512, length), look_back=1)),
        "routing_balanced": ("routing", dict(centroids=centroids, window=min(WINDOW, length))),
        "routing_causal": ("routing", dict(centroids=centroids, window=min(WINDOW, length), routing="causal")),
        "sparse_fixed": ("sparse", dict(pattern="fixed", stride=stride, summary=min(8, stride // 2))),
        "sparse_strided": ("sparse", dict(pattern="local+strided", stride=stride)),
        "combiner_axial": ("combiner", dict(variant="axial", segment_length=stride)),
        "combiner_mixture": ("combiner", dict(variant="mixture", segment_length=stride)),
    }


def attention_function(kernel, options):
    """(q, k, v) [batch, heads, length, dim] -> output, for one kernel case."""
    if kernel == "dot_product_attention":
        def dense(q, k, v):  # keras takes [batch, length, heads, dim]
            swap = lambda x: ops.transpose(x, (0, 2, 1, 3))  # noqa: E731
            return swap(ops.dot_product_attention(swap(q), swap(k), swap(v), is_causal=True))
        return dense
    shares_keys = kernel == "routing"
    return lambda q, k, v: get_kernel(kernel)(q, None if shares_keys else k, v, **options)


def peak_bytes(device):
    stats = device.memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def timed(function, arguments, repeats):
    """Median seconds of `repeats` calls after a compiling one; outputs are waited for."""
    jax.block_until_ready(function(*arguments))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*arguments))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def kernel_record(name, kernel, options, length, repeats, device):
    rng = np.random.default_rng(1)
    q, k, v = (jax.device_put(rng.standard_normal((1, HEADS, length, HEAD_DIM)).astype("float32"), device)
               for _ in range(3))
    attend = attention_function(kernel, options)
    gradient = jax.jit(jax.grad(lambda q, k, v: ops.sum(attend(q, k, v)), argnums=(0, 1, 2)))
    seconds = timed(gradient, (q, k, v), repeats)
    return {"case": name, "kind": "kernel", "length": length, "seconds": seconds, "peak_bytes": peak_bytes(device)}


def family_model(family, length, width):
    stride = sqrt_stride(length)
    common = dict(vocabulary_size=256, num_layers=2, hidden_dim=width, dropout=0.0, seed=0)
    if family == "routing":
        return routing_transformer.RoutingTransformerLM(
            **common, ffn_dim=4 * width, local_heads=2, routing_heads=2, num_clusters=max(length // WINDOW, 1),
            window=min(WINDOW, length), block_size=min(512, length), max_relative_position=min(512, length),
            routing="causal")
    if family == "sparse":
        return sparse_transformer.SparseTransformerLM(**common, num_heads=4, attention_schedule="fixed",
                                                      stride=stride, summary=min(8, stride // 2), max_length=length)
    return combiner.CombinerLM(**common, num_heads=4, ffn_dim=4 * width, variant="axial", segment_length=stride,
                               max_length=length)


def family_record(family, length, width, repeats, device):
    model = family_model(family, length, width)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=LanguageModelLoss(), jit_compile=True)
    ids = np.random.default_rng(2).integers(0, 256, (1, length + 1)).astype("int32")
    x, y = ids[:, :-1], ids[:, 1:]
    seconds = timed(lambda: model.train_on_batch(x, y), (), repeats)
    loss = float(model.train_on_batch(x, y))
    return {"case": family, "kind": "family", "length": length, "seconds": seconds, "tokens_per_s": length / seconds,
            "parameters": model.count_params(), "loss": loss, "peak_bytes": peak_bytes(device)}


def run_cases(lengths, families, width, repeats, budget_s, device):
    """Every (case, length), shortest length first, until the budget is spent."""
    plan = [(length, name) for length in lengths for name in kernel_cases(length)]
    plan += [(length, family) for length in lengths for family in families]
    start, records = time.time(), []
    for length, name in plan:
        kind = "family" if name in families else "kernel"
        if records and time.time() - start > budget_s:  # the first case always runs
            records.append({"case": name, "kind": kind, "length": length, "status": "not run (budget spent)"})
            continue
        try:
            if hasattr(device, "reset_memory_stats"):  # not every backend has it; else the peak so far
                device.reset_memory_stats()
            if kind == "kernel":
                kernel, options = kernel_cases(length)[name]
                record = kernel_record(name, kernel, options, length, repeats, device)
            else:
                record = family_record(name, length, width, repeats, device)
            record["status"] = "ok"
        except Exception as error:  # out of memory, an XLA failure: reported, the next case runs
            record = {"case": name, "kind": kind, "length": length,
                      "status": "failed: " + (str(error).strip().splitlines() or [type(error).__name__])[0][:200]}
        records.append(record)
        print(json.dumps(record), flush=True)
    return records


def report(records, width, device_name, command, date):
    lengths = sorted({r["length"] for r in records})
    dense = {r["length"]: r for r in records if r["case"] == "dense" and r["status"] == "ok"}

    def row_cells(name, text_of):
        """One table row's cells: `text_of(record)` where the case ran, its status where not."""
        cells = []
        for length in lengths:
            r = next((r for r in records if (r["case"], r["length"]) == (name, length)), None)
            cells.append("" if r is None else text_of(r) if r["status"] == "ok" else r["status"])
        return cells

    def kernel_text(r):
        base = dense.get(r["length"])
        ratio = f", {base['seconds'] / r['seconds']:.2f}x dense" if base and r["case"] != "dense" else ""
        memory = f", {r['peak_bytes'] / 2**20:,.0f} MiB" if r.get("peak_bytes") else ""
        return f"{1000 * r['seconds']:,.1f} ms{ratio}{memory}"

    lines = ["# The zoo on an accelerator (Keras' JAX backend, no TensorFlow)", "",
             f"- Device: {device_name}; JAX {jax.__version__}, Keras {keras.__version__}, Python "
             f"{platform.python_version()}.", f"- Run: `{command}`, {date}.",
             f"- Kernels: batch 1, {HEADS} heads of {HEAD_DIM}, forward + backward (jit); dense is "
             "`keras.ops.dot_product_attention` (causal). Families: one `train_on_batch` of 2 layers of "
             f"d={width}, a batch of one window.", "",
             "## Attention kernels, forward + backward", "",
             "| kernel | " + " | ".join(f"{n:,}" for n in lengths) + " |",
             "| --- |" + " ---: |" * len(lengths)]
    for name in dict.fromkeys(r["case"] for r in records if r["kind"] == "kernel"):
        lines.append(f"| {name} | " + " | ".join(row_cells(name, kernel_text)) + " |")
    lines += ["", "## One training step of each family", "",
              "| family | " + " | ".join(f"{n:,}" for n in lengths) + " |",
              "| --- |" + " ---: |" * len(lengths)]
    for name in dict.fromkeys(r["case"] for r in records if r["kind"] == "family"):
        cells = row_cells(name, lambda r: f"{r['tokens_per_s']:,.0f} tokens/s, loss {r['loss']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="8192,16384,32768,65536", help="comma-separated token counts")
    parser.add_argument("--families", default="routing,sparse,combiner", help="comma-separated; '' for none")
    parser.add_argument("--width", type=int, default=256, help="the families' model width (4 heads)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case after the compiling one")
    parser.add_argument("--budget_s", type=float, default=420.0, help="seconds after which no new case starts")
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "device"), help="path stem of .md/.json")
    args = parser.parse_args(argv)
    args.lengths = [int(n) for n in args.lengths.split(",") if n]
    args.families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(args.families) - {"routing", "sparse", "combiner"})
    if unknown or not args.lengths or min(args.lengths) < 64 or args.repeats < 1:
        parser.error(f"--lengths must be integers >= 64, --repeats >= 1, --families of routing, sparse, combiner "
                     f"(got {args.lengths}, {args.repeats}, {args.families})")
    return args


def main(argv=None):
    args = parse_args(argv)
    if keras.backend.backend() != "jax":
        sys.exit(f"error: run with KERAS_BACKEND=jax (Keras' backend is {keras.backend.backend()!r})")
    device = jax.devices()[0]
    device_name = f"{device.platform.upper()} {getattr(device, 'device_kind', '')}".strip()
    command = " ".join(["python -m benchmarks.device_check", *(sys.argv[1:] if argv is None else argv)])
    date = datetime.datetime.now().isoformat(timespec="seconds")
    records = run_cases(args.lengths, args.families, args.width, args.repeats, args.budget_s, device)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    write_atomically(args.output + ".md", report(records, args.width, device_name, command, date))
    write_atomically(args.output + ".json", json.dumps({"device": device_name, "command": command, "date": date,
                                                       "records": records}, indent=1) + "\n")
    print(f"wrote {args.output}.md", flush=True)


if __name__ == "__main__":
    main()
