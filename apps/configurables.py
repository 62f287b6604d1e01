"""Everything a gin file can name: models, layers' families, optimizers and schedules.

Keras classes are registered with `gin.register` (never `@gin.configurable`, which breaks Keras 3
construction and `.keras` reload), so gin bindings apply only when gin calls them.
"""

import gin
import keras

from common import schedules
from common.models import DecoderLM

_registered = False


def register_configurables():
    """Registers the zoo's models and the optimizers/schedules once; safe to call repeatedly."""
    global _registered
    if _registered:
        return
    import combiner
    import routing_transformer  # Families are imported here so that gin files can name their models.
    import sparse_transformer

    gin.register(DecoderLM, module="common")
    gin.register(routing_transformer.RoutingTransformerLM, module="routing_transformer")
    gin.register(routing_transformer.RoutingAttention, module="routing_transformer")
    gin.register(combiner.CombinerLM, module="combiner")
    gin.register(sparse_transformer.SparseTransformerLM, module="sparse_transformer")
    gin.register(schedules.RsqrtDecay, module="common")
    gin.register(schedules.WarmupCosine, module="common")
    for optimizer in (keras.optimizers.Adam, keras.optimizers.AdamW, keras.optimizers.Adafactor,
                      keras.optimizers.SGD):
        gin.register(optimizer, module="keras.optimizers")
    _registered = True
