"""Block layouts (examples/block_layouts/layouts.py) against hand-worked arrays, OpenAI's fixed layout and §1.5 counts."""

import numpy as np
import pytest

from examples.block_layouts import layouts


def grid(*rows):
    """A [num_blocks, num_blocks] layout from rows of '0'/'1' (spaces are for reading only)."""
    return np.array([[c == "1" for c in row.replace(" ", "")] for row in rows])


def assert_layout(layout, *heads):
    assert layout.dtype == bool
    np.testing.assert_array_equal(layout, np.stack(heads))


def is_causal(layout):
    return not np.triu(layout, 1).any()


# --- dense ---------------------------------------------------------------------------------------------------

def test_dense_bidirectional_is_all_ones():
    assert_layout(layouts.dense_layout(2, 3), *[grid("111", "111", "111")] * 2)


def test_dense_unidirectional_is_lower_triangle():
    assert_layout(layouts.dense_layout(1, 3, attention="unidirectional"), grid("100", "110", "111"))


# --- fixed ---------------------------------------------------------------------------------------------------

def test_fixed_bidirectional():
    # Windows [0, 4) and [4, 8); global column 4 - 1 = 3 of each window (blocks 3 and 7) seen by every row.
    assert_layout(layouts.fixed_layout(1, 8),
                  grid("1111 0001", "1111 0001", "1111 0001", "1111 0001",
                       "0001 1111", "0001 1111", "0001 1111", "0001 1111"))


def test_fixed_unidirectional():
    assert_layout(layouts.fixed_layout(1, 8, attention="unidirectional"),
                  grid("1000 0000", "1100 0000", "1110 0000", "1111 0000",
                       "0001 1000", "0001 1100", "0001 1110", "0001 1111"))


def test_fixed_horizontal():
    # The global blocks 3 and 7 also see every key block.
    assert_layout(layouts.fixed_layout(1, 8, horizontal_global_attention=True),
                  grid("1111 0001", "1111 0001", "1111 0001", "1111 1111",
                       "0001 1111", "0001 1111", "0001 1111", "1111 1111"))


def test_fixed_short_final_window():
    # 10 blocks: the final window [8, 10) is short; its global column is min(8 + 3, 10 - 1) = 9.
    bidirectional = grid("1111 0001 01", "1111 0001 01", "1111 0001 01", "1111 0001 01",
                         "0001 1111 01", "0001 1111 01", "0001 1111 01", "0001 1111 01",
                         "0001 0001 11", "0001 0001 11")
    assert_layout(layouts.fixed_layout(1, 10), bidirectional)
    assert_layout(layouts.fixed_layout(1, 10, attention="unidirectional"), np.tril(bidirectional))


def test_fixed_short_final_window_is_clamped():
    # Two global blocks at offset 2 of each window: columns 2, 3, 6, 7; the short window's pair would start at
    # 8 + 2 = 10, past the end, so it moves to 10 - 2 = 8 (columns 8 and 9).
    assert_layout(layouts.fixed_layout(1, 10, num_global_blocks=2),
                  grid("1111 0011 11", "1111 0011 11", "1111 0011 11", "1111 0011 11",
                       "0011 1111 11", "0011 1111 11", "0011 1111 11", "0011 1111 11",
                       "0011 0011 11", "0011 0011 11"))


# Two global blocks per window, unidirectional: each global column is seen from its own row down (the layout
# stays causal), which is also OpenAI's fixed layout with vert_size=2.
TWO_GLOBAL_UNIDIRECTIONAL = grid("1000 0000", "1100 0000", "1110 0000", "1111 0000",
                                 "0011 1000", "0011 1100", "0011 1110", "0011 1111")


def test_fixed_two_global_blocks_unidirectional():
    assert_layout(layouts.fixed_layout(1, 8, num_global_blocks=2, attention="unidirectional"),
                  TWO_GLOBAL_UNIDIRECTIONAL)


def test_fixed_different_global_patterns_per_head():
    # Head h's global column is 4 - (1 + h % 2) = 3 or 2 in each window; head 2 repeats head 0.
    head0 = grid("1111 0001", "1111 0001", "1111 0001", "1111 0001",
                 "0001 1111", "0001 1111", "0001 1111", "0001 1111")
    head1 = grid("1111 0010", "1111 0010", "1111 0010", "1111 0010",
                 "0010 1111", "0010 1111", "0010 1111", "0010 1111")
    assert_layout(layouts.fixed_layout(3, 8, num_different_global_patterns=2, different_layout_per_head=True),
                  head0, head1, head0)


def test_fixed_copies_head_zero_without_per_head_layouts():
    layout = layouts.fixed_layout(3, 8)
    assert (layout == layout[0]).all()


# --- OpenAI fixed ---------------------------------------------------------------------------------------------

def test_openai_fixed_vert_size_two():
    # indices = [3, 2, 1, 0].reshape(-1, 2)[:1] = [[3, 2]]: summary block offsets 2 and 3 of every window.
    assert_layout(layouts.openai_fixed_layout(1, 8, local_blocks=4, vert_size=2, num_verts=1),
                  TWO_GLOBAL_UNIDIRECTIONAL)


def test_openai_fixed_heads_take_distinct_summaries():
    # indices = [3, 2, 1, 0].reshape(-1, 1)[:2] = [[3], [2]]: head 0 offset 3, head 1 offset 2.
    assert_layout(layouts.openai_fixed_layout(2, 8, local_blocks=4, vert_size=1, num_verts=2),
                  grid("1000 0000", "1100 0000", "1110 0000", "1111 0000",
                       "0001 1000", "0001 1100", "0001 1110", "0001 1111"),
                  grid("1000 0000", "1100 0000", "1110 0000", "1111 0000",
                       "0010 1000", "0010 1100", "0010 1110", "0010 1111"))


@pytest.mark.parametrize("num_blocks", [32, 34])
@pytest.mark.parametrize("vert_size, num_verts", [(1, 4), (1, 2), (1, 1), (2, 2), (4, 1)])
def test_deepspeed_fixed_equals_openai_fixed(num_blocks, vert_size, num_verts):
    # Reference §4, verified claim: l=128, bs=32 (4 local blocks), 4 heads, 32 blocks and the 34-block partial
    # window; c=32 is vert_size=1, the other rows extend it to wider summaries.
    openai = layouts.openai_fixed_layout(4, num_blocks, local_blocks=4, vert_size=vert_size, num_verts=num_verts)
    deepspeed = layouts.fixed_layout(4, num_blocks, num_local_blocks=4, num_global_blocks=vert_size,
                                     attention="unidirectional", num_different_global_patterns=num_verts,
                                     different_layout_per_head=True)
    np.testing.assert_array_equal(deepspeed, openai)


@pytest.mark.parametrize("num_verts", [1, 2, 4])
def test_openai_fixed_counts_of_section_1_5(num_verts):
    # n=1024, bs=32, l=128, c=32: 32 blocks, local_blocks = l/bs = 4 and vert_size = c/bs = 1. The count does not
    # depend on which summary offset a head takes, so any num_verts dividing the 4 heads (at most 4/1) gives 192.
    layout = layouts.openai_fixed_layout(4, 32, local_blocks=4, vert_size=1, num_verts=num_verts)
    assert (layout.sum(axis=(1, 2)) == 192).all()
    # With the kernel's in-block tril, the element mask has the table's 180,736 allowed pairs per head.
    mask = layouts.layout_to_mask(layout, 32) & np.tril(np.ones((1024, 1024), dtype=bool))
    assert (mask.sum(axis=(1, 2)) == 180_736).all()


def test_openai_fixed_matches_element_formula():
    # Reference §1.3: causal and (same window of l or key mod l in head h's summary [l - (h+1)c, l - hc)).
    length, l, c = 1024, 128, 32
    layout = layouts.openai_fixed_layout(4, 32, local_blocks=4, vert_size=1, num_verts=4)
    query, key = np.arange(length)[:, None], np.arange(length)[None, :]
    for h in range(4):
        summary = (key % l >= l - (h + 1) * c) & (key % l < l - h * c)
        expected = (key <= query) & ((query // l == key // l) | summary)
        np.testing.assert_array_equal(layouts.layout_to_mask(layout[h], 32) & (key <= query), expected)


# --- variable -------------------------------------------------------------------------------------------------

def test_variable_windows_and_global_index():
    # Windows of 2, then 3 repeated: [0, 2), [2, 5), [5, 8); global block 0.
    bidirectional = grid("1100 0000", "1100 0000", "1011 1000", "1011 1000",
                         "1011 1000", "1000 0111", "1000 0111", "1000 0111")
    assert_layout(layouts.variable_layout(1, 8, local_window_blocks=(2, 3)), bidirectional)
    assert_layout(layouts.variable_layout(1, 8, local_window_blocks=(2, 3), attention="unidirectional"),
                  np.tril(bidirectional))


def test_variable_global_range_horizontal():
    # Global range [2, 4) as rows and columns, windows [0, 4) and [4, 8).
    assert_layout(layouts.variable_layout(1, 8, global_block_indices=(2,), global_block_end_indices=(4,),
                                          horizontal_global_attention=True),
                  grid("1111 0000", "1111 0000", "1111 1111", "1111 1111",
                       "0011 1111", "0011 1111", "0011 1111", "0011 1111"))


def test_variable_global_range_unidirectional_and_out_of_range():
    # Range [1, 3) seen from each column down; index 9 is past the 6 blocks and ignored.
    assert_layout(layouts.variable_layout(1, 6, local_window_blocks=(3,), global_block_indices=(1, 9),
                                          global_block_end_indices=(3, 10), attention="unidirectional"),
                  grid("100 000", "110 000", "111 000", "011 100", "011 110", "011 111"))


def test_variable_random_blocks_ignore_causality():
    # The DeepSpeed quirk: with a random block in every column of every row, unidirectional is all ones.
    assert layouts.variable_layout(1, 6, num_random_blocks=6, attention="unidirectional", seed=0).all()


# --- bigbird --------------------------------------------------------------------------------------------------

BIGBIRD_NO_RANDOM = grid("111111", "111000", "111100", "101110", "100111", "100011")


def test_bigbird_window_and_global():
    assert_layout(layouts.bigbird_layout(1, 6, num_random_blocks=0), BIGBIRD_NO_RANDOM)
    assert_layout(layouts.bigbird_layout(1, 6, num_random_blocks=0, attention="unidirectional"),
                  np.tril(BIGBIRD_NO_RANDOM))


def test_bigbird_random_blocks_add_to_window_and_global():
    layout = layouts.bigbird_layout(1, 6, num_random_blocks=2, seed=0)
    assert (layout[0] >= BIGBIRD_NO_RANDOM).all()
    assert layouts.bigbird_layout(1, 6, num_random_blocks=6, seed=0).all()


def test_bigbird_unidirectional_random_fits_short_rows():
    # Row 0 has one allowed key block, fewer than num_random_blocks; it gets that one.
    layout = layouts.bigbird_layout(1, 6, num_random_blocks=6, attention="unidirectional", seed=0)
    assert_layout(layout, np.tril(np.ones((6, 6), dtype=bool)))


# --- longformer and sliding window ----------------------------------------------------------------------------

def test_longformer_window_and_global():
    bidirectional = grid("111000", "111000", "111111", "001110", "001111", "001011")
    assert_layout(layouts.longformer_layout(1, 6, global_block_indices=(2,)), bidirectional)
    assert_layout(layouts.longformer_layout(1, 6, global_block_indices=(2,), attention="unidirectional"),
                  np.tril(bidirectional))


def test_longformer_global_range():
    assert_layout(layouts.longformer_layout(1, 6, global_block_indices=(1,), global_block_end_indices=(3,)),
                  grid("111000", "111111", "111111", "011110", "011111", "011011"))


def test_sliding_window():
    assert_layout(layouts.sliding_window_layout(1, 5), grid("10000", "11000", "01100", "00110", "00011"))
    assert_layout(layouts.sliding_window_layout(1, 5, attention="bidirectional"),
                  grid("11000", "11100", "01110", "00111", "00011"))


def test_sliding_window_even_size_acts_like_next_odd():
    np.testing.assert_array_equal(layouts.sliding_window_layout(2, 6, num_sliding_window_blocks=4),
                                  layouts.sliding_window_layout(2, 6, num_sliding_window_blocks=5))


# --- properties of every builder ------------------------------------------------------------------------------

UNIDIRECTIONAL = {
    "dense": lambda: layouts.dense_layout(2, 10, attention="unidirectional"),
    "fixed": lambda: layouts.fixed_layout(4, 10, num_local_blocks=4, num_global_blocks=2,
                                          attention="unidirectional", num_different_global_patterns=2,
                                          different_layout_per_head=True),
    "variable": lambda: layouts.variable_layout(2, 10, local_window_blocks=(2, 3), global_block_indices=(1, 6),
                                                global_block_end_indices=(3, 9), attention="unidirectional"),
    "bigbird": lambda: layouts.bigbird_layout(2, 10, num_random_blocks=3, num_global_blocks=2,
                                              attention="unidirectional", different_layout_per_head=True, seed=0),
    "longformer": lambda: layouts.longformer_layout(2, 10, global_block_indices=(0, 5),
                                                    attention="unidirectional"),
    "sliding_window": lambda: layouts.sliding_window_layout(2, 10, num_sliding_window_blocks=5),
    "openai_fixed": lambda: layouts.openai_fixed_layout(4, 10, local_blocks=4, vert_size=2, num_verts=2),
}


@pytest.mark.parametrize("name", sorted(UNIDIRECTIONAL))
def test_unidirectional_layouts_are_causal_and_keep_the_diagonal(name):
    layout = UNIDIRECTIONAL[name]()
    assert layout.dtype == bool and layout.shape[1:] == (10, 10)
    assert is_causal(layout)
    assert np.diagonal(layout, axis1=1, axis2=2).all()


RANDOM = {
    "variable": lambda seed, per_head: layouts.variable_layout(4, 16, num_random_blocks=2,
                                                               different_layout_per_head=per_head, seed=seed),
    "bigbird": lambda seed, per_head: layouts.bigbird_layout(4, 16, num_random_blocks=2,
                                                             different_layout_per_head=per_head, seed=seed),
}


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_random_layouts_are_reproducible_from_the_seed(name):
    build = RANDOM[name]
    np.testing.assert_array_equal(build(7, True), build(7, True))
    assert (build(7, True) != build(8, True)).any()


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_random_layouts_per_head(name):
    build = RANDOM[name]
    shared, per_head = build(0, False), build(0, True)
    assert (shared == shared[0]).all()
    assert (per_head != per_head[0]).any()


# --- element masks --------------------------------------------------------------------------------------------

def test_layout_to_mask_expands_blocks():
    mask = layouts.layout_to_mask(grid("10", "11"), 2)
    np.testing.assert_array_equal(mask, grid("1100", "1100", "1111", "1111"))


def test_pattern_to_layout_any_element_turns_a_block_on():
    mask = np.zeros((2, 4, 4), dtype=bool)
    mask[0, 1, 2] = True
    mask[1, 3, 0] = True
    assert_layout(layouts.pattern_to_layout(mask, 2), grid("01", "00"), grid("00", "10"))
    np.testing.assert_array_equal(layouts.pattern_to_layout(mask[0], 2), grid("01", "00"))


def test_pattern_layout_round_trip():
    layout = layouts.bigbird_layout(3, 8, num_random_blocks=2, different_layout_per_head=True, seed=1)
    mask = layouts.layout_to_mask(layout, 4)
    assert mask.dtype == bool and mask.shape == (3, 32, 32)
    np.testing.assert_array_equal(layouts.pattern_to_layout(mask, 4), layout)


# --- errors ---------------------------------------------------------------------------------------------------

ERRORS = [
    (layouts.dense_layout, dict(num_heads=0, num_blocks=4), "num_heads"),
    (layouts.dense_layout, dict(num_heads=1, num_blocks=2.0), "num_blocks"),
    (layouts.dense_layout, dict(num_heads=1, num_blocks=4, attention="causal"), "attention"),
    (layouts.fixed_layout, dict(num_heads=1, num_blocks=8, num_local_blocks=0), "num_local_blocks"),
    (layouts.fixed_layout, dict(num_heads=1, num_blocks=8, num_global_blocks=True), "num_global_blocks"),
    (layouts.fixed_layout, dict(num_heads=1, num_blocks=8, num_different_global_patterns=0),
     "num_different_global_patterns"),
    (layouts.fixed_layout, dict(num_heads=1, num_blocks=8, attention="both"), "attention"),
    (layouts.fixed_layout, dict(num_heads=1, num_blocks=8, num_global_blocks=3), "divisible by num_global"),
    (layouts.fixed_layout, dict(num_heads=1, num_blocks=1, num_global_blocks=2), r"num_blocks \(1\)"),
    (layouts.fixed_layout, dict(num_heads=1, num_blocks=8, attention="unidirectional",
                                horizontal_global_attention=True), "bidirectional"),
    (layouts.fixed_layout, dict(num_heads=2, num_blocks=8, num_different_global_patterns=2),
     "different_layout_per_head"),
    (layouts.fixed_layout, dict(num_heads=2, num_blocks=8, num_global_blocks=2, num_different_global_patterns=3,
                                different_layout_per_head=True), "must not exceed"),
    (layouts.variable_layout, dict(num_heads=1, num_blocks=4, num_random_blocks=-1), "num_random_blocks"),
    (layouts.variable_layout, dict(num_heads=1, num_blocks=4, num_random_blocks=5), r"num_blocks \(4\)"),
    (layouts.variable_layout, dict(num_heads=1, num_blocks=4, local_window_blocks=()), "local_window_blocks"),
    (layouts.variable_layout, dict(num_heads=1, num_blocks=4, local_window_blocks=(2, 0)),
     r"local_window_blocks\[1\]"),
    (layouts.variable_layout, dict(num_heads=1, num_blocks=4, global_block_indices=(-1,)),
     r"global_block_indices\[0\]"),
    (layouts.variable_layout, dict(num_heads=1, num_blocks=4, global_block_indices=(0, 2),
                                   global_block_end_indices=(1,)), "one end per start"),
    (layouts.variable_layout, dict(num_heads=1, num_blocks=4, global_block_indices=(2,),
                                   global_block_end_indices=(2,)), "smaller than"),
    (layouts.variable_layout, dict(num_heads=1, num_blocks=4, global_block_indices=(0,),
                                   global_block_end_indices=(0.5,)), r"global_block_end_indices\[0\]"),
    (layouts.variable_layout, dict(num_heads=1, num_blocks=4, attention="forward"), "attention"),
    (layouts.variable_layout, dict(num_heads=1, num_blocks=4, attention="unidirectional",
                                   horizontal_global_attention=True), "bidirectional"),
    (layouts.bigbird_layout, dict(num_heads=1, num_blocks=4, num_random_blocks=-1), "num_random_blocks"),
    (layouts.bigbird_layout, dict(num_heads=1, num_blocks=4, num_sliding_window_blocks=0),
     "num_sliding_window_blocks"),
    (layouts.bigbird_layout, dict(num_heads=1, num_blocks=4, num_global_blocks=0), "num_global_blocks"),
    (layouts.bigbird_layout, dict(num_heads=1, num_blocks=4, num_random_blocks=5), "num_random_blocks"),
    (layouts.bigbird_layout, dict(num_heads=1, num_blocks=4, num_sliding_window_blocks=5),
     "num_sliding_window_blocks"),
    (layouts.bigbird_layout, dict(num_heads=1, num_blocks=4, num_global_blocks=5), "num_global_blocks"),
    (layouts.bigbird_layout, dict(num_heads=1, num_blocks=4, attention="bi"), "attention"),
    (layouts.longformer_layout, dict(num_heads=1, num_blocks=4, num_sliding_window_blocks=0),
     "num_sliding_window_blocks"),
    (layouts.longformer_layout, dict(num_heads=1, num_blocks=2), r"num_blocks \(2\)"),
    (layouts.longformer_layout, dict(num_heads=1, num_blocks=4, global_block_indices=(1,),
                                     global_block_end_indices=(3, 4)), "one end per start"),
    (layouts.longformer_layout, dict(num_heads=1, num_blocks=4, attention="uni"), "attention"),
    (layouts.sliding_window_layout, dict(num_heads=1, num_blocks=4, num_sliding_window_blocks=0),
     "num_sliding_window_blocks"),
    (layouts.sliding_window_layout, dict(num_heads=1, num_blocks=2), r"num_blocks \(2\)"),
    (layouts.sliding_window_layout, dict(num_heads=1, num_blocks=4, attention=None), "attention"),
    (layouts.openai_fixed_layout, dict(num_heads=1, num_blocks=8, local_blocks=0, vert_size=1, num_verts=1),
     "local_blocks"),
    (layouts.openai_fixed_layout, dict(num_heads=1, num_blocks=8, local_blocks=4, vert_size=0, num_verts=1),
     "vert_size"),
    (layouts.openai_fixed_layout, dict(num_heads=1, num_blocks=8, local_blocks=4, vert_size=1, num_verts=0),
     "num_verts"),
    (layouts.openai_fixed_layout, dict(num_heads=1, num_blocks=8, local_blocks=4, vert_size=5, num_verts=1),
     r"vert_size \(5\) must not exceed local_blocks"),
    (layouts.openai_fixed_layout, dict(num_heads=1, num_blocks=8, local_blocks=4, vert_size=3, num_verts=1),
     r"local_blocks \(4\) must be divisible by vert_size"),
    (layouts.openai_fixed_layout, dict(num_heads=3, num_blocks=8, local_blocks=4, vert_size=1, num_verts=2),
     r"num_heads \(3\) must be divisible by num_verts"),
    (layouts.openai_fixed_layout, dict(num_heads=4, num_blocks=8, local_blocks=4, vert_size=2, num_verts=4),
     r"num_verts \(4\) must not exceed"),
    (layouts.pattern_to_layout, dict(mask=np.ones((4, 4)), block_size=0), "block_size"),
    (layouts.pattern_to_layout, dict(mask=np.ones((6, 6)), block_size=4), "length 6 .* block_size 4"),
    (layouts.pattern_to_layout, dict(mask=np.ones(4), block_size=2), "shape"),
    (layouts.layout_to_mask, dict(layout=np.ones((2, 2)), block_size=-1), "block_size"),
]


@pytest.mark.parametrize("build, kwargs, match", ERRORS)
def test_errors(build, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(**kwargs)
