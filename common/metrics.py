"""Language-model loss and metrics that ignore padding: cross-entropy, bits per token, perplexity."""

import math

import keras
from keras import ops


def token_cross_entropy(token_ids, logits, ignore_id=None):
    """Per-token cross-entropy in nats [batch, length] and the weights (0 where token_ids == ignore_id)."""
    token_ids = ops.cast(token_ids, "int32")
    nats = keras.losses.sparse_categorical_crossentropy(token_ids, ops.cast(logits, "float32"),
                                                        from_logits=True)
    weights = ops.ones_like(nats) if ignore_id is None else ops.cast(ops.not_equal(token_ids, ignore_id),
                                                                      "float32")
    return nats, weights


@keras.saving.register_keras_serializable(package="common")
class LanguageModelLoss(keras.losses.Loss):
    """Mean cross-entropy (nats) over the tokens that are not `ignore_id`.

    The zoo's models predict token t from tokens < t (they shift their input internally), so y_true is the
    token ids themselves.
    """

    def __init__(self, ignore_id=None, name="language_model_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_id = ignore_id

    def call(self, y_true, y_pred):
        nats, weights = token_cross_entropy(y_true, y_pred, self.ignore_id)
        return ops.sum(nats * weights) / ops.maximum(ops.sum(weights), 1.0)

    def get_config(self):
        return dict(super().get_config(), ignore_id=self.ignore_id)


class _TokenCrossEntropyMetric(keras.metrics.Metric):
    """Accumulates summed nats and token count over batches."""

    def __init__(self, ignore_id=None, **kwargs):
        super().__init__(**kwargs)
        self.ignore_id = ignore_id
        self.total_nats = self.add_variable(shape=(), initializer="zeros", name="total_nats")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        nats, weights = token_cross_entropy(y_true, y_pred, self.ignore_id)
        if sample_weight is not None:
            weights = weights * ops.cast(sample_weight, "float32")
        self.total_nats.assign_add(ops.sum(nats * weights))
        self.count.assign_add(ops.sum(weights))

    def mean_nats(self):
        return self.total_nats / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.total_nats.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return dict(super().get_config(), ignore_id=self.ignore_id)


@keras.saving.register_keras_serializable(package="common")
class BitsPerToken(_TokenCrossEntropyMetric):
    """Cross-entropy in bits per token (bits per byte/character for byte-level text, per dim for images)."""

    def __init__(self, ignore_id=None, name="bits_per_token", **kwargs):
        super().__init__(ignore_id=ignore_id, name=name, **kwargs)

    def result(self):
        return self.mean_nats() / math.log(2.0)


@keras.saving.register_keras_serializable(package="common")
class Perplexity(_TokenCrossEntropyMetric):
    """exp(mean cross-entropy) per token."""

    def __init__(self, ignore_id=None, name="perplexity", **kwargs):
        super().__init__(ignore_id=ignore_id, name=name, **kwargs)

    def result(self):
        return ops.exp(self.mean_nats())
