"""One decoding protocol: every kernel's decoder has the same start and step signature, and no family overrides
how a layer decodes a prompt (`SelfAttention.prefill`) or a model does (`DecoderLM.prefill`)."""

import inspect

import pytest

import combiner
import routing_transformer
import sparse_transformer
from common.attention import get_decoder
from common.attention.registry import kernel_names
from common.layers import SelfAttention
from common.models import DecoderLM

START = ["x", "q", "k", "v", "cache_length"]
STEP = ["x", "q", "k", "v", "cache", "position"]


def positional(function):
    return [name for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind == parameter.POSITIONAL_OR_KEYWORD]


@pytest.mark.parametrize("kernel", kernel_names())
def test_every_kernel_decodes_through_one_signature(kernel):
    start, step = get_decoder(kernel)
    assert positional(start) == START
    assert positional(step) == STEP


def test_every_registered_kernel_is_one_of_the_zoo_s():
    assert kernel_names() == ["combiner", "dense", "local", "routing", "sparse", "strided"]


@pytest.mark.parametrize("layer", [routing_transformer.RoutingAttention, sparse_transformer.SparseAttention,
                                   combiner.CombinerAttention])
def test_no_family_overrides_how_a_prompt_is_decoded(layer):
    assert layer.prefill is SelfAttention.prefill and layer.decode is SelfAttention.decode


@pytest.mark.parametrize("model", [routing_transformer.RoutingTransformerLM, sparse_transformer.SparseTransformerLM,
                                   combiner.CombinerLM])
def test_no_family_model_overrides_decoding(model):
    assert model.prefill is DecoderLM.prefill and model.decode is DecoderLM.decode
    assert positional(model.prefill) == ["self", "token_ids", "cache_length"]
