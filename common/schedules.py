"""Learning-rate schedules of the three papers, as Keras schedules (serialisable, usable in tf.function)."""

import math

import keras
from keras import ops


def _check_number(schedule, name, value, integer=False, minimum=0.0):
    """ValueError naming the schedule's argument, for a value of the wrong type or below `minimum`."""
    kind = int if integer else (int, float)
    if not isinstance(value, kind) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{schedule}.{name} = {value!r}: expected {'an integer' if integer else 'a number'} "
                         f">= {minimum:g}")


@keras.saving.register_keras_serializable(package="common")
class RsqrtDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The Routing Transformer's `constant * rsqrt_normalized_decay`: constant * sqrt(warmup) / sqrt(max(step,
    warmup)); flat for `warmup_steps`, then 1/sqrt decay (no warm-up ramp, as in the original)."""

    def __init__(self, constant=0.01, warmup_steps=10000):
        _check_number("RsqrtDecay", "constant", constant)
        _check_number("RsqrtDecay", "warmup_steps", warmup_steps, integer=True)
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1 (the decay divides by it); got {warmup_steps}.")
        self.constant = constant
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = ops.maximum(ops.cast(step, "float32"), float(self.warmup_steps))
        return self.constant * math.sqrt(self.warmup_steps) * ops.rsqrt(step)

    def get_config(self):
        return {"constant": self.constant, "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="common")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine decay to `peak * final_fraction` at
    `total_steps` (the Sparse Transformer and Combiner schedules)."""

    def __init__(self, peak=3e-4, warmup_steps=1000, total_steps=100000, final_fraction=0.0):
        _check_number("WarmupCosine", "peak", peak)
        _check_number("WarmupCosine", "warmup_steps", warmup_steps, integer=True)
        _check_number("WarmupCosine", "total_steps", total_steps, integer=True, minimum=1)
        _check_number("WarmupCosine", "final_fraction", final_fraction)
        if total_steps <= warmup_steps:
            raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}).")
        self.peak = peak
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.final_fraction = final_fraction

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = self.peak * step / max(self.warmup_steps, 1)
        progress = ops.clip((step - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        decayed = self.peak * (self.final_fraction + (1.0 - self.final_fraction) * cosine)
        return ops.where(step < self.warmup_steps, warmup, decayed)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "final_fraction": self.final_fraction}
