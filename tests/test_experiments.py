"""The papers' experiments as gin files (gin_configs/<family>/*.gin; files starting with '_' are fragments).

- Every experiment parses and builds its model at full size (deferred variables: no weights are allocated, see
  `apps.experiment_info`), with the dataset, model family and sequence length it should have.
- Parameter counts at full size are within 5% of the papers' figures where the papers give one: Sparse
  Transformer 95M (enwik8), 59M (CIFAR-10), 152M (ImageNet 64). The Routing Transformer and Combiner papers give
  none in the reference notes (the Routing README's "RT-base 200M" does not match its own PG-19 hparams, which
  give ~450M with a 32K vocabulary; the zoo counts 453.8M), so only their counts are recorded in the README.
- The deferred count equals `count_params()` of a model built for real (small config).
- Shrunk from the command line (gin bindings after the file), every experiment trains three steps on
  `tfds.testing.mock_data` (pg19, cifar10, downsampled_imagenet, wiki40b) or on tiny fake archives (enwik8,
  wikitext103, this project's manual builders, which mock_data does not serve).
"""

import glob
import math
import os
import re

import gin
import numpy as np
import pytest
import tensorflow_datasets as tfds

from apps import experiment_info, gin_experiment, steps
from tests.apps.data import fakes
from tests.apps.train_helpers import REPO, assert_one_line_error, clean_gin, run_module  # noqa: F401

pytestmark = pytest.mark.usefixtures("clean_gin")

FAMILIES = {"routing_transformer": "RoutingTransformerLM", "sparse_transformer": "SparseTransformerLM",
            "combiner": "CombinerLM"}
EXPERIMENTS = sorted(
    os.path.relpath(path, gin_experiment.GIN_CONFIGS)
    for family in FAMILIES for path in glob.glob(os.path.join(gin_experiment.GIN_CONFIGS, family, "*.gin"))
    if not os.path.basename(path).startswith("_")
    and os.path.basename(path) not in ("local_text.gin", "cpu_small.gin"))

# Parameter counts the papers give (reference notes), and the tolerance the issue asks for.
PAPER_PARAMETERS = {"sparse_transformer/enwik8.gin": 95e6, "sparse_transformer/cifar10.gin": 59e6,
                    "sparse_transformer/imagenet64.gin": 152e6}
TOLERANCE = 0.05

DATASET_OF = {"enwik8": "enwik8", "wikitext103": "wikitext103", "pg19": "pg19", "cifar10": "cifar10",
              "imagenet64": "downsampled_imagenet/64x64", "wiki40b": "wiki40b/en"}
TEXT_LENGTH = 256  # of the shrunk text experiments; images keep H*W*C


def _expected_dataset(path):
    return DATASET_OF[re.match(r"[a-z0-9]+?(?=_|\.gin)", os.path.basename(path)).group(0)]


def test_the_issue_experiments_exist():
    expected = {
        "routing_transformer": {"enwik8_8k", "enwik8_12k", "wikitext103_4k", "pg19_8k", "imagenet64", "cifar10",
                                "enwik8_local_8k", "wikitext103_local_4k", "pg19_local_8k", "wikitext103_hash_4k",
                                "imagenet64_cluster_strided"},
        "sparse_transformer": {"enwik8", "cifar10", "imagenet64"},
        "combiner": {f"{data}_6l_{variant}" for data in ("cifar10", "imagenet64")
                     for variant in ("fixed", "logsparse", "axial", "mixture")}
        | {"cifar10_axial", "imagenet64_axial", "cifar10_12l_mixture", "imagenet64_12l_mixture",
           "wiki40b_2k_fixed", "wiki40b_2k_axial", "wiki40b_8k_fixed", "wiki40b_8k_axial"},
    }
    found = {family: {os.path.splitext(os.path.basename(p))[0] for p in EXPERIMENTS if p.startswith(family)}
             for family in FAMILIES}
    assert found == expected


def _describe(path, params=()):
    return experiment_info.describe(gin_experiment.parse_config([path], list(params)))


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERIMENTS)
def test_experiment_parses_and_builds_at_full_size(path):
    experiment = gin_experiment.parse_config([path], [])
    info = experiment_info.describe(experiment)
    family = path.split(os.sep)[0]
    assert info.model == FAMILIES[family]
    assert info.dataset == _expected_dataset(path)
    named = re.search(r"_(\d+)k", path)  # enwik8_12k, wiki40b_8k_fixed, ...
    expected = {"cifar10": 3072, "downsampled_imagenet/64x64": 12288}.get(
        info.dataset, int(named.group(1)) * 1024 if named else 12288)  # sparse_transformer/enwik8: 12,288
    assert info.sequence_length == expected
    assert info.parameters > 1e6 and info.weight_bytes == 4 * info.parameters
    assert experiment.train_steps > 1000  # a real run, not a smoke test
    if path in PAPER_PARAMETERS:
        paper = PAPER_PARAMETERS[path]
        assert abs(info.parameters - paper) <= TOLERANCE * paper, (path, info.parameters, paper)


def test_ablation_variants_share_one_architecture():
    """Table 1 of the Combiner paper compares variants at equal size: the four 6-layer models differ only in
    attention (axial's row projection adds parameters, so counts differ; the blocks do not)."""
    infos = {v: _describe(f"combiner/cifar10_6l_{v}.gin") for v in ("fixed", "logsparse", "axial", "mixture")}
    assert {(i.num_layers, i.hidden_dim, i.sequence_length, i.batch_size) for i in infos.values()} == {
        (6, 512, 3072, 32)}
    assert infos["fixed"].parameters == infos["logsparse"].parameters == infos["mixture"].parameters
    assert infos["axial"].parameters > infos["fixed"].parameters  # the `proj` row summary's two D x D maps


# Options of the original hparams the experiments once lacked (target dropout, image embeddings, half-size
# queries and keys), with what the released code sets next to them.
BOUND_OPTIONS = {
    "routing_transformer/wikitext103_4k.gin": dict(target_dropout=0.25, embedding_dropout=0.4, input_dropout=None,
                                                   dropout=0.1, project_embeddings=True),
    "routing_transformer/wikitext103_local_4k.gin": dict(target_dropout=0.25, routing_heads=0),
    "routing_transformer/wikitext103_hash_4k.gin": dict(hash_items=True, routing_heads=8, num_clusters=8,
                                                        ema=True),
    "routing_transformer/cifar10.gin": dict(channel_embeddings=True, position_axes=[32, 32, 3], block_size=256,
                                            look_back=1, dropout=0.3),
    "routing_transformer/imagenet64.gin": dict(channel_embeddings=True, position_axes=[64, 64, 3], block_size=256,
                                               look_back=1, dropout=0.3),
    "routing_transformer/enwik8_8k.gin": dict(target_dropout=0.0, channel_embeddings=False, project_embeddings=True),
    "routing_transformer/imagenet64_cluster_strided.gin": dict(local_heads=6, routing_heads=5, cluster_strided_heads=5,
                                                               strided_heads=0, routing="balanced"),
    "combiner/cifar10_axial.gin": dict(qk_ratio=0.5, ffn_dim=512),
    "combiner/imagenet64_axial.gin": dict(qk_ratio=1.0),
}


@pytest.mark.parametrize("path", sorted(BOUND_OPTIONS))
def test_experiment_binds_the_original_options(path):
    model = gin_experiment.parse_config([path], []).model(vocabulary_size=256)  # not built: no weights
    assert {key: model.get_config()[key] for key in BOUND_OPTIONS[path]} == BOUND_OPTIONS[path]


def test_deferred_count_equals_a_real_build():
    """`describe` builds without allocating; the count must be what a real build gives."""
    params = ["SparseTransformerLM.num_layers = 3", "SparseTransformerLM.hidden_dim = 64",
              "SparseTransformerLM.num_heads = 4"]
    experiment = gin_experiment.parse_config(["sparse_transformer/cifar10.gin"], params)
    info = experiment_info.describe(experiment)
    model, _ = gin_experiment.build_model(experiment)
    assert info.parameters == model.count_params()
    assert info.gradient_bytes == 4 * sum(math.prod(v.shape) for v in model.trainable_variables)
    assert info.optimizer_bytes == 2 * info.gradient_bytes  # AdamW: two slots per weight
    gin.clear_config()
    averaged = experiment_info.describe(gin_experiment.parse_config(["sparse_transformer/cifar10.gin"],
                                                                    params + ["AdamW.use_ema = True"]))
    assert averaged.optimizer_bytes == 3 * info.gradient_bytes  # and a moving average of the weights


def test_adafactor_state_is_factored():
    shapes = [(1024, 3072), (3072,), (4, 8, 16)]
    assert experiment_info.optimizer_slots("Adafactor", shapes) == 1024 + 3072 + 3072 + 4 * 8 + 4 * 16
    assert experiment_info.optimizer_slots("AdamW", shapes) == 2 * (1024 * 3072 + 3072 + 4 * 8 * 16)


# --- shrunk to two training steps ---------------------------------------------------------------------------

def _shrink(path, root):
    """Gin bindings that make the experiment tiny (what a user passes as --gin_param for a local run)."""
    experiment = gin_experiment.parse_config([path], [])
    image = experiment.dataset in ("cifar10", "downsampled_imagenet/64x64")
    length = experiment.sequence_length if image else TEXT_LENGTH
    params = [f"Experiment.sequence_length = {length}", "Experiment.batch_size = 1", "TRAIN_STEPS = 3",
              "WARMUP_STEPS = 1", "Experiment.log_every = 1", "Experiment.checkpoint_every = 2",
              "Experiment.jit_compile = False", f"Experiment.data_dir = {str(root / 'tfds')!r}"]
    options = {} if image else {"shuffle_buffer": 4}  # windows: the default 1,024 packs ~250k mock tokens first
    if experiment.dataset in ("pg19", "wikitext103", "wiki40b/en"):
        options["vocabulary_size"] = 40  # a SentencePiece model the tiny corpus can train
    if experiment.dataset in ("enwik8", "wikitext103"):
        options["manual_dir"] = str(root / "manual")
    params.append(f"Experiment.data_options = {options!r}")
    family = path.split(os.sep)[0]
    if family == "routing_transformer":
        routing = gin.query_parameter("RoutingTransformerLM.routing_heads") > 0
        heads = dict(local_heads=1 if routing else 2, routing_heads=1 if routing else 0,
                     skip_first=1 if routing else 0)
        if "RoutingTransformerLM.cluster_strided_heads" in gin.config_str():  # every layer routes, one of each
            heads = dict(local_heads=2, routing_heads=1, cluster_strided_heads=1, skip_first=0)
        params += [f"RoutingTransformerLM.{k} = {v!r}" for k, v in dict(
            num_layers=2, hidden_dim=32, ffn_dim=64, **heads, num_clusters=2,
            window=length // 2, block_size=64, max_relative_position=128).items()]
        params.append("RoutingTransformerLM.embedding_dim = 16")
    elif family == "sparse_transformer":
        params += [f"SparseTransformerLM.{k} = {v!r}" for k, v in dict(
            num_layers=2, hidden_dim=32, num_heads=2).items()]
        if not image:
            params += [f"SparseTransformerLM.{k} = {v!r}" for k, v in dict(
                stride=16, summary=4, num_summary_patterns=2, max_length=length).items()]
    else:
        params += [f"CombinerLM.{k} = {v!r}" for k, v in dict(
            num_layers=2, hidden_dim=32, num_heads=2, ffn_dim=64).items()]
        if not image:
            params += [f"CombinerLM.max_length = {length}", "CombinerLM.segment_length = 16"]
    return params


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The fake enwik8 and wikitext-103 archives, and one TFDS data_dir that every shrunk experiment of this
    module shares: each dataset (and SentencePiece model) is prepared once, not once per experiment."""
    root = tmp_path_factory.mktemp("experiments_data")
    (root / "manual").mkdir()
    fakes.write_enwik8_zip(root / "manual", fakes.enwik8_bytes(20000))
    fakes.write_wikitext_zip(root / "manual")
    return root


@pytest.mark.slow  # 3-15 s each on 2 CPU cores (the images keep their full 3,072 / 12,288 tokens)
@pytest.mark.parametrize("path", EXPERIMENTS)
def test_shrunk_experiment_trains_three_steps(path, data_root):
    """The trainer's own pieces (model, optimizer, schedule, data, jit-able step) for three steps, every weight
    moving: a warm-up schedule's first step has learning rate 0, and zero-initialised logits (the Sparse
    Transformer's) pass no gradient below them until they have moved once. Not
    `train.train`: it checkpoints the tf.data iterator, which mock_data's py_function sources cannot save."""
    experiment = gin_experiment.parse_config([path], _shrink(path, data_root))
    assert experiment.train_steps == 3 and experiment.batch_size == 1
    with tfds.testing.mock_data(num_examples=4):
        model, _ = gin_experiment.build_model(experiment)
        optimizer = gin_experiment.make_optimizer(experiment, model)  # built, as the trainer's: one trace
        batches = iter(gin_experiment.make_dataset(experiment, "train", training=True))
        step = steps.make_train_step(model, optimizer, experiment.clip_norm, experiment.jit_compile)
        before = [np.array(v) for v in model.trainable_variables]
        losses = [float(step(next(batches))["loss"]) for _ in range(experiment.train_steps)]
    assert model.num_layers == 2 and model.hidden_dim == 32
    assert all(np.isfinite(losses)), losses
    assert int(optimizer.iterations.numpy()) == 3
    unchanged = [v.path for a, v in zip(before, model.trainable_variables) if np.array_equal(a, np.array(v))]
    assert not unchanged  # the steps really train the model


# --- the command ------------------------------------------------------------------------------------------

def test_experiment_info_command_prints_count_and_memory_with_overrides():
    result = run_module("apps.experiment_info", "--gin_file=sparse_transformer/cifar10.gin",
                        "--gin_param=SparseTransformerLM.num_layers = 4", "--gin_param=Experiment.batch_size = 2")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SparseTransformerLM: 4 layers of width 256" in out
    assert "cifar10: vocabulary 256, sequence length 3072, batch 2" in out
    count = int(re.search(r"parameters\s+([\d,]+)", out).group(1).replace(",", ""))
    full = _describe("sparse_transformer/cifar10.gin")
    gin.clear_config()
    small = _describe("sparse_transformer/cifar10.gin", ["SparseTransformerLM.num_layers = 4"])
    assert count == small.parameters < full.parameters
    for label in ("weights", "gradients", "optimizer state", "residual stream", "total (at least)"):
        assert re.search(rf"^{re.escape(label)}\s+[\d.]+ [KMG]iB", out, re.M), label


def test_experiment_info_command_bad_file_is_one_line_error():
    assert "does not exist" in assert_one_line_error(
        run_module("apps.experiment_info", "--gin_file=combiner/no_such_experiment.gin"))
