"""Bad input to combiner_attention and CombinerAttention: ValueErrors that name the problem and the choices."""

import numpy as np
import pytest
import tensorflow as tf

from combiner.attention import CombinerAttention, combiner_attention
from common.attention import get_kernel


def _qkv(length=12, key_dim=4, value_dim=3):
    return [tf.zeros((1, 2, length, dim)) for dim in (key_dim, key_dim, value_dim)]


BAD_OPTIONS = [
    ("variant", dict(variant="sparse"), r"unknown Combiner variant 'sparse'; choose one of \['fixed', "
                                        r"'logsparse', 'axial', 'mixture'\]"),
    ("local_summary", dict(variant="fixed", local_summary="tanh-max"), r"unknown local_summary 'tanh-max'.*"
                                                                       r"'identity-max'.*'deepset-sum'"),
    ("pooling", dict(variant="fixed", local_summary="identity-min"), r"unknown local_summary"),
    ("row_summary", dict(variant="axial", row_summary="mean"), r"unknown row_summary 'mean'; choose one of "
                                                              r"\['none', 'wsum', 'proj', 'wsum_proj'\]"),
    ("logsparse_bidirectional", dict(variant="logsparse", causal=False), r"causal only.*'fixed', 'axial', "
                                                                         r"'mixture'"),
    ("segment_zero", dict(variant="fixed", segment_length=0), r"segment_length must be an integer >= 1"),
    ("segment_missing", dict(variant="axial"), r"segment_length must be an integer >= 1; got None"),
    ("segment_float", dict(variant="mixture", segment_length=2.5), r"segment_length"),
    ("bidirectional_length", dict(variant="mixture", segment_length=5, causal=False),
     r"multiple of segment_length=5; got 12"),
    ("deepset_without_kernels", dict(variant="fixed", segment_length=4, local_summary="deepset-max"),
     r"needs query_pooling_kernel"),
    ("deepset_kernel_shape", dict(variant="fixed", segment_length=4, local_summary="deepset-max",
                                  query_pooling_kernel=tf.zeros((3, 3)), key_pooling_kernel=tf.zeros((4, 4))),
     r"query_pooling_kernel must be \[key_dim, key_dim\] = \[4, 4\]; got \(3, 3\)"),
    ("proj_without_projection", dict(variant="axial", segment_length=4, row_summary="proj"),
     r"row_summary 'proj' needs row_projection"),
    ("projection_shape", dict(variant="axial", segment_length=4, row_summary="wsum_proj",
                              row_projection=lambda s: s[..., :2]), r"row_projection must return region keys"),
]


@pytest.mark.parametrize("options,match", [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        combiner_attention(*_qkv(), **options)


def test_good_options_pass():
    """The control for the cases above."""
    for options in (dict(variant="mixture", segment_length=4, causal=False), dict(variant="logsparse"),
                    dict(variant="fixed", segment_length=5), dict(variant="axial", segment_length=4,
                                                                  row_summary="wsum_proj",
                                                                  row_projection=lambda s: s)):
        assert tuple(combiner_attention(*_qkv(), **options).shape) == (1, 2, 12, 3)


@pytest.mark.parametrize("shapes,match", [((12, 4, 3), None), ((12, 5, 3), r"key_dim")])
def test_contract_shapes(shapes, match):
    q = tf.zeros((1, 2, shapes[0], 4))
    k = tf.zeros((1, 2, shapes[0], shapes[1]))
    v = tf.zeros((1, 2, shapes[0], shapes[2]))
    if match is None:
        combiner_attention(q, k, v, variant="fixed", segment_length=4)
    else:
        with pytest.raises(ValueError, match=match):
            combiner_attention(q, k, v, variant="fixed", segment_length=4)
    with pytest.raises(ValueError, match=r"same length"):
        combiner_attention(q, tf.zeros((1, 2, 8, 4)), tf.zeros((1, 2, 8, 3)), variant="fixed", segment_length=4)


def test_logsparse_needs_a_static_length_or_max_length():
    spec = tf.TensorSpec([1, 2, None, 4], tf.float32)
    with pytest.raises(ValueError, match=r"logsparse' needs a static sequence length or max_length"):
        tf.function(lambda q, k, v: combiner_attention(q, k, v, variant="logsparse")).get_concrete_function(
            spec, spec, spec)
    bounded = tf.function(lambda q, k, v: combiner_attention(q, k, v, variant="logsparse", max_length=16),
                          input_signature=[spec] * 3)
    assert bounded(*[tf.zeros((1, 2, 16, 4))] * 3).shape == (1, 2, 16, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"longer than its max_length 16"):
        bounded(*[tf.zeros((1, 2, 17, 4))] * 3)
    with pytest.raises(ValueError, match=r"max_length must be an integer >= 1; got 0"):
        combiner_attention(*[tf.zeros((1, 2, 4, 4))] * 3, variant="logsparse", max_length=0)


def test_registered_kernel():
    assert get_kernel("combiner") is combiner_attention


@pytest.mark.parametrize("kwargs,match", [
    (dict(variant="routing"), r"unknown Combiner variant 'routing'; choose one of"),
    (dict(variant="logsparse", causal=False), r"causal only"),
    (dict(row_summary="max"), r"unknown row_summary"),
    (dict(local_summary="deepset"), r"unknown local_summary"),
    (dict(segment_length=-4), r"segment_length"),
    (dict(variant="logsparse", max_length=2.5), r"max_length"),
    (dict(num_heads=0), r"num_heads"),
])
def test_layer_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CombinerAttention(**dict(dict(num_heads=2, key_dim=4, segment_length=4), **kwargs))


def test_layer_bidirectional_length_error_names_the_constraint():
    layer = CombinerAttention(num_heads=2, key_dim=4, variant="axial", segment_length=5, causal=False)
    with pytest.raises(ValueError, match=r"multiple of segment_length=5"):
        layer(np.zeros((1, 12, 8), np.float32))
