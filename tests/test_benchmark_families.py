"""benchmarks.families: the analytic FLOP count against a hand count, and every config builds at a tiny size."""

import pytest

from benchmarks import families


def test_step_flops_matches_hand_count():
    # 1 layer, d=8, 2 heads of 4, ffn 16, vocab 10, length 4, dense: per token 8*64 + 4*8*16 + 2*4*(4*4) + 2*8*10.
    per_token = 512 + 512 + 128 + 160
    assert families.step_flops("dense", 4, hidden=8, heads=2, layers=1, ffn=16, vocab=10) == 3 * 4 * per_token
    # Combiner: segment 128 + 1024 / 128 summaries + 1 local expectation, per head.
    assert families.keys_per_query("combiner", 1024, heads=1) == 128 + 8 + 1
    # Routing at 1024: 4 local heads of 2 x 256, 4 routing heads of 256 + 4 clusters / 2.
    assert families.keys_per_query("routing", 1024) == 4 * 512 + 4 * (256 + 2)


@pytest.mark.parametrize("config", families.TF_CONFIGS)
def test_builds_and_runs_at_tiny_size(config):
    model, ids, loss_of = families.build(config, 256)
    assert float(loss_of(model(ids))) > 0
