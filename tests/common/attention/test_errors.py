"""Clear ValueErrors, naming the constraint, for inputs that break the kernel contract."""

import numpy as np
import pytest
import tensorflow as tf

from common.attention import dense_attention, get_kernel, kernel_names, local_attention, local_mask

KERNELS = {
    "dense": lambda q, k, v, **kw: dense_attention(q, k, v, **kw),
    "local": lambda q, k, v, **kw: local_attention(q, k, v, block_size=4, **kw),
}


def _t(*shape):
    return tf.zeros(shape, tf.float32)


GOOD = dict(q=(2, 3, 8, 4), k=(2, 3, 8, 4), v=(2, 3, 8, 5))

QKV_ERRORS = [
    # (id, shapes replacing GOOD's, match)
    ("q_rank3", dict(q=(2, 8, 4)), r"q must have rank 4"),
    ("k_rank5", dict(k=(2, 3, 8, 4, 1)), r"k must have rank 4"),
    ("v_rank2", dict(v=(8, 5)), r"v must have rank 4"),
    ("key_dim", dict(k=(2, 3, 8, 6)), r"key_dim"),
    ("kv_length", dict(v=(2, 3, 7, 5)), r"same length"),
    ("batch", dict(q=(1, 3, 8, 4)), r"batch"),
    ("batch_v", dict(v=(3, 3, 8, 5)), r"batch"),
    ("heads", dict(k=(2, 1, 8, 4), v=(2, 1, 8, 5)), r"heads"),
]


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("shapes,match", [c[1:] for c in QKV_ERRORS], ids=[c[0] for c in QKV_ERRORS])
def test_qkv_shapes(kernel, shapes, match):
    tensors = {name: _t(*shapes.get(name, shape)) for name, shape in GOOD.items()}
    with pytest.raises(ValueError, match=match):
        KERNELS[kernel](tensors["q"], tensors["k"], tensors["v"])


def test_good_shapes_pass():
    """The control for the cases above: GOOD shapes run on both kernels."""
    for kernel in KERNELS.values():
        out = kernel(*[_t(*shape) for shape in GOOD.values()])
        assert tuple(out.shape) == (2, 3, 8, 5)


@pytest.mark.parametrize("block_size", [0, -1, 2.5, True, "4", None])
def test_block_size(block_size):
    with pytest.raises(ValueError, match=r"block_size"):
        local_attention(_t(1, 1, 8, 4), _t(1, 1, 8, 4), _t(1, 1, 8, 4), block_size=block_size)


@pytest.mark.parametrize("look_back", [-1, 1.5])
def test_look_back(look_back):
    with pytest.raises(ValueError, match=r"look_back"):
        local_attention(_t(1, 1, 8, 4), _t(1, 1, 8, 4), _t(1, 1, 8, 4), block_size=4, look_back=look_back)


def test_negative_look_ahead():
    with pytest.raises(ValueError, match=r"look_ahead"):
        local_attention(_t(1, 1, 8, 4), _t(1, 1, 8, 4), _t(1, 1, 8, 4), block_size=4, look_ahead=-1,
                        causal=False)


@pytest.mark.parametrize("look_ahead", [1, 2])
def test_look_ahead_with_causal(look_ahead):
    with pytest.raises(ValueError, match=r"look_ahead.*causal"):
        local_attention(_t(1, 1, 8, 4), _t(1, 1, 8, 4), _t(1, 1, 8, 4), block_size=4, look_ahead=look_ahead,
                        causal=True)
    with pytest.raises(ValueError, match=r"look_ahead.*causal"):
        local_mask(8, 4, look_ahead=look_ahead, causal=True)


def test_local_needs_self_attention():
    with pytest.raises(ValueError, match=r"same length"):
        local_attention(_t(1, 1, 4, 4), _t(1, 1, 8, 4), _t(1, 1, 8, 4), block_size=4)


MASK_ERRORS = [
    ("rank1", (8,), r"rank"),
    ("rank5", (1, 2, 3, 6, 8), r"rank"),
    ("q_length", (7, 8), r"q_length"),
    ("k_length", (6, 9), r"k_length"),
    ("both", (8, 6), r"length"),
    ("heads", (3, 6, 8), r"heads"),
    ("batch", (4, 1, 6, 8), r"batch"),
]


@pytest.mark.parametrize("shape,match", [c[1:] for c in MASK_ERRORS], ids=[c[0] for c in MASK_ERRORS])
def test_mask_shape(shape, match):
    q, k, v = _t(2, 2, 6, 4), _t(2, 2, 8, 4), _t(2, 2, 8, 3)
    with pytest.raises(ValueError, match=match):
        dense_attention(q, k, v, mask=tf.ones(shape, tf.bool))


@pytest.mark.parametrize("shape", [(6, 8), (1, 8), (6, 1), (2, 6, 8), (2, 1, 6, 8), (1, 1, 1, 1)])
def test_broadcastable_masks_pass(shape):
    """The control for test_mask_shape: broadcastable masks are accepted."""
    q, k, v = _t(2, 2, 6, 4), _t(2, 2, 8, 4), _t(2, 2, 8, 3)
    out = dense_attention(q, k, v, mask=tf.ones(shape, tf.bool))
    assert tuple(out.shape) == (2, 2, 6, 3)


TABLE_ERRORS = [
    # (id, which table, shape, match)
    ("keys_even_rows", "relative_keys", (4, 4), r"2 \* max_relative_position \+ 1 rows"),
    ("values_even_rows", "relative_values", (6, 3), r"2 \* max_relative_position \+ 1 rows"),
    ("keys_wrong_dim", "relative_keys", (5, 3), r"relative_keys has dim 3"),
    ("values_wrong_dim", "relative_values", (5, 4), r"relative_values has dim 4"),
    ("keys_rank1", "relative_keys", (5,), r"rank 2"),
    ("values_rank3", "relative_values", (5, 3, 1), r"rank 2"),
]


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("table,shape,match", [c[1:] for c in TABLE_ERRORS], ids=[c[0] for c in TABLE_ERRORS])
def test_relative_tables(kernel, table, shape, match):
    q, k, v = _t(1, 2, 8, 4), _t(1, 2, 8, 4), _t(1, 2, 8, 3)
    with pytest.raises(ValueError, match=match):
        KERNELS[kernel](q, k, v, **{table: _t(*shape)})


def test_unknown_kernel_lists_registered():
    with pytest.raises(ValueError, match=r"nope.*registered") as info:
        get_kernel("nope")
    assert "'dense'" in str(info.value) and "'local'" in str(info.value)
    assert get_kernel("dense") is dense_attention
    assert get_kernel("local") is local_attention
    assert {"dense", "local"} <= set(kernel_names())


def test_numpy_inputs_give_the_same_errors():
    """Validation reads static shapes, so numpy inputs are checked the same way."""
    with pytest.raises(ValueError, match=r"key_dim"):
        dense_attention(np.zeros((1, 1, 4, 2), np.float32), np.zeros((1, 1, 4, 3), np.float32),
                        np.zeros((1, 1, 4, 3), np.float32))
