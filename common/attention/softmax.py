"""The normalisation step every kernel shares: masked softmax in float32, then optional dropout."""

import keras
from keras import ops

# Added to masked logits; large enough that exp() underflows to exactly 0 in float32.
MASK_VALUE = -1e9


def masked_softmax(logits, keep=None, dropout_rate=0.0, seed=None):
    """Softmax over the last axis in float32, zero where `keep` is False.

    Rows with no kept entry return all zeros (not a uniform average). `dropout_rate` > 0 drops attention
    probabilities (the caller passes it only in training).
    """
    logits = ops.cast(logits, "float32")
    if keep is not None:
        logits = ops.where(keep, logits, MASK_VALUE)
    weights = ops.softmax(logits, axis=-1)
    if keep is not None:
        weights = weights * ops.cast(keep, "float32")
    if dropout_rate:
        weights = keras.random.dropout(weights, dropout_rate, seed=seed)
    return weights
