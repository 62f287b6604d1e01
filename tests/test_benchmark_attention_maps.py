"""benchmarks.attention_maps: effective matrices against the dense reference masks, the PNGs, the routing
clusters of a (tiny, untrained or briefly trained) Routing Transformer, and the errors."""

import numpy as np
import pytest
from matplotlib import image

from benchmarks import attention_maps
from routing_transformer.model import RoutingTransformerLM
from tests.apps.train_helpers import clean_gin, corpus  # noqa: F401 (fixtures)

LENGTH, HEADS = 32, 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE, path
    assert image.imread(path).size > 0  # decodes


@pytest.fixture(scope="module")
def matrices():
    return {name: attention_maps.effective_attention(name, LENGTH, HEADS) for name in attention_maps.VARIANTS}


@pytest.mark.parametrize("name", list(attention_maps.VARIANTS))
def test_effective_matrix_is_causal_and_normalised(matrices, name):
    matrix = matrices[name]
    assert matrix.shape == (HEADS, LENGTH, LENGTH)
    assert not np.triu(matrix, 1).any(), "weight above the diagonal"
    assert (matrix >= 0).all()
    sums = matrix.sum(axis=-1)
    if attention_maps.get_variant(name).rows_sum_to_one:
        np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    else:  # balanced routing: a token in no cluster has no weights
        assert np.all(np.isclose(sums, 1.0, atol=1e-5) | (sums == 0)), sums


@pytest.mark.parametrize("name", [n for n, v in attention_maps.VARIANTS.items() if v.reference is not None])
def test_non_zero_entries_equal_the_reference_mask(matrices, name):
    np.testing.assert_array_equal(matrices[name] != 0, attention_maps.reference_mask(name, LENGTH, HEADS))


def test_reference_masks_are_the_libraries_masks():
    from common.attention import local_mask
    from sparse_transformer import patterns

    sizes = attention_maps.sizes_for(LENGTH)
    np.testing.assert_array_equal(attention_maps.reference_mask("local", LENGTH, 1)[0],
                                  np.asarray(local_mask(LENGTH, sizes.block, look_back=1)))
    np.testing.assert_array_equal(
        attention_maps.reference_mask("sparse_fixed_2", LENGTH, HEADS),
        np.asarray(patterns.attention_mask(LENGTH, pattern="fixed", stride=sizes.stride, summary=sizes.summary,
                                           num_heads=HEADS, num_summary_patterns=2)))
    assert attention_maps.reference_mask("routing_causal", LENGTH, HEADS) is None


def test_head_groups_split_the_distinct_patterns(matrices):
    assert attention_maps.head_groups(matrices["sparse_strided"]) == [[0, 1], [2, 3]]  # local | strided
    assert attention_maps.head_groups(matrices["sparse_fixed_2"]) == [[0, 2], [1, 3]]  # per-head summaries
    assert attention_maps.head_groups(matrices["dense"]) == [[0, 1, 2, 3]]


def test_routing_variant_takes_given_centroids():
    centroids = np.eye(3, 8, dtype="float32")[None].repeat(2, axis=0)  # 2 heads, 3 clusters, key_dim 8
    matrix = attention_maps.effective_attention("routing_causal", LENGTH, centroids=centroids)
    assert matrix.shape == (2, LENGTH, LENGTH)


def test_pngs_are_written(matrices, tmp_path):
    paths = [attention_maps.draw_variant(name, matrices[name], str(tmp_path / f"{name}.png"))
             for name in ("sparse_strided", "combiner_axial")]
    paths.append(attention_maps.draw_overview(matrices, str(tmp_path / "overview.png")))
    for path in paths:
        assert_png(path)


def tiny_routing_model(routing="causal", routing_heads=2):
    model = RoutingTransformerLM(num_layers=2, hidden_dim=32, ffn_dim=64, local_heads=2, routing_heads=routing_heads,
                                 skip_first=1, num_clusters=3, window=8, block_size=8, max_relative_position=8,
                                 routing=routing, seed=0)
    model(np.zeros((1, 8), "int32"))
    return model


TEXT = b"def f(x):\n    return x + 1\n\nclass A:\n    pass\n"


def test_routing_maps_of_a_causal_routing_layer(tmp_path):
    maps = attention_maps.routing_maps(tiny_routing_model("causal"), list(TEXT))
    assignment, attention = maps["assignment"], maps["attention"]
    length = len(TEXT)
    assert assignment.shape == (2, length) and attention.shape == (2, length, length)
    assert assignment.min() >= 0 and assignment.max() < 3
    np.testing.assert_array_equal(maps["counts"].sum(axis=1), [length, length])
    np.testing.assert_array_equal(maps["training_share"], 0.0)  # untrained: no EMA counts yet
    np.testing.assert_allclose(attention.sum(axis=-1), 1.0, atol=1e-5)
    # The clusters as attention: each token sees itself and the window - 1 previous members of its cluster.
    for head in range(2):
        same = assignment[head][:, None] == assignment[head][None, :]
        rank = np.cumsum(same, axis=1)[np.arange(length), np.arange(length)]  # members up to i, i included
        earlier = np.tril(same) & (rank[:, None] - np.cumsum(same, axis=1) < maps["window"])
        np.testing.assert_array_equal(attention[head] != 0, earlier)
    for path in attention_maps.draw_routing(maps, TEXT, str(tmp_path)):
        assert_png(path)


def test_routing_maps_of_a_balanced_routing_layer():
    maps = attention_maps.routing_maps(tiny_routing_model("balanced"), list(TEXT))
    sums = maps["attention"].sum(axis=-1)
    assert np.all(np.isclose(sums, 1.0, atol=1e-5) | (sums == 0))
    assert not np.triu(maps["attention"], 1).any()


def test_routing_maps_errors():
    with pytest.raises(ValueError, match="has no routing heads"):
        attention_maps.routing_maps(tiny_routing_model(routing_heads=0), list(TEXT))
    with pytest.raises(ValueError, match="routing layer 1 does not exist; the model has 1 routing layers"):
        attention_maps.routing_maps(tiny_routing_model(), list(TEXT), layer_index=1)
    with pytest.raises(ValueError, match="the text has 4 tokens, fewer than the routing window 8"):
        attention_maps.routing_maps(tiny_routing_model(), list(TEXT[:4]))


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="unknown attention variant 'nope'; choose from dense, local"):
        attention_maps.effective_attention("nope")
    with pytest.raises(ValueError, match="length must be an integer >= 16"):
        attention_maps.effective_attention("dense", length=8)
    with pytest.raises(SystemExit, match="^error: unknown attention variant 'strided'"):
        attention_maps.main(["--variants=dense,strided"])
    # Options a variant cannot take fail before the routing model is trained.
    with pytest.raises(SystemExit, match=r"^error: num_heads \(3\) must be divisible by the 2 head groups"):
        attention_maps.main(["--variants=sparse_strided", "--heads=3"])


@pytest.mark.slow
def test_command_trains_and_draws_every_picture(corpus, clean_gin, tmp_path):  # noqa: F811
    text_dir, data_dir = corpus
    model_dir = str(tmp_path / "model")
    attention_maps.train_tiny_routing_model(model_dir, train_steps=4, bindings=[
        f"Experiment.data_dir = {data_dir!r}", f"Experiment.data_options = {{'local_text_dir': {text_dir!r}}}",
        "Experiment.jit_compile = False"])
    output_dir = tmp_path / "maps"
    attention_maps.main([f"--model_dir={model_dir}", f"--output_dir={output_dir}", "--text_length=32",
                         "--length=16"])
    names = {f"{name}.png" for name in attention_maps.VARIANTS}
    names |= {"overview.png", "routing_clusters.png", "routing_attention.png", "routing_cluster_sizes.png"}
    assert {p.name for p in output_dir.iterdir()} == names
    for path in output_dir.iterdir():
        assert_png(str(path))
