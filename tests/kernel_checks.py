"""Checks shared by the kernel tests of every family: the effective attention matrix and its support, and the
no-length-x-length-tensor trace."""

import numpy as np
import tensorflow as tf


def effective_matrix(kernel, q, k, **options):
    """The attention weights [batch, heads, q_length, k_length] (numpy) of `kernel(q, k, v, **options)`: its
    output for v = the identity over the key positions (every kernel is linear in v). A kernel returning
    (out, auxiliary) gives out."""
    batch, heads = q.shape[:2]
    k_length = (q if k is None else k).shape[2]
    eye = tf.constant(np.broadcast_to(np.eye(k_length, dtype=np.float32), (batch, heads, k_length, k_length)))
    out = kernel(tf.constant(q), None if k is None else tf.constant(k), eye, **options)
    return np.asarray(out[0] if isinstance(out, tuple) else out)


def causal_support(q_length, k_length):
    """bool [q_length, k_length]: key j visible to query i of a causal kernel (queries are the last positions)."""
    return np.arange(k_length)[None, :] <= np.arange(q_length)[:, None] + (k_length - q_length)


def assert_weights_exactly_on(matrix, support):
    """`matrix` (an effective matrix) puts weight exactly on `support` (bool, broadcastable to it): zero off
    it, positive on it, each row summing to 1, or to 0 for a query whose support is empty."""
    support = np.broadcast_to(support, matrix.shape)
    assert (matrix[~support] == 0).all(), "weight outside the support"
    assert (matrix[support] > 0).all(), "no weight on part of the support"
    np.testing.assert_allclose(matrix.sum(-1), support.any(-1).astype(np.float32), rtol=0, atol=1e-5)


def square_tensors(fn, length, **options):
    """Static shapes of every graph tensor of the kernel `fn` traced at `length` that have two dims >= length:
    empty for a kernel that never builds a length x length tensor."""
    signature = [tf.TensorSpec([1, 1, length, 8], tf.float32)] * 3
    concrete = tf.function(lambda q, k, v: fn(q, k, v, **options)).get_concrete_function(*signature)
    found, saw_length = [], False
    for op in concrete.graph.get_operations():
        for tensor in op.outputs:
            if tensor.shape.rank is None:
                continue
            dims = [d for d in tensor.shape.as_list() if d is not None]
            saw_length |= length in dims
            if sum(d >= length for d in dims) >= 2:
                found.append((op.name, op.type, tensor.shape.as_list()))
    assert saw_length  # the trace really is at this length
    return found
