"""Worker for the PyTorch peer: one forward+backward measurement of lucidrains' `routing-transformer`.

Runs inside the peer's own environment (.venv-torch: torch CPU + routing-transformer), with only the standard
library and torch, and prints one JSON line. Called by `benchmarks/routing.py`:

    .venv-torch/bin/python benchmarks/peers/routing_transformer_torch.py --length=8192 --window=256

The configuration mirrors the zoo side: by default 2 layers, d=512, 8 heads of 64 (4 local + 4 routing), batch
1 (`--depth`, `--dim`, `--heads`, `--local_heads`, `--batch` change them; heads are 64 wide), causal, window =
local window = `--window`, clusters = length / window, feed-forward 4d with GELU, byte vocabulary.
Memory is the peak RSS during the timed steps minus the RSS before the first step (model and inputs made).
"""

import argparse
import json
import statistics
import time


def peak_rss_bytes():
    """VmHWM: the peak RSS since the last clear_refs reset (ru_maxrss keeps the pre-exec image's peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, required=True)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--local_heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from routing_transformer import RoutingTransformerLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = RoutingTransformerLM(num_tokens=256, dim=args.dim, depth=args.depth, max_seq_len=args.length,
                                 heads=args.heads, dim_head=64, window_size=args.window,
                                 local_attn_window_size=args.window, n_local_attn_heads=args.local_heads, causal=True,
                                 ff_mult=4)
    model.train()
    tokens = torch.randint(0, 256, (args.batch, args.length))

    def step():
        logits, aux_loss = model(tokens)
        loss = F.cross_entropy(logits.transpose(1, 2), tokens) + aux_loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline = peak_rss_bytes()
    step()  # warm-up: k-means initialisation on the first batch
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = peak_rss_bytes()
    print("BENCHMARK_RESULT " + json.dumps({
        "time_ms": 1000 * statistics.median(times), "times_ms": [1000 * t for t in times],
        "memory_mib": (peak - baseline) / 2**20, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
