"""Learning-rate schedules: RsqrtDecay and WarmupCosine values, errors, serialisation, use inside tf.function."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from common.schedules import RsqrtDecay, WarmupCosine


def _value(schedule, step):
    return float(schedule(step))


# --- RsqrtDecay ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("step", [0, 1, 50, 99, 100, 101, 400, 2500, 10**6])
def test_rsqrt_decay_values(step):
    schedule = RsqrtDecay(constant=0.02, warmup_steps=100)
    expected = 0.02 * math.sqrt(100) / math.sqrt(max(step, 100))
    assert _value(schedule, step) == pytest.approx(expected, rel=1e-6)


def test_rsqrt_decay_is_flat_during_warmup_then_decays():
    schedule = RsqrtDecay(constant=0.01, warmup_steps=1000)
    flat = [_value(schedule, s) for s in (0, 1, 500, 999, 1000)]
    assert flat == pytest.approx([0.01] * 5, rel=1e-6)
    later = [_value(schedule, s) for s in (1001, 2000, 4000, 16000)]
    assert all(a > b for a, b in zip([0.01] + later, later))
    assert later[-1] == pytest.approx(0.01 / 4, rel=1e-6)  # 16x the warm-up: a quarter


# --- WarmupCosine -------------------------------------------------------------------------------------------

PEAK, WARMUP, TOTAL, FINAL = 3e-4, 100, 1100, 0.1


def _cosine_expected(step):
    if step < WARMUP:
        return PEAK * step / WARMUP
    progress = min((step - WARMUP) / (TOTAL - WARMUP), 1.0)
    return PEAK * (FINAL + (1 - FINAL) * 0.5 * (1 + math.cos(math.pi * progress)))


@pytest.mark.parametrize("step", [0, 1, 25, 50, 99, 100, 101, 350, 600, 850, 1099, 1100, 1101, 5000])
def test_warmup_cosine_values(step):
    schedule = WarmupCosine(peak=PEAK, warmup_steps=WARMUP, total_steps=TOTAL, final_fraction=FINAL)
    assert _value(schedule, step) == pytest.approx(_cosine_expected(step), rel=1e-5, abs=1e-12)


def test_warmup_cosine_landmarks():
    schedule = WarmupCosine(peak=PEAK, warmup_steps=WARMUP, total_steps=TOTAL, final_fraction=FINAL)
    assert _value(schedule, 0) == 0.0
    warmup = [_value(schedule, s) for s in range(0, WARMUP + 1, 10)]
    np.testing.assert_allclose(np.diff(warmup), PEAK / 10, rtol=1e-4)  # linear ramp
    assert _value(schedule, WARMUP) == pytest.approx(PEAK, rel=1e-6)
    assert _value(schedule, (WARMUP + TOTAL) // 2) == pytest.approx(PEAK * (FINAL + (1 - FINAL) / 2), rel=1e-5)
    for step in (TOTAL, TOTAL + 1, 10 * TOTAL):
        assert _value(schedule, step) == pytest.approx(FINAL * PEAK, rel=1e-5)
    after = [_value(schedule, s) for s in range(WARMUP, TOTAL + 1, 50)]
    assert all(a >= b for a, b in zip(after, after[1:]))  # monotone decay


def test_warmup_cosine_defaults_decay_to_zero():
    schedule = WarmupCosine(peak=1.0, warmup_steps=10, total_steps=20)
    assert _value(schedule, 20) == pytest.approx(0.0, abs=1e-7)
    assert _value(schedule, 15) == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize("total_steps", [100, 99, 0])
def test_warmup_cosine_needs_total_after_warmup(total_steps):
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosine(peak=1e-3, warmup_steps=100, total_steps=total_steps)


# --- both ---------------------------------------------------------------------------------------------------

SCHEDULES = [RsqrtDecay(constant=0.03, warmup_steps=40),
             WarmupCosine(peak=2e-3, warmup_steps=40, total_steps=400, final_fraction=0.2)]
STEPS = [0, 10, 39, 40, 41, 100, 399, 400, 1000]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_config_round_trip(schedule):
    clone = type(schedule).from_config(schedule.get_config())
    assert clone.get_config() == schedule.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(restored) is type(schedule) and restored.get_config() == schedule.get_config()
    for step in STEPS:
        assert _value(clone, step) == _value(restored, step) == _value(schedule, step)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_inside_tf_function(schedule, jit_compile):
    traced = tf.function(lambda step: schedule(step), jit_compile=jit_compile)
    step = tf.Variable(0, dtype=tf.int64)
    for value in STEPS:
        step.assign(value)
        assert float(traced(step)) == pytest.approx(_value(schedule, value), rel=1e-6, abs=1e-12)
        assert float(traced(tf.constant(value, tf.int32))) == pytest.approx(_value(schedule, value), rel=1e-6,
                                                                            abs=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: type(s).__name__)
def test_optimizer_follows_the_schedule(schedule):
    """A Keras optimizer built with the schedule applies schedule(iterations) at every jit-compiled step."""
    variable = keras.Variable(np.zeros([1], np.float32))
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    optimizer.build([variable])

    @tf.function(jit_compile=True)
    def step():
        optimizer.apply([tf.ones([1])], [variable])

    previous = 0.0
    for iteration in range(45):
        step()
        current = float(np.asarray(variable)[0])
        assert previous - current == pytest.approx(_value(schedule, iteration), rel=1e-4, abs=1e-9), iteration
        previous = current
    assert int(optimizer.iterations) == 45


def test_rsqrt_decay_rejects_zero_warmup():
    with pytest.raises(ValueError, match="warmup_steps"):
        RsqrtDecay(warmup_steps=0)
