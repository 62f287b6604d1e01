"""benchmarks.routing: the measured step is a real gradient step of each configuration, and the report's
ratios and PASS/FAIL targets follow from the records."""

import pytest

from benchmarks import routing

LENGTHS = (4096, 8192)


def records(routing_ms, peer_ms, routing_mib, peer_mib):
    """Every configuration at both lengths, each time doubling with the length; the dense layer at twice the
    routing layer's time and four times its memory."""
    out = []
    for length in LENGTHS:
        scale = length / LENGTHS[-1]
        for config in routing.CONFIGS:
            time_ms = scale * {"routing_model": routing_ms, "pytorch_model": peer_ms,
                               "dense_layer": 100.0}.get(config, 50.0)
            memory = {"routing_model": routing_mib, "pytorch_model": peer_mib, "dense_layer": 400.0}.get(config, 100.0)
            out.append({"config": config, "length": length, "status": "ok", "time_ms": time_ms,
                        "memory_mib": memory})
    return out


def test_report_ratios_and_targets():
    text = routing.report(records(routing_ms=100.0, peer_ms=250.0, routing_mib=300.0, peer_mib=200.0),
                          routing.parse_args([]), wall_s=1.0)
    assert "| 8192 | 2.50x | 0.67x | 2.00x | 4.00x |" in text  # peer / zoo speed and memory; dense / routing layer
    assert "tokens/s at 8192 at least 1.2x the PyTorch package: PASS (2.50x)" in text
    assert "peak memory at 8192 no higher than the PyTorch package: FAIL (PyTorch/zoo 0.67x)" in text
    assert "exponent <= 1.15 at fixed window): PASS (1.00)" in text
    slow = routing.report(records(routing_ms=300.0, peer_ms=250.0, routing_mib=100.0, peer_mib=200.0),
                          routing.parse_args([]), wall_s=1.0)
    assert "PyTorch package: FAIL (0.83x)" in slow and "PyTorch package: PASS (PyTorch/zoo 2.00x)" in slow


def test_unmeasured_peer_is_said_not_measured():
    rows = [dict(r, status="error") if r["config"] == "pytorch_model" else r
            for r in records(100.0, 250.0, 300.0, 200.0)]
    text = routing.report(rows, routing.parse_args([]), wall_s=1.0)
    assert "at least 1.2x the PyTorch package: not measured" in text and "| 8192 | n/a | n/a |" in text


@pytest.mark.parametrize("config", ["routing_layer", "routing_model"])
def test_measured_step_differentiates_every_weight(config):
    layer, inputs, loss_of = routing.build(config, 256, 64)
    result = routing.measure_step(layer, inputs, loss_of, repeats=2, jit=False)
    assert len(result["times_ms"]) == 2 and result["time_ms"] > 0
    trainable = layer.trainable_variables
    assert trainable and all(v.shape.num_elements() > 0 for v in trainable)
    # The k-means commitment loss is part of the step: the routing layers' losses are collected.
    assert layer.losses
