"""Incremental decoding of the dense and local kernels: each step equals its row of the full kernel."""

import numpy as np
import pytest
import tensorflow as tf

from common import kv_cache
from common.attention import decoding, dense_attention, get_decoder, local_attention

RNG = np.random.default_rng(0)


def _qkv(length, heads=2, key_dim=4, value_dim=3, batch=2):
    q, k = (RNG.standard_normal((batch, heads, length, key_dim)).astype(np.float32) for _ in range(2))
    v = RNG.standard_normal((batch, heads, length, value_dim)).astype(np.float32)
    return q, k, v


def _rows_by_steps(kernel_name, q, k, v, prompt_length, **options):
    """Runs the kernel's decoder: start on the first prompt_length positions, then one step per position."""
    start, step = get_decoder(kernel_name)
    length = q.shape[2]

    @tf.function
    def run():
        cache = start(None, q[:, :, :prompt_length], k[:, :, :prompt_length], v[:, :, :prompt_length], length,
                      **options)
        rows = []
        for position in range(prompt_length, length):  # unrolled: a handful of positions
            out, cache = step(None, q[:, :, position:position + 1], k[:, :, position:position + 1],
                              v[:, :, position:position + 1], cache, tf.constant(position), **options)
            rows.append(out)
        return tf.concat(rows, axis=2)

    return run().numpy()


def _tables(key_dim=4, value_dim=3, m=3):
    return (RNG.standard_normal((2 * m + 1, key_dim)).astype(np.float32),
            RNG.standard_normal((2 * m + 1, value_dim)).astype(np.float32))


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("prompt_length", [1, 6])
def test_dense_steps_equal_the_full_kernel(relative, prompt_length):
    q, k, v = _qkv(13)
    options = {}
    if relative:
        options["relative_keys"], options["relative_values"] = _tables()
    expected = np.asarray(dense_attention(q, k, v, causal=True, **options))[:, :, prompt_length:]
    got = _rows_by_steps("dense", q, k, v, prompt_length, causal=True, **options)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("block_size,look_back,max_distance", [(4, 1, None), (3, 2, None), (5, 0, None),
                                                                (4, 2, 6), (1, 3, None)])
@pytest.mark.parametrize("relative", [False, True])
def test_local_steps_equal_the_full_kernel(block_size, look_back, max_distance, relative):
    q, k, v = _qkv(17)  # not a multiple of any block size above but 1
    options = dict(block_size=block_size, look_back=look_back, max_distance=max_distance, causal=True)
    if relative:
        options["relative_keys"], options["relative_values"] = _tables()
    expected = np.asarray(local_attention(q, k, v, **options))
    for prompt_length in (1, 7):
        got = _rows_by_steps("local", q, k, v, prompt_length, **options)
        np.testing.assert_allclose(got, expected[:, :, prompt_length:], atol=1e-5)


def test_a_local_step_reads_a_window_whatever_the_prefix(monkeypatch):
    """The step gathers a static (look_back + 1) x block_size positions: its cost does not grow with the prefix."""
    read_shapes = []
    original = kv_cache.read

    def recording_read(cache, positions):
        read_shapes.append(tuple(positions.shape))
        return original(cache, positions)

    monkeypatch.setattr(kv_cache, "read", recording_read)
    q, k, v = _qkv(40)
    start, step = get_decoder("local")
    for position in (30, 39):
        @tf.function
        def decode_at(position=position):
            cache = start(None, q[:, :, :position], k[:, :, :position], v[:, :, :position], 40, block_size=4)
            return step(None, q[:, :, :1], k[:, :, :1], v[:, :, :1], cache, tf.constant(position), block_size=4,
                        look_back=2)[0]
        decode_at()
    assert read_shapes and all(shape == (12,) for shape in read_shapes)


@pytest.mark.parametrize("name,options,message", [
    ("dense", dict(causal=False), "causal"),
    ("local", dict(block_size=4, causal=False), "causal"),
    ("local", dict(block_size=4, segment_ids=np.zeros((2, 2, 5), np.int32)), "segment_ids"),
])
def test_what_cannot_be_decoded_is_a_clear_error(name, options, message):
    q, k, v = _qkv(5)
    start, step = get_decoder(name)
    with pytest.raises(ValueError, match=message):
        tf.function(lambda: step(None, q[:, :, :1], k[:, :, :1], v[:, :, :1], start(None, q, k, v, 6),
                                 tf.constant(5), **options))()


def test_a_kernel_without_a_decoder_is_named():
    with pytest.raises(ValueError, match="no incremental decoder.*'dense'"):
        decoding.get_decoder("no_such_kernel")
