"""Pictures of attention: the effective attention matrix of every variant, and the clusters of a trained routing
layer, as PNGs.

    python -m benchmarks.attention_maps                          # trains a tiny Routing Transformer first (~1 min)
    python -m benchmarks.attention_maps --model_dir=runs/quickstart   # the routing layer of a trained model
    python -m benchmarks.attention_maps --variants=local,sparse_fixed --length=128

Variants: every kernel is linear in v, so the kernel applied to v = eye(length) is its effective attention
matrix (DESIGN.md, the kernel contract): row i holds the weight query i gives each key. Each variant runs at
batch 1 with --heads heads and random q and k (--seed); block sizes follow the papers' l ~ sqrt(length) (see
`sizes_for`). Drawn as query x key maps: white = exactly zero (never attended), colour = weight on a log scale.
`<variant>.png` has one panel per distinct head pattern (heads with the same non-zero entries share one), and
`overview.png` one panel per variant (the mean over its heads, i.e. every key some head sees; head 0 for routing,
whose heads have clusters of their own). The routing variants use the centroids of the routing layer below with
random queries.

Routing: the routing layer (default: the last one) of a Routing Transformer reads a held-out text (the model's
evaluation split). Each routing head's queries, normalised as the k-means normalises them, go to their nearest
centroid: `routing_clusters.png` colours the text's bytes by cluster, `routing_attention.png` is the routing
heads' effective attention on that text (the clusters as attention) and `routing_cluster_sizes.png` counts the
tokens per cluster next to each cluster's share in training (the k-means' EMA counts). Without --model_dir a tiny
Routing Transformer is trained first on the embedded local corpus (`TINY_ROUTING_MODEL`, in a temporary folder;
nothing is downloaded).

Output: PNGs in --output_dir (default benchmarks/results/attention_maps/).
"""

import argparse
import io
import math
import os
import sys
import tempfile
import time
from typing import Callable, NamedTuple, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from keras import ops  # noqa: E402
from matplotlib import colors, patches, pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.harness import RESULTS_DIR  # noqa: E402
from combiner.attention import combiner_attention  # noqa: E402
from apps import checkpoints, data, errors, train  # noqa: E402
from common.attention import causal_mask, checks, dense_attention, local_attention, local_mask  # noqa: E402
from common.layers import layer_norm  # noqa: E402
from routing_transformer.attention import routing_attention  # noqa: E402
from sparse_transformer import patterns  # noqa: E402
from sparse_transformer.attention import sparse_attention  # noqa: E402

OUTPUT_DIR = os.path.join(RESULTS_DIR, "attention_maps")
MIN_LENGTH = 16
MIN_WEIGHT = 1e-4  # the bottom of the colour scale; smaller non-zero weights take its colour
DPI = 80
TEXT_COLUMNS = 32  # bytes per row of the cluster picture

# The routing model trained when no --model_dir is given: the trainer's tiny local-text run (about a minute on
# 2 CPU cores), routing heads in its second layer.
TINY_ROUTING_MODEL = {
    "Experiment.model": "@routing_transformer.RoutingTransformerLM",
    "Experiment.sequence_length": 128,
    "Experiment.batch_size": 8,
    "Experiment.log_every": 100,
    "RoutingTransformerLM.num_layers": 2,
    "RoutingTransformerLM.hidden_dim": 64,
    "RoutingTransformerLM.ffn_dim": 128,
    "RoutingTransformerLM.local_heads": 2,
    "RoutingTransformerLM.routing_heads": 2,
    "RoutingTransformerLM.skip_first": 1,
    "RoutingTransformerLM.num_clusters": 4,
    "RoutingTransformerLM.window": 32,
    "RoutingTransformerLM.block_size": 32,
    "RoutingTransformerLM.max_relative_position": 32,
    "RoutingTransformerLM.routing": "'causal'",
    "RoutingTransformerLM.dropout": 0.0,
}
TINY_TRAIN_STEPS = 1000


class Sizes(NamedTuple):
    """Block sizes of the variants at one length."""

    stride: int  # Sparse Transformer's l and Combiner's segment length: about sqrt(length)
    summary: int  # Sparse Transformer's c
    block: int  # local attention's block (one block of look-back)
    clusters: int  # routing clusters when the centroids are random


def sizes_for(length):
    """l = the power of two nearest to sqrt(length) (8 at 64), c = l / 4, local blocks of 2l, 4 clusters."""
    stride = 2 ** round(math.log2(math.sqrt(length)))
    return Sizes(stride=stride, summary=max(1, stride // 4), block=2 * stride, clusters=4)


class Variant(NamedTuple):
    """One drawn attention variant.

    title: a format string over the `Sizes` fields.
    attend: (q, k, v, sizes, centroids) -> out, the kernel call.
    reference: (length, num_heads, sizes) -> bool [heads, length, length], the exact non-zero entries, or None.
    rows_sum_to_one: every row's weights sum to 1 (balanced routing: 1, or 0 for a token in no cluster).
    routed: takes centroids [heads, clusters, key_dim].
    """

    title: str
    attend: Callable
    reference: Optional[Callable]
    rows_sum_to_one: bool = True
    routed: bool = False


def _causal(length, num_heads, sizes):
    return np.broadcast_to(np.asarray(causal_mask(length)), (num_heads, length, length))


def _sparse(title, pattern, num_summary_patterns=1):
    def options(sizes):
        return dict(pattern=pattern, stride=sizes.stride, summary=sizes.summary,
                    num_summary_patterns=num_summary_patterns)

    return Variant(title, lambda q, k, v, sizes, _: sparse_attention(q, k, v, **options(sizes)),
                   lambda length, heads, sizes: np.asarray(patterns.attention_mask(length, num_heads=heads,
                                                                                   **options(sizes))))


def _routing(routing):
    def attend(q, k, v, sizes, centroids):
        window = -(-q.shape[2] // centroids.shape[1])  # clusters x window covers the sequence
        return routing_attention(q, None, v, centroids=centroids, window=window, routing=routing)[0]

    return Variant(f"Routing, {routing}", attend, None, rows_sum_to_one=routing == "causal", routed=True)


def _combiner(variant, title):
    # Combiner reaches every earlier key, directly or through a region: the whole causal prefix is non-zero.
    return Variant(title, lambda q, k, v, sizes, _: combiner_attention(q, k, v, variant=variant,
                                                                       segment_length=sizes.stride), _causal)


VARIANTS = {
    "dense": Variant("Dense (causal)", lambda q, k, v, sizes, _: dense_attention(q, k, v), _causal),
    "local": Variant("Local (blocks of {block}, 1 back)",
                     lambda q, k, v, sizes, _: local_attention(q, k, v, block_size=sizes.block, look_back=1),
                     lambda length, heads, sizes: np.broadcast_to(np.asarray(local_mask(length, sizes.block)),
                                                                  (heads, length, length))),
    "sparse_strided": _sparse("Strided local|strided (l={stride})", "local|strided"),
    "sparse_strided_merged": _sparse("Strided local+strided (l={stride})", "local+strided"),
    "sparse_fixed": _sparse("Fixed (l={stride}, c={summary})", "fixed"),
    "sparse_fixed_2": _sparse("Fixed, 2 summary patterns", "fixed", num_summary_patterns=2),
    "sparse_block": _sparse("Block (l={stride})", "block"),
    "routing_balanced": _routing("balanced"),
    "routing_causal": _routing("causal"),
    "combiner_fixed": _combiner("fixed", "Combiner fixed (segments of {stride})"),
    "combiner_logsparse": _combiner("logsparse", "Combiner logsparse"),
    "combiner_axial": _combiner("axial", "Combiner axial (rows of {stride})"),
    "combiner_mixture": _combiner("mixture", "Combiner mixture (rows of {stride})"),
}


def get_variant(name):
    if name not in VARIANTS:
        raise ValueError(f"unknown attention variant {name!r}; choose from {', '.join(VARIANTS)}.")
    return VARIANTS[name]


def variant_title(name, length):
    return get_variant(name).title.format(**sizes_for(length)._asdict())


def _check_length(length):
    checks.check_positive_int("length", length, minimum=MIN_LENGTH)


def effective_attention(name, length=64, num_heads=4, key_dim=16, seed=0, centroids=None):
    """The effective attention matrix [heads, length, length] of variant `name` (float32 numpy): the kernel
    applied to v = eye(length) with random q and k drawn from `seed`, batch 1.

    Routing variants use `centroids` [heads, clusters, key_dim] (which then set the heads and key_dim), by
    default random layer-normalised ones, and a window of ceil(length / clusters) tokens.
    """
    variant = get_variant(name)
    _check_length(length)
    checks.check_positive_int("num_heads", num_heads)
    checks.check_positive_int("key_dim", key_dim)
    rng = np.random.default_rng(seed)
    if variant.routed:
        if centroids is None:
            shape = (num_heads, sizes_for(length).clusters, key_dim)
            centroids = layer_norm(ops.convert_to_tensor(rng.standard_normal(shape, dtype=np.float32)))
        elif len(centroids.shape) != 3:
            raise ValueError(f"centroids must be [heads, clusters, key_dim]; got shape {tuple(centroids.shape)}.")
        num_heads, _, key_dim = centroids.shape
    q, k = (ops.convert_to_tensor(rng.standard_normal((1, num_heads, length, key_dim), dtype=np.float32))
            for _ in range(2))
    v = ops.broadcast_to(ops.eye(length), (1, num_heads, length, length))
    out = variant.attend(q, k, v, sizes_for(length), centroids)
    return np.asarray(ops.convert_to_numpy(out))[0]


def reference_mask(name, length, num_heads):
    """The exact non-zero entries bool [heads, length, length] of a variant, or None (routing: data-dependent)."""
    variant = get_variant(name)
    if variant.reference is None:
        return None
    return np.asarray(variant.reference(length, num_heads, sizes_for(length)), dtype=bool)


def head_groups(matrix):
    """Heads [heads, length, length] grouped by their non-zero entries, groups in order of their first head."""
    groups = {}
    for head, support in enumerate(matrix != 0):
        groups.setdefault(support.tobytes(), []).append(head)
    return list(groups.values())


def _heads_label(heads, prefix="head"):
    return f"{prefix} {heads[0]}" if len(heads) == 1 else f"{prefix}s " + ", ".join(map(str, heads))


def _draw_weights(ax, matrix, title):
    """One query x key map: exact zeros white, weights coloured on a log scale; returns the image."""
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_equal(matrix, 0.0), cmap=cmap, interpolation="nearest",
                      norm=colors.LogNorm(vmin=MIN_WEIGHT, vmax=1.0))
    ticks = np.arange(0, matrix.shape[0], max(1, matrix.shape[0] // 4))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("key", fontsize=8)
    ax.set_ylabel("query", fontsize=8)
    ax.set_title(title, fontsize=8)
    return image


def _save(fig, path):
    """Writes the figure as a 256-colour PNG (less than half the size of matplotlib's RGBA one, same look)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI)
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def _draw_panels(panels, title, path, columns=4, panel_inches=2.4):
    """panels: [(matrix, panel title)] in a grid, one shared log colour bar; returns path."""
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(max(panel_inches * columns + 0.9, 5.0),
                                                     panel_inches * rows + 0.5), squeeze=False, layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (matrix, panel_title) in zip(axes.flat, panels):
        image = _draw_weights(ax, matrix, panel_title)
    fig.colorbar(image, ax=axes, shrink=0.8, label="weight (white: 0)")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def draw_variant(name, matrix, path):
    """`<variant>.png`: one panel per distinct head pattern of an effective matrix [heads, length, length]."""
    panels = [(matrix[heads[0]], _heads_label(heads)) for heads in head_groups(matrix)]
    return _draw_panels(panels, f"{variant_title(name, matrix.shape[-1])}: effective attention", path,
                        panel_inches=3.0)


def draw_overview(matrices, path):
    """`overview.png`, one panel per variant: the mean over heads (every key some head sees), or head 0 for
    routing, whose heads have clusters of their own."""
    panels = [(matrix[0], variant_title(name, matrix.shape[-1]) + ", head 0") if get_variant(name).routed else
              (matrix.mean(axis=0), variant_title(name, matrix.shape[-1])) for name, matrix in matrices.items()]
    return _draw_panels(panels, "Effective attention of each variant (mean over heads; white: never attended)", path)


# --- routing -------------------------------------------------------------------------------------------------


def routing_maps(model, token_ids, layer_index=-1):
    """The clusters and the effective attention of one routing layer's routing heads on a text.

    Args:
      model: a Routing Transformer (`RoutingTransformerLM`).
      token_ids: the text's ids, a sequence of length >= the layer's window.
      layer_index: which of `model.routing_layers()`.

    Returns a dict of numpy arrays:
      assignment: int [heads, length], each position's cluster: the nearest centroid of its normalised query,
        as the k-means assigns it.
      attention: float [heads, length, length], `routing_attention` of those queries applied to v = eye.
      counts: int [heads, clusters], tokens of the text per cluster.
      training_share: float [heads, clusters], each cluster's share of the tokens in training (EMA counts; 0
        for an untrained layer).
      and routing ("balanced" or "causal"), window, layer (the layer's name).
    """
    layers = model.routing_layers() if hasattr(model, "routing_layers") else []
    if not layers:
        raise ValueError(f"{type(model).__name__} has no routing heads; give a Routing Transformer with "
                         f"routing_heads > 0 in some layer.")
    if not -len(layers) <= layer_index < len(layers):
        raise ValueError(f"routing layer {layer_index} does not exist; the model has {len(layers)} routing layers.")
    layer = layers[layer_index]
    if len(token_ids) < layer.window:
        raise ValueError(f"the text has {len(token_ids)} tokens, fewer than the routing window {layer.window} of "
                         f"{layer.name}; give a longer text.")
    ids = ops.convert_to_tensor(np.asarray(token_ids, dtype="int32")[None])
    x = model.block_inputs(model.embed(ids))
    for block in model.blocks:
        if block.attention is layer:
            break
        x = block(x, training=False)
    x = block._branch_input(x, block.attention_norm)  # the attention's input, as DecoderBlock feeds it
    heads, length = layer.routing_heads, ids.shape[1]
    q = layer.project(x, layer.query)[:, :heads]  # routing heads come first
    k = None if layer.share_qk else layer.project(x, layer.key)[:, :heads]
    v = ops.broadcast_to(ops.eye(length, dtype=q.dtype), (1, heads, length, length))
    # Relative values add a term that does not depend on v: left out, so that the output is the weights.
    out, aux = routing_attention(q, k, v, centroids=layer.kmeans.centroids, window=layer.window,
                                 causal=layer.causal, share_qk=layer.share_qk, routing=layer.routing,
                                 relative_keys=layer.routing_relative_keys)
    assignment = np.asarray(ops.convert_to_numpy(aux["query_assignment"]))[0]
    clusters = layer.num_clusters
    ema_count = np.asarray(ops.convert_to_numpy(layer.kmeans.ema_count), dtype=np.float64)
    totals = ema_count.sum(axis=-1, keepdims=True)
    return {
        "assignment": assignment,
        "attention": np.asarray(ops.convert_to_numpy(ops.cast(out, "float32")))[0],
        "counts": np.stack([np.bincount(a, minlength=clusters) for a in assignment]),
        "training_share": np.divide(ema_count, totals, out=np.zeros_like(ema_count), where=totals > 0),
        "routing": layer.routing, "window": layer.window, "layer": layer.name,
    }


def _palette(clusters):
    return plt.get_cmap("tab10" if clusters <= 10 else "tab20")(np.arange(clusters) % 20)


def _glyph(byte):
    return {10: "\u21b5", 32: "\u00b7"}.get(byte, chr(byte) if 32 < byte < 127 else "?")


def draw_clusters(maps, text, path):
    """`routing_clusters.png`: the text's bytes in rows of TEXT_COLUMNS, coloured by cluster, one panel per head."""
    assignment = maps["assignment"]
    heads, length = assignment.shape
    clusters = maps["counts"].shape[1]
    palette = _palette(clusters)
    rows = -(-length // TEXT_COLUMNS)
    fig, axes = plt.subplots(heads, 1, figsize=(TEXT_COLUMNS * 0.25 + 0.4, heads * (rows * 0.3 + 0.5) + 0.6),
                             squeeze=False, layout="constrained")
    for head, ax in enumerate(axes[:, 0]):
        grid = np.full(rows * TEXT_COLUMNS, -1)
        grid[:length] = assignment[head]
        cmap = colors.ListedColormap(palette).with_extremes(bad="white")
        ax.imshow(np.ma.masked_less(grid.reshape(rows, TEXT_COLUMNS), 0), cmap=cmap, vmin=-0.5,
                  vmax=clusters - 0.5, aspect="auto", interpolation="nearest")
        for position, byte in enumerate(text[:length]):
            ax.text(position % TEXT_COLUMNS, position // TEXT_COLUMNS, _glyph(byte), ha="center", va="center",
                    fontsize=8, family="monospace")
        ax.set_xticks(np.arange(0, TEXT_COLUMNS, 8))
        ax.set_yticks(np.arange(rows), [str(r * TEXT_COLUMNS) for r in range(rows)])
        ax.tick_params(labelsize=7)
        ax.set_title(f"routing head {head}", fontsize=8)
    fig.legend([patches.Patch(color=palette[c]) for c in range(clusters)], [f"cluster {c}" for c in range(clusters)],
               loc="outside lower center", ncol=min(clusters, 8), fontsize=7)
    fig.suptitle(f"Nearest centroid of each position's query ({maps['layer']}, {maps['routing']} routing); "
                 "\u21b5 newline, \u00b7 space", fontsize=9)
    return _save(fig, path)


def draw_cluster_sizes(maps, path):
    """`routing_cluster_sizes.png`: tokens of the text per cluster, and each cluster's share in training."""
    counts, share = maps["counts"], maps["training_share"]
    heads, clusters = counts.shape
    length = counts.sum(axis=1)[0]
    palette = _palette(clusters)
    fig, axes = plt.subplots(1, heads, figsize=(2.2 * heads + 0.4, 2.4), squeeze=False, layout="constrained")
    for head, ax in enumerate(axes[0]):
        bars = ax.bar(np.arange(clusters), counts[head], color=palette)
        marks = ax.scatter(np.arange(clusters), share[head] * length, marker="_", s=200, color="black")
        ax.set_xticks(np.arange(clusters))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("cluster", fontsize=8)
        ax.set_ylabel("tokens", fontsize=8)
        ax.set_title(f"routing head {head}", fontsize=8)
    fig.legend([bars, marks], ["tokens of this text", "share in training x text length"], loc="outside lower center",
               ncol=2, fontsize=7)
    fig.suptitle(f"Cluster sizes ({maps['layer']}, {length} tokens)", fontsize=9)
    return _save(fig, path)


def draw_routing(maps, text, output_dir):
    """The three routing pictures of `routing_maps(...)` on `text` (bytes); returns their paths."""
    panels = []
    for head, (matrix, assignment) in enumerate(zip(maps["attention"], maps["assignment"])):
        order = np.argsort(assignment, kind="stable")  # by cluster, then position: the clusters become blocks
        panels += [(matrix, f"routing head {head}"), (matrix[np.ix_(order, order)], f"head {head}, sorted by cluster")]
    attention = _draw_panels(panels, f"Routing heads on a held-out text: clusters as attention ({maps['layer']}, "
                                     f"{maps['routing']} routing, window {maps['window']})",
                             os.path.join(output_dir, "routing_attention.png"), panel_inches=3.0)
    return [draw_clusters(maps, text, os.path.join(output_dir, "routing_clusters.png")), attention,
            draw_cluster_sizes(maps, os.path.join(output_dir, "routing_cluster_sizes.png"))]


def held_out_text(experiment, length):
    """`length` bytes of the model's evaluation split, from the first line starting with `def ` if there is one."""
    tokenizer = data.dataset_info(experiment.dataset, tokenizer=experiment.data_options.get("tokenizer")).tokenizer
    if tokenizer != "bytes":
        raise ValueError(f"the routing pictures need a byte-level text model; {experiment.dataset!r} uses "
                         f"{tokenizer!r} tokens.")
    documents = data.raw_split(experiment.dataset, experiment.eval_split, data_dir=experiment.data_dir,
                               local_text_dir=experiment.data_options.get("local_text_dir"),
                               manual_dir=experiment.data_options.get("manual_dir"))
    text = b""
    for document in documents.as_numpy_iterator():
        text += bytes(document)
        if len(text) >= 64 * length:
            break
    if len(text) < length:
        raise ValueError(f"the {experiment.eval_split} split has {len(text)} bytes, fewer than --text_length "
                         f"{length}.")
    start = text.find(b"\ndef ") + 1
    if start + length > len(text):
        start = 0
    return text[start:start + length]


def train_tiny_routing_model(model_dir, train_steps=TINY_TRAIN_STEPS, bindings=()):
    """Trains `TINY_ROUTING_MODEL` on the local corpus into model_dir; `bindings`: more gin bindings (text)."""
    settings = dict(TINY_ROUTING_MODEL, TRAIN_STEPS=train_steps)
    settings.update({"Experiment.checkpoint_every": train_steps,
                     "WarmupCosine.warmup_steps": min(100, train_steps // 4)})
    params = [f"{key} = {value}" for key, value in settings.items()] + list(bindings)
    train.run(["train/local_text.gin"], params, model_dir, "train")


def draw_model_routing(model, experiment, output_dir, text_length, routing_layer):
    """The routing pictures of a trained model on its held-out text; returns (paths, the layer's centroids)."""
    if text_length > experiment.sequence_length:
        raise ValueError(f"--text_length {text_length} exceeds the model's sequence length "
                         f"{experiment.sequence_length}.")
    text = held_out_text(experiment, text_length)
    maps = routing_maps(model, list(text), routing_layer)
    return draw_routing(maps, text, output_dir), model.routing_layers()[routing_layer].kmeans.centroids


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=OUTPUT_DIR)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--length", type=int, default=64, help="positions of the variant maps")
    parser.add_argument("--heads", type=int, default=4, help="heads of the variant maps (even: some split heads)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random q and k")
    parser.add_argument("--model_dir", default=None,
                        help="a Routing Transformer trained by `python -m apps.train`; default: train a tiny one")
    parser.add_argument("--train_steps", type=int, default=TINY_TRAIN_STEPS, help="steps of the tiny model")
    parser.add_argument("--data_dir", default=None, help="TFDS data directory of the tiny model's corpus")
    parser.add_argument("--text_length", type=int, default=128, help="bytes of held-out text for the clusters")
    parser.add_argument("--routing_layer", type=int, default=-1, help="which routing layer (index among them)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        variants = [name.strip() for name in args.variants.split(",") if name.strip()]
        if not variants:
            raise ValueError(f"--variants is empty; choose from {', '.join(VARIANTS)}.")
        for name in variants:
            get_variant(name)
        checks.check_positive_int("--train_steps", args.train_steps, minimum=4)
        # The variants without centroids first: bad options fail before any training.
        matrices = {name: effective_attention(name, args.length, args.heads, seed=args.seed)
                    for name in variants if not get_variant(name).routed}
        with tempfile.TemporaryDirectory(prefix="attention_maps_") as scratch:
            model_dir = args.model_dir
            if model_dir is None:
                model_dir = os.path.join(scratch, "model")
                print(f"training a tiny Routing Transformer ({args.train_steps} steps) in {model_dir}", flush=True)
                train_tiny_routing_model(model_dir, args.train_steps,
                                         [f"Experiment.data_dir = {args.data_dir!r}"] if args.data_dir else [])
            model, experiment = checkpoints.load_trained_model(model_dir)
        paths, centroids = draw_model_routing(model, experiment, args.output_dir, args.text_length,
                                              args.routing_layer)
        for name in variants:
            if get_variant(name).routed:
                matrices[name] = effective_attention(name, args.length, seed=args.seed, centroids=centroids)
            paths.append(draw_variant(name, matrices[name], os.path.join(args.output_dir, f"{name}.png")))
        paths.append(draw_overview({name: matrices[name] for name in variants},
                                   os.path.join(args.output_dir, "overview.png")))
    except (errors.UserError, ValueError) as error:
        sys.exit(f"error: {error}")
    total = sum(os.path.getsize(p) for p in paths)
    print("\n".join(paths))
    print(f"{len(paths)} PNGs, {total / 1024:.0f} KiB, in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
