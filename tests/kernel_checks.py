"""Checks shared by the kernel tests of every family."""

import tensorflow as tf


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
