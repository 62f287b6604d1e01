"""apps.convert_t2t: a checkpoint written here with the original's variable names and shapes converts into a
model whose logits equal a float64 numpy forward pass of the original's math on those weights (post-LN, emb_dense,
local heads with relative positions, a routing head with balanced top-k clusters averaged over count + 0.01, the
per-head matrix, GEGLU, final_dense_1/2), restorable by the other tools and as model.keras; unknown, missing and
misshapen variables are one-line errors."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from apps import checkpoints, convert_t2t, errors
from tests.apps.train_helpers import assert_one_line_error, clean_gin, corpus, run_module  # noqa: F401  (fixtures)
from tests.common.attention._reference import attention, local_mask
from tests.routing_transformer._reference import np_routing

VOCAB, EMBED, WIDTH, HEADS, FFN = 256, 12, 16, 2, 24  # local_text is byte-level
BLOCK, CLUSTERS, WINDOW, MAX_DISTANCE, LENGTH = 4, 4, 4, 6, 16
HEAD = WIDTH // HEADS


def zoo_params(corpus):
    text_dir, data_dir = corpus
    model = dict(num_layers=2, hidden_dim=WIDTH, embedding_dim=EMBED, ffn_dim=FFN, local_heads=1, routing_heads=1,
                 skip_first=1, num_clusters=CLUSTERS, window=WINDOW, block_size=BLOCK, look_back=1,
                 max_relative_position=MAX_DISTANCE, routing="'balanced'", dropout=0.0)
    return ["Experiment.model = @routing_transformer.RoutingTransformerLM", f"Experiment.sequence_length = {LENGTH}",
            f"Experiment.data_dir = {data_dir!r}", f"Experiment.data_options = {{'local_text_dir': {text_dir!r}}}"
            ] + [f"RoutingTransformerLM.{key} = {value}" for key, value in model.items()]


def original_weights(seed=0):
    """{name without the body prefix: array} of the original's 2-layer model: layer 0 local heads only
    (sparsity_skip_first=1), layer 1 one routing head then one local head."""
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.3):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    weights = {"embeddings/embedding": normal(VOCAB, EMBED, scale=1.0), "emb_dense/kernel": normal(EMBED, WIDTH),
               "emb_dense/bias": normal(WIDTH), "final_dense_1/kernel": normal(WIDTH, EMBED),
               "final_dense_1/bias": normal(EMBED), "final_dense_2/kernel": normal(EMBED, VOCAB),
               "final_dense_2/bias": normal(VOCAB)}
    table = 2 * MAX_DISTANCE + 1
    for i in range(2):
        scope = f"decoder_layer_{i}/self_attention/"
        attend = scope + "self_attention/"
        for name in ("q", "k", "v"):
            weights[attend + f"{name}/kernel"] = normal(WIDTH, WIDTH)
        weights[attend + "output_transform/kernel"] = normal(WIDTH, WIDTH)
        weights[attend + "attention_nd/dense/kernel"] = normal(HEAD, HEAD, scale=0.5)
        for part in ("keys", "values"):
            weights[attend + f"attention_nd/local_nd/relative_positions_{part}/embeddings"] = normal(table, HEAD)
        if i == 1:
            routed = attend + "attention_nd/cluster_attention/cluster_attention/"
            means = rng.standard_normal((1, CLUSTERS, HEAD))
            means = (means - means.mean(-1, keepdims=True)) / means.std(-1, keepdims=True)
            weights[routed + "means"] = means.astype(np.float32)
            weights[routed + "ema_count"] = rng.uniform(1, 5, (1, CLUSTERS)).astype(np.float32)
            weights[routed + "ema_means"] = normal(1, CLUSTERS, HEAD)
            for part in ("keys", "values"):
                weights[routed + f"relative_positions_{part}/embeddings"] = normal(table, HEAD)
        for k, name in enumerate(("weight1", "weight2", "weight3")):
            weights[scope + f"ffn/{name}/kernel"] = normal(*((WIDTH, FFN) if k < 2 else (FFN, WIDTH)))
        for postprocess in ("layer_postprocess", "layer_postprocess_1"):
            weights[scope + f"{postprocess}/layer_norm/layer_norm_scale"] = 1.0 + normal(WIDTH, scale=0.1)
            weights[scope + f"{postprocess}/layer_norm/layer_norm_bias"] = normal(WIDTH, scale=0.1)
    return weights


def write_t2t_checkpoint(prefix, weights, extra=None):
    """A checkpoint with the original's full names, an Adafactor slot and a global step (training state)."""
    tensors = {convert_t2t.PREFIX + name: value for name, value in weights.items()}
    tensors["global_step"] = np.array(1000, np.int64)
    tensors[convert_t2t.PREFIX + "emb_dense/kernel/Adafactor"] = np.zeros((EMBED,), np.float32)
    tensors.update(extra or {})
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[name]) for name in names])
    return prefix


def _layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def original_logits(weights, ids):
    """The original's forward pass in float64 on targets `ids` [batch, length]: right shift with id 0,
    embeddings, emb_dense, post-LN layers (q scaled by d_head^-0.5; routing heads first), final_dense_1/2."""
    w = {name: np.asarray(value, np.float64) for name, value in weights.items()}
    batch, length = ids.shape
    shifted = np.concatenate([np.zeros((batch, 1), ids.dtype), ids[:, :-1]], axis=1)
    x = w["embeddings/embedding"][shifted] @ w["emb_dense/kernel"] + w["emb_dense/bias"]

    def heads(t):
        return t.reshape(batch, length, HEADS, HEAD).transpose(0, 2, 1, 3)

    for i in range(2):
        scope = f"decoder_layer_{i}/self_attention/"
        attend = scope + "self_attention/"
        q = heads(x @ w[attend + "q/kernel"]) * HEAD ** -0.5
        k, v = heads(x @ w[attend + "k/kernel"]), heads(x @ w[attend + "v/kernel"])
        routing_heads = 1 if i == 1 else 0
        outputs = []
        if routing_heads:
            routed = attend + "attention_nd/cluster_attention/cluster_attention/"
            out, _, count = np_routing(q[:, :1], v[:, :1], w[routed + "means"], WINDOW,
                                       w[routed + "relative_positions_keys/embeddings"],
                                       w[routed + "relative_positions_values/embeddings"], count_epsilon=0.01)
            assert (count >= 2).any() and (count == 0).any()  # duplicates and unrouted tokens both checked
            outputs.append(out)
        local = attend + "attention_nd/local_nd/relative_positions_"
        outputs.append(attention(q[:, routing_heads:], k[:, routing_heads:], v[:, routing_heads:],
                                 mask=local_mask(length, BLOCK, 1, 0, True), scale=1.0,
                                 relative_keys=w[local + "keys/embeddings"],
                                 relative_values=w[local + "values/embeddings"]))
        mixed = np.concatenate(outputs, axis=1) @ w[attend + "attention_nd/dense/kernel"]
        y = mixed.transpose(0, 2, 1, 3).reshape(batch, length, WIDTH) @ w[attend + "output_transform/kernel"]
        norm = scope + "layer_postprocess/layer_norm/layer_norm_"
        x = _layer_norm(x + y, w[norm + "scale"], w[norm + "bias"])
        ffn = scope + "ffn/"
        y = (_gelu_tanh(x @ w[ffn + "weight1/kernel"]) * (x @ w[ffn + "weight2/kernel"])) @ w[ffn + "weight3/kernel"]
        norm = scope + "layer_postprocess_1/layer_norm/layer_norm_"
        x = _layer_norm(x + y, w[norm + "scale"], w[norm + "bias"])
    x = x @ w["final_dense_1/kernel"] + w["final_dense_1/bias"]
    return x @ w["final_dense_2/kernel"] + w["final_dense_2/bias"]


@pytest.fixture(scope="module")
def converted(corpus, tmp_path_factory):
    """(model_dir, original weights) of one conversion."""
    root = tmp_path_factory.mktemp("convert_t2t")
    weights = original_weights()
    prefix = write_t2t_checkpoint(str(root / "t2t" / "model.ckpt-1000"), weights)
    model_dir = str(root / "zoo")
    written = convert_t2t.convert(prefix, [], zoo_params(corpus), model_dir)
    assert written == len(weights) + 1  # every variable, and the start vector from id 0's embedding
    return model_dir, weights


def _ids(seed=1):
    return np.random.default_rng(seed).integers(1, VOCAB, (2, LENGTH)).astype(np.int32)


def test_converted_logits_equal_the_original_math(converted, clean_gin):
    model_dir, weights = converted
    model, _ = checkpoints.load_trained_model(model_dir)
    ids = _ids()
    np.testing.assert_allclose(model(ids).numpy(), original_logits(weights, ids), atol=2e-4, rtol=0)
    routing = model.routing_layers()[0]
    np.testing.assert_array_equal(routing.kmeans.ema_count.numpy(),
                                  weights["decoder_layer_1/self_attention/self_attention/attention_nd/"
                                          "cluster_attention/cluster_attention/ema_count"])


def test_the_keras_file_holds_the_converted_model(converted, clean_gin):
    model_dir, weights = converted
    restored = keras.saving.load_model(f"{model_dir}/model.keras")
    ids = _ids(seed=2)
    np.testing.assert_allclose(restored(ids).numpy(), original_logits(weights, ids), atol=2e-4, rtol=0)
    assert restored.blocks[1].attention.count_epsilon == 0.01


def _convert_error(tmp_path, corpus, weights=None, extra=None, params=()):
    prefix = write_t2t_checkpoint(str(tmp_path / "t2t" / "model.ckpt-1"), weights or original_weights(), extra)
    with pytest.raises(errors.UserError) as raised:
        convert_t2t.convert(prefix, [], zoo_params(corpus) + list(params), str(tmp_path / "zoo"))
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "zoo").exists()
    return str(raised.value)


def test_a_missing_variable_is_named(tmp_path, corpus, clean_gin):
    weights = original_weights()
    del weights["decoder_layer_1/self_attention/ffn/weight3/kernel"]
    message = _convert_error(tmp_path, corpus, weights)
    assert "lacks" in message and "sparse_transformer/body/decoder_layer_1/self_attention/ffn/weight3/kernel" in message


def test_an_unknown_variable_is_named(tmp_path, corpus, clean_gin):
    name = convert_t2t.PREFIX + "decoder_layer_2/self_attention/ffn/weight1/kernel"
    message = _convert_error(tmp_path, corpus, extra={name: np.zeros((WIDTH, FFN), np.float32)})
    assert "no place for" in message and name in message


def test_a_shape_that_differs_names_both_shapes(tmp_path, corpus, clean_gin):
    message = _convert_error(tmp_path, corpus, params=["RoutingTransformerLM.ffn_dim = 32"])
    assert "ffn/weight1/kernel has shape (16, 24)" in message and "(16, 32)" in message


def test_a_missing_checkpoint_is_a_one_line_error(tmp_path):
    result = run_module("apps.convert_t2t", f"--t2t_checkpoint={tmp_path / 'none'}", "--gin_file=quickstart.gin",
                        f"--model_dir={tmp_path / 'zoo'}", timeout=60)
    assert "is neither a checkpoint prefix" in assert_one_line_error(result)


def test_a_model_with_variables_the_original_lacks_is_refused(tmp_path, corpus, clean_gin):
    message = _convert_error(tmp_path, corpus, params=["RoutingTransformerLM.position_axes = (16,)"])
    assert "has variables the original's does not" in message and "position" in message


@pytest.mark.parametrize("heads", [dict(cluster_strided_heads=1, skip_first=0, local_heads=2),
                                   dict(strided_heads=1, local_heads=2), dict(hash_items=True),
                                   dict(ffn_activation="'relu'")])
def test_every_variable_of_the_other_head_kinds_has_one_source(heads, corpus, clean_gin):
    """Strided, cluster-strided and hashing heads and the ReLU feed-forward: every model variable but RNG state
    gets exactly one checkpoint name (the start vector shares id 0's embedding), and the names are distinct."""
    from apps import gin_experiment
    params = zoo_params(corpus) + [f"RoutingTransformerLM.{k} = {v}" for k, v in heads.items()]
    params += convert_t2t.CONVERTER_BINDINGS
    model, _ = gin_experiment.build_model(gin_experiment.parse_config([], params))
    found = convert_t2t.sources(model)
    names = [name for name, variable, _ in found if variable is not model.start]
    assert len(names) == len(set(names))
    targets = [id(variable) for _, variable, _ in found]
    assert len(targets) == len(set(targets))
    assert set(targets) == {id(v) for v in model.variables if not v.path.startswith("seed_generator")}
