"""Every family trains through plain Keras: an unbuilt model, `compile(jit_compile=True | False | "auto")`, then
`fit` or `train_on_batch`, with the loss going down on a repeated batch. (A Routing Transformer built by `fit`'s
symbolic pass used to keep graph tensors as its initial centroids and fail under XLA.)"""

import keras
import numpy as np
import pytest

from combiner import CombinerLM
from common.layers import SelfAttention
from common.models import DecoderLM
from routing_transformer import RoutingTransformerLM
from sparse_transformer import SparseTransformerLM

VOCAB, LENGTH = 24, 16

FAMILIES = {
    "decoder": lambda: DecoderLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, ffn_dim=32,
                                 attention=SelfAttention(num_heads=2, key_dim=8), position_axes=(LENGTH,)),
    "routing": lambda: RoutingTransformerLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, ffn_dim=32,
                                            local_heads=1, routing_heads=1, num_clusters=2, window=8, block_size=8,
                                            max_relative_position=8, dropout=0.0),
    "sparse": lambda: SparseTransformerLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, num_heads=2, stride=4,
                                          summary=1, max_length=LENGTH, dropout=0.0,
                                          logits_initializer="glorot_uniform"),
    "combiner": lambda: CombinerLM(vocabulary_size=VOCAB, num_layers=2, hidden_dim=16, num_heads=2, ffn_dim=32,
                                   max_length=LENGTH, segment_length=4),
}


def compiled(family, jit_compile):
    keras.utils.set_random_seed(0)
    model = FAMILIES[family]()
    assert not model.built
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit_compile)
    return model


def batch():
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(4, LENGTH)).astype("int32")
    return ids, ids  # the models shift internally: position t predicts token t from tokens < t


@pytest.mark.parametrize("jit_compile", [True, False, "auto"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_an_unbuilt_model_trains_with_fit_and_train_on_batch(family, jit_compile):
    x, y = batch()
    history = compiled(family, jit_compile).fit(x, y, batch_size=4, epochs=6, verbose=0).history["loss"]
    assert all(np.isfinite(history)) and history[-1] < history[0] - 0.05, history

    model = compiled(family, jit_compile)
    losses = [float(np.asarray(model.train_on_batch(x, y))) for _ in range(6)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05, losses
    if family == "routing":  # the k-means statistics moved, from centroids that started equal to their EMA sum
        kmeans = [layer for layer in model._flatten_layers() if type(layer).__name__ == "OnlineKMeans"]
        assert kmeans and all(float(np.sum(k.ema_count)) > 0 for k in kmeans)
