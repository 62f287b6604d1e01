"""`python -m apps.demo` end to end on a tiny model (quickstart.gin with the tiny test bindings): it trains,
evaluates, prints held-out bits/byte next to xz -9 on the same bytes with a sentence on their meaning, and a
sample that fits the model's context."""

import re

import pytest

from apps import demo
from tests.apps.train_helpers import (  # noqa: F401  (fixtures)
    corpus, gin_param_args, run_module, tiny_params)


def test_the_demo_trains_evaluates_compares_with_xz_and_samples(corpus, tmp_path):
    params = tiny_params(corpus, train_steps=2, checkpoint_every=2, eval_batches=2)  # context 32 < the sample
    result = run_module("apps.demo", f"--demo_dir={tmp_path / 'demo'}", *gin_param_args(params), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    held_out = re.search(r"held-out \(validation split, first ([\d,]+) bytes\): ([\d.]+) bits/byte; xz -9 on the "
                         r"same bytes: ([\d.]+) bits/byte", out)
    assert held_out, out
    assert int(held_out.group(1).replace(",", "")) == 2 * 2 * 32  # eval_batches x batch x context
    assert "xz -9 still compresses these bytes better" in out or "better than xz -9" in out
    sample = out.split("sample:\n", 1)[1].split("\ncheckpoints:", 1)[0]
    assert sample.startswith(demo.PROMPT) and len(sample.strip()) > len(demo.PROMPT.strip())
    for line in ("checkpoints:", "TensorBoard:", "operative config:", "eval results:"):
        assert line in out
    assert (tmp_path / "demo" / "checkpoints" / "checkpoint").exists()


@pytest.mark.parametrize("bits, xz, expected", [(1.2, 1.5, "better than xz -9 after 1,000 training bytes"),
                                                (2.5, 1.5, "xz -9 still compresses these bytes better")])
def test_the_sentence_says_which_compresses_better(bits, xz, expected):
    assert expected in demo.meaning(bits, xz, 1000)
