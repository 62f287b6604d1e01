"""Generation speed: cached incremental decoding against re-running the full model, at long prefixes.

    python -m benchmarks.decoding                                   # local, strided, fixed; 1k, 4k, 16k
    python -m benchmarks.decoding --kernels=dense,local --prefixes=1024,4096 --new_tokens=16

Each kernel is a 2-layer model (d=512, 8 heads of 64, FFN 2048, byte vocabulary, float32, batch 1):
  - cached: `apps.sample.generate` (one graph: prefill, then a tf.while_loop of cached steps, greedy). The time
    per new token is (time with --new_tokens new tokens - time with 0) / new_tokens, so the prompt's pass is
    not counted;
  - full: the sampler without caches runs the model over the whole prefix for every new token; its time per
    token is one forward pass (tf.function) over prefix + 1 tokens.
Both are the fastest of --repeats calls (the least disturbed by other processes; the cached time is a
difference of two calls, so noise matters), in the same process, after a warm-up call that traces. The ratio
full / cached is the speed-up of caching; the target is >= 20x at a 16k prefix for local, strided and fixed.
Output: Markdown on stdout and in benchmarks/results/decoding.md, numbers in decoding.json.
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from benchmarks.harness import RESULTS_DIR, machine, write_atomically  # noqa: E402

DIM, HEADS, LAYERS, FFN, VOCAB = 512, 8, 2, 2048, 256
TARGET, TARGET_PREFIX, TARGET_KERNELS = 20.0, 16384, ("local", "strided", "fixed")
DENSE_MAX_PREFIX = 4096  # dense attention over 16k positions needs ~8 GiB per [heads, l, l] tensor


def attention_layer(name):
    """The attention of each benchmarked kernel (its paper's setting at these lengths)."""
    from common.layers import SelfAttention

    if name == "dense":
        return SelfAttention(HEADS, DIM // HEADS)
    if name == "local":  # the Routing Transformer's local heads
        return SelfAttention(HEADS, DIM // HEADS, kernel="local", kernel_options={"block_size": 256})
    if name in ("strided", "fixed"):
        from sparse_transformer.attention import SparseAttention

        if name == "strided":  # half the heads local, half strided, stride ~ sqrt(16k)
            return SparseAttention(HEADS, DIM // HEADS, pattern="local|strided", stride=128)
        return SparseAttention(HEADS, DIM // HEADS, pattern="fixed", stride=128, summary=8)
    raise ValueError(f"unknown kernel {name!r}; choose from dense, local, strided, fixed.")


def build_model(name, max_length):
    from common.models import DecoderLM

    model = DecoderLM(VOCAB, LAYERS, DIM, attention_layer(name), FFN, position_axes=(max_length,), seed=0)
    model(tf.zeros([1, 8], tf.int32))
    return model


def fastest_seconds(fn, repeats):
    fn()  # traces
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(name, prefix, new_tokens, repeats):
    """Seconds per new token, cached and by a full pass, for one kernel and prefix length."""
    from apps import sample

    model = build_model(name, prefix + new_tokens + 1)
    prompt = tf.random.stateless_uniform([1, prefix], seed=[1, 2], maxval=VOCAB, dtype=tf.int32)
    generate = tf.function(lambda count: sample.generate(model, prompt, count, 0.0, 0, 1.0, 0, -1))
    forward = tf.function(lambda ids: model(ids, training=False))
    full_ids = tf.concat([prompt, prompt[:, :1]], axis=1)

    generate(tf.constant(1))  # one trace serves every count
    with_new = fastest_seconds(lambda: generate(tf.constant(new_tokens)).numpy(), repeats)
    prompt_only = fastest_seconds(lambda: generate(tf.constant(0)).numpy(), repeats)
    full = fastest_seconds(lambda: forward(full_ids).numpy(), repeats)
    if with_new <= prompt_only:
        raise RuntimeError(f"{name} at {prefix}: generating {new_tokens} tokens was not slower than the prompt "
                           f"alone ({with_new:.3f} vs {prompt_only:.3f} s); the machine is too busy to measure, "
                           f"or raise --new_tokens.")
    cached = (with_new - prompt_only) / new_tokens
    return {"kernel": name, "prefix": prefix, "cached_s": cached, "full_s": full, "speedup": full / cached}


def report(records, args, wall_s):
    rows = ["| kernel | prefix | cached ms/token | cached tokens/s | full pass ms/token | full tokens/s | "
            "full / cached |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        rows.append(f"| {r['kernel']} | {r['prefix']:,} | {1e3 * r['cached_s']:.1f} | {1 / r['cached_s']:.1f} | "
                    f"{1e3 * r['full_s']:.0f} | {1 / r['full_s']:.2f} | {r['speedup']:.1f}x |")
    checks = []
    for r in records:
        if r["kernel"] in TARGET_KERNELS and r["prefix"] == TARGET_PREFIX:
            verdict = "PASS" if r["speedup"] >= TARGET else "FAIL"
            checks.append(f"- {r['kernel']} at a {TARGET_PREFIX:,}-token prefix: cached decoding "
                          f"{r['speedup']:.1f}x faster than the full pass (target >= {TARGET:.0f}x): {verdict}")
    growth = []
    for name in dict.fromkeys(r["kernel"] for r in records):
        own = sorted((r for r in records if r["kernel"] == name), key=lambda r: r["prefix"])
        if len(own) > 1:
            growth.append(f"- {name}: cached time per token at {own[-1]['prefix']:,} / at {own[0]['prefix']:,} "
                          f"tokens of prefix = {own[-1]['cached_s'] / own[0]['cached_s']:.2f}")
    return "\n".join([
        "# Generation speed: cached decoding vs re-running the full model", "",
        f"Machine: {machine()}.", f"Command: `{command(args)}` ({wall_s / 60:.1f} min).", "",
        f"Model: {LAYERS} layers, d={DIM}, {HEADS} heads of {DIM // HEADS}, FFN {FFN}, vocabulary {VOCAB}, "
        "float32, batch 1, greedy; local = blocks of 256 with one block of look-back; strided = "
        "`local|strided` (half the heads each), stride 128; fixed = `fixed`, stride 128, summary 8.", "",
        *rows, "", "Targets:", *checks, "", "Growth of the cached step with the prefix:", *growth, ""])


def command(args):
    """The command line that reproduces this run."""
    return (f"python -m benchmarks.decoding --kernels={args.kernels} --prefixes={args.prefixes} "
            f"--new_tokens={args.new_tokens} --repeats={args.repeats}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", default="local,strided,fixed")
    parser.add_argument("--prefixes", default="1024,4096,16384")
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "decoding"))
    args = parser.parse_args()
    start = time.perf_counter()
    records = []
    for name in args.kernels.split(","):
        attention_layer(name)  # an unknown kernel fails before any measurement
        for prefix in (int(p) for p in args.prefixes.split(",")):
            if name == "dense" and prefix > DENSE_MAX_PREFIX:
                continue
            records.append(measure(name, prefix, args.new_tokens, args.repeats))
            print(json.dumps(records[-1]), flush=True)
    wall_s = time.perf_counter() - start
    text = report(records, args, wall_s)
    print(text)
    raw = {"machine": machine(), "command": command(args), "wall_s": wall_s, "records": records}
    write_atomically(args.output + ".md", text)
    write_atomically(args.output + ".json", json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    main()
