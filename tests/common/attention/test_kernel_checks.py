"""The shared kernel checks fail where they should: an effective matrix with weight off its support, a gap in
its support or rows not summing to one is caught."""

import numpy as np
import pytest

from common.attention import dense_attention
from tests.kernel_checks import assert_weights_exactly_on, causal_support, effective_matrix


def test_causal_support_aligns_short_queries_with_the_last_keys():
    np.testing.assert_array_equal(causal_support(2, 4), [[True, True, True, False], [True, True, True, True]])


def test_effective_matrix_of_dense_attention_passes_and_every_defect_is_caught():
    q, k = np.random.default_rng(0).standard_normal((2, 1, 2, 5, 4)).astype(np.float32)
    matrix = effective_matrix(dense_attention, q, k, causal=True)
    support = causal_support(5, 5)
    assert_weights_exactly_on(matrix, support)
    with pytest.raises(AssertionError, match="weight outside the support"):
        assert_weights_exactly_on(effective_matrix(dense_attention, q, k, causal=False), support)
    with pytest.raises(AssertionError, match="no weight on part of the support"):
        assert_weights_exactly_on(matrix, True)
    scaled = matrix * 1.01
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_weights_exactly_on(scaled, support)
