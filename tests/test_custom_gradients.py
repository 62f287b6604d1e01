"""`tests.custom_gradients.released` frees the graphs that TensorFlow's custom-gradient registry would keep."""

import gc
import weakref

import numpy as np
import tensorflow as tf

from common.attention import local_attention
from tests import custom_gradients


def _traced_gradient_graph():
    """A weak reference to the graph of a step that differentiates local attention (a custom gradient)."""

    @tf.function
    def step(q):
        with tf.GradientTape() as tape:
            tape.watch(q)
            out = local_attention(q, q, q, block_size=4)
        return tape.gradient(tf.reduce_sum(out), q)

    q = tf.constant(np.random.default_rng(0).normal(size=(1, 2, 8, 4)), tf.float32)
    graph = step.get_concrete_function(q).graph
    assert any(name.startswith(custom_gradients.PREFIX) for name in custom_gradients._registry())
    return weakref.ref(graph)


def test_released_frees_the_graph_and_keeps_older_entries():
    kept = set(custom_gradients._registry())
    with custom_gradients.released():
        graph = _traced_gradient_graph()
        gc.collect()
        assert graph() is not None  # the step is gone: only the registry holds its graph
    gc.collect()
    assert graph() is None
    assert set(custom_gradients._registry()) == kept

