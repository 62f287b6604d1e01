"""benchmarks.decoding: each benchmarked kernel's model builds and decodes the prompt's greedy continuation,
and the report's targets and growth lines follow from the records."""

import types

import pytest
import tensorflow as tf

from benchmarks import decoding
from apps import sample

ARGS = types.SimpleNamespace(kernels="local,fixed", prefixes="1024,16384", new_tokens=8, repeats=1)


def record(kernel, prefix, cached_s, full_s):
    return {"kernel": kernel, "prefix": prefix, "cached_s": cached_s, "full_s": full_s, "speedup": full_s / cached_s}


def test_report_targets_and_growth():
    records = [record("local", 1024, 0.010, 0.10), record("local", 16384, 0.012, 1.2),
               record("fixed", 1024, 0.010, 0.10), record("fixed", 16384, 0.080, 1.2)]
    text = decoding.report(records, ARGS, wall_s=60.0)
    assert "- local at a 16,384-token prefix: cached decoding 100.0x faster than the full pass (target >= 20x): PASS" \
        in text
    assert "- fixed at a 16,384-token prefix: cached decoding 15.0x faster than the full pass (target >= 20x): FAIL" \
        in text
    assert "- local: cached time per token at 16,384 / at 1,024 tokens of prefix = 1.20" in text
    assert "| local | 1,024 | 10.0 | 100.0 | 100 | 10.00 | 10.0x |" in text
    assert "--kernels=local,fixed --prefixes=1024,16384 --new_tokens=8 --repeats=1" in text


def test_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="unknown kernel 'routing'"):
        decoding.attention_layer("routing")


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["dense", "local", "strided", "fixed"])
def test_cached_generation_of_each_benchmarked_model_is_its_greedy_continuation(kernel):
    """What the benchmark times as `cached` is generation: the tokens equal a full pass's argmax, step by step
    (the model shifts its input, so the prediction of position n is read at n of a pass over n + 1 tokens, as the
    benchmark's full pass does)."""
    model = decoding.build_model(kernel, 48)
    prompt = tf.random.stateless_uniform([1, 40], seed=[1, 2], maxval=decoding.VOCAB, dtype=tf.int32)
    generated = sample.generate(model, prompt, 4, 0.0, 0, 1.0, 0, -1)
    ids = prompt
    for _ in range(4):
        logits = model(tf.concat([ids, ids[:, :1]], axis=1), training=False)
        next_id = tf.argmax(logits[:, -1], axis=-1, output_type=tf.int32)
        ids = tf.concat([ids, next_id[:, None]], axis=1)
    assert generated.numpy().tolist() == ids[:, 40:].numpy().tolist()
