"""The pattern grammar and `attention_mask`: the reference's pair counts (section 1.5), every pattern against a
numpy formula written from the definitions, the released code's fixed block layout, and the option checks
(ValueErrors naming the constraint) of every entry point."""

import numpy as np
import pytest
import tensorflow as tf

from sparse_transformer import SparseAttention, SparseTransformerLM, attention_mask, sparse_attention
from sparse_transformer.patterns import parse_pattern


def reference_mask(length, pattern, stride=None, summary=None, causal=True, num_heads=1, num_summary_patterns=1):
    """[heads, length, length] from the definitions (numpy broadcasting; i = query, j = key, l = stride)."""
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    l, c = stride, summary
    groups = [[name.strip() for name in group.split("+")] for group in pattern.split("|")]
    heads_per_group = num_heads // len(groups)
    masks = []
    for h in range(num_heads):
        names = groups[h // heads_per_group]
        atoms = [atom for name in names for atom in (("block", "summary") if name == "fixed" else (name,))]
        keep = np.zeros((length, length), bool)
        for atom in atoms:
            if atom == "all":
                keep |= True
            elif atom == "local":
                keep |= ((i - j >= 0) & (i - j < l)) if causal else (np.abs(i - j) < l)
            elif atom == "strided":
                keep |= (i - j) % l == 0
            elif atom == "block":
                keep |= i // l == j // l
            elif atom == "summary":
                first = l - (h % num_summary_patterns + 1) * c
                keep |= (j % l >= first) & (j % l < first + c)
            else:
                raise AssertionError(atom)
        masks.append(keep & (j <= i) if causal else keep)
    return np.stack(masks)


def mask(length, pattern, **options):
    return np.asarray(attention_mask(length, pattern=pattern, **options))


# --- the reference's counts (section 1.5) ------------------------------------------------------------------

@pytest.mark.parametrize("length,stride,pattern,count", [
    (1024, 32, "all", 524_800), (1024, 32, "local", 32_272), (1024, 32, "strided", 16_896),
    (1024, 32, "local+strided", 48_144),
    (3072, 96, "all", 4_720_128), (3072, 96, "local", 290_352), (3072, 96, "strided", 50_688),
    (3072, 96, "local+strided", 337_968),
])
def test_pair_counts_match_the_reference_table(length, stride, pattern, count):
    assert mask(length, pattern, stride=stride).sum() == count


@pytest.mark.parametrize("num_summary_patterns", [1, 2, 4])
def test_fixed_pair_count_is_the_same_for_every_head(num_summary_patterns):
    """Fixed, n=1024, l=128, c=32: 180,736 pairs per head whichever summary sub-block the head has. The
    released code's verified setting is 4 heads with num_verts=4 (num_summary_patterns=4): 4 distinct
    summaries, each head 180,736 = 8 x 128 x 129 / 2 in its own block + 32 x 128 x 28 summary pairs."""
    got = mask(1024, "fixed", stride=128, summary=32, num_heads=4,
               num_summary_patterns=num_summary_patterns).reshape(4, -1).sum(-1)
    assert got.tolist() == [180_736] * 4
    assert 8 * 128 * 129 // 2 + 32 * 128 * 28 == 180_736


def test_local_has_stride_keys_including_self_and_strided_every_stride_th():
    """The released code's local keeps l keys (self included; the paper's A1 has l + 1) and strided keeps
    floor(i / l) + 1 keys, as loops over the definitions."""
    length, l = 37, 6
    local, strided = mask(length, "local", stride=l)[0], mask(length, "strided", stride=l)[0]
    for i in range(length):
        assert set(np.flatnonzero(local[i])) == {j for j in range(length) if i - l < j <= i}
        assert set(np.flatnonzero(strided[i])) == {j for j in range(i + 1) if (i - j) % l == 0}
        assert strided[i].sum() == i // l + 1


def test_fixed_head_zero_is_the_papers_fixed_pattern():
    """Paper: A1 = {j : floor(j / l) = floor(i / l)}, A2 = {j : j mod l in {l - c, ..., l - 1}}, j <= i."""
    length, l, c = 29, 7, 2
    got = mask(length, "fixed", stride=l, summary=c)[0]
    for i in range(length):
        want = {j for j in range(i + 1) if j // l == i // l or j % l >= l - c}
        assert set(np.flatnonzero(got[i])) == want


# --- every pattern against the numpy formula ---------------------------------------------------------------

MASK_CASES = [
    # (pattern, num_heads, num_summary_patterns)
    ("all", 1, 1), ("local", 1, 1), ("strided", 1, 1), ("block", 1, 1), ("summary", 4, 2), ("summary", 3, 3),
    ("fixed", 4, 4), ("fixed", 2, 1), ("local+strided", 1, 1), ("strided+block", 2, 1),
    ("all+summary", 2, 2), ("local|strided", 2, 1), ("local|strided", 6, 1), ("fixed|local+strided", 4, 2),
    ("local|block|summary", 6, 3), ("all|fixed", 2, 1),
]
SIZES = [(24, 4, 1), (13, 5, 2), (40, 8, 2), (3, 4, 1)]  # (length, stride, summary): padded and not


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("pattern,num_heads,num_summary_patterns", MASK_CASES,
                         ids=[f"{p}-{h}h-{s}s" for p, h, s in MASK_CASES])
def test_mask_equals_the_definition(pattern, num_heads, num_summary_patterns, causal):
    for length, stride, summary in SIZES:
        if summary * num_summary_patterns > stride:
            continue
        options = dict(stride=stride, summary=summary, causal=causal, num_heads=num_heads,
                       num_summary_patterns=num_summary_patterns)
        got = mask(length, pattern, **options)
        assert got.shape == (num_heads, length, length) and got.dtype == bool
        np.testing.assert_array_equal(got, reference_mask(length, pattern, **options),
                                      err_msg=f"length={length} stride={stride} summary={summary}")


def test_causal_mask_is_the_bidirectional_one_below_the_diagonal():
    for pattern in ("local", "strided", "fixed", "local+strided"):
        options = dict(stride=4, summary=1, num_heads=2, num_summary_patterns=2)
        below = np.tril(np.ones((19, 19), bool))
        np.testing.assert_array_equal(mask(19, pattern, causal=True, **options),
                                      mask(19, pattern, causal=False, **options) & below)


def test_bidirectional_patterns_are_symmetric_except_summary():
    for pattern in ("all", "local", "strided", "block", "local+strided|block"):
        got = mask(21, pattern, stride=4, causal=False, num_heads=2)
        np.testing.assert_array_equal(got, got.transpose(0, 2, 1))
    assert not np.array_equal(*(lambda m: (m, m.T))(mask(21, "summary", stride=4, summary=1, causal=False)[0]))


def test_every_pattern_with_self_keeps_the_diagonal():
    """No fully masked row for the patterns that contain self (all but summary alone)."""
    for pattern in ("all", "local", "strided", "block", "fixed", "local+strided", "local|strided"):
        got = mask(23, pattern, stride=5, summary=2, num_heads=2)
        assert got[:, np.arange(23), np.arange(23)].all()


def test_head_split_gives_each_group_its_pattern_in_order():
    options = dict(stride=4, summary=1, num_summary_patterns=1)
    split = mask(16, "local|strided|fixed", num_heads=6, **options)
    for heads, pattern in ((slice(0, 2), "local"), (slice(2, 4), "strided"), (slice(4, 6), "fixed")):
        np.testing.assert_array_equal(split[heads], np.repeat(mask(16, pattern, **options), 2, axis=0))


def test_summary_sub_blocks_are_distinct_and_counted_from_the_end():
    """Head h takes [l - (p + 1) c, l - p c) with p = h mod num_summary_patterns: head 0 the last c."""
    got = mask(16, "summary", stride=8, summary=2, causal=False, num_heads=8, num_summary_patterns=4)
    for h in range(8):
        p = h % 4
        columns = np.flatnonzero(got[h, 0])
        assert columns.tolist() == [b + o for b in (0, 8) for o in range(8 - (p + 1) * 2, 8 - p * 2)]


@pytest.mark.parametrize("length,vertsize,num_verts", [(40, 1, 4), (34, 1, 4), (40, 2, 2), (24, 4, 1)])
def test_fixed_equals_the_released_block_layout(length, vertsize, num_verts):
    """Port of openai/sparse_attention's `fixed` layout (section 1.3): per head, summary block-columns
    `layout[:, idx::l_b]` of the row indices[h % num_verts], the whole window of each query block, tril; then
    the diagonal tril inside blocks. It equals fixed with c = vertsize x block size (34: a partial window)."""
    block, stride, heads = 2, 8, 4
    l_b, blocks = stride // block, length // block
    indices = np.arange(l_b - 1, -1, -1).reshape(-1, vertsize)[:num_verts]
    released = []
    for h in range(heads):
        layout = np.zeros((blocks, blocks), bool)
        for idx in indices[h % num_verts]:
            layout[:, idx::l_b] = True
        for row in range(blocks):
            window = row // l_b
            layout[row, window * l_b:(window + 1) * l_b] = True
        layout = np.tril(layout)
        released.append(np.kron(layout, np.ones((block, block), bool)) & np.tril(np.ones((length, length), bool)))
    got = mask(length, "fixed", stride=stride, summary=vertsize * block, num_heads=heads,
               num_summary_patterns=num_verts)
    np.testing.assert_array_equal(got, np.stack(released))


# --- the grammar --------------------------------------------------------------------------------------------

def test_parse_pattern_expands_fixed_drops_repeats_and_strips_spaces():
    assert parse_pattern("fixed") == (("block", "summary"),)
    assert parse_pattern(" local + strided | fixed ") == (("local", "strided"), ("block", "summary"))
    assert parse_pattern("local+local+strided+block+fixed") == (("local", "strided", "block", "summary"),)


def test_all_needs_no_stride():
    np.testing.assert_array_equal(mask(7, "all")[0], np.tril(np.ones((7, 7), bool)))
    assert mask(7, "all", causal=False).all()


# --- bad options, at every entry point ------------------------------------------------------------------------

BAD_OPTIONS = [
    ("unknown_pattern", dict(pattern="dilated"), r"unknown attention pattern 'dilated' in 'dilated'; choose from"),
    ("unknown_in_union", dict(pattern="local+b_all"), r"unknown attention pattern 'b_all'"),
    ("empty_atom", dict(pattern="local+"), r"unknown attention pattern ''"),
    ("empty_pattern", dict(pattern=""), r"pattern must be a non-empty string"),
    ("summary_too_wide", dict(pattern="fixed", summary=3, num_summary_patterns=2),
     r"summary \(3\) times num_summary_patterns \(2\) must not exceed the stride \(4\)"),
    ("summary_wider_than_stride", dict(pattern="summary", summary=5), r"must not exceed the stride \(4\)"),
    ("heads_not_divisible_by_summaries", dict(pattern="fixed", num_heads=6, num_summary_patterns=4, summary=1),
     r"num_heads \(6\) must be divisible by num_summary_patterns \(4\)"),
    ("heads_not_divisible_by_groups", dict(pattern="local|strided|block", num_heads=4),
     r"num_heads \(4\) must be divisible by the 3 head groups of pattern 'local\|strided\|block'"),
    ("zero_stride", dict(pattern="local", stride=0), r"stride must be an integer >= 1; got 0"),
    ("negative_stride", dict(pattern="strided", stride=-4), r"stride must be an integer >= 1; got -4"),
    ("missing_stride", dict(pattern="block", stride=None), r"stride must be an integer >= 1; got None"),
    ("float_stride", dict(pattern="local", stride=4.0), r"stride must be an integer >= 1; got 4.0"),
    ("missing_summary", dict(pattern="fixed", summary=None), r"summary must be an integer >= 1; got None"),
    ("zero_summary_patterns", dict(pattern="fixed", num_summary_patterns=0),
     r"num_summary_patterns must be an integer >= 1; got 0"),
]
DEFAULTS = dict(stride=4, summary=1, num_heads=2, num_summary_patterns=1)


def _mask_entry(options):
    attention_mask(8, **options)


def _kernel_entry(options):
    options = dict(options)
    q = tf.zeros((1, options.pop("num_heads"), 8, 4))
    sparse_attention(q, q, q, **options)


def _layer_entry(options):
    SparseAttention(key_dim=4, **options)


def _model_entry(options):
    options = dict(options)
    positions = (8,) if options["stride"] is None else None  # text positions need a stride (test_model.py)
    SparseTransformerLM(vocabulary_size=8, num_layers=1, hidden_dim=12, max_length=8, position_axes=positions,
                        attention_schedule=options.pop("pattern"), **options)


ENTRY_POINTS = {"attention_mask": _mask_entry, "sparse_attention": _kernel_entry, "SparseAttention": _layer_entry,
                "SparseTransformerLM": _model_entry}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("options,match", [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_bad_options_raise_a_value_error_naming_the_constraint(entry, options, match):
    with pytest.raises(ValueError, match=match):
        ENTRY_POINTS[entry](dict(DEFAULTS, **options))


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_good_options_pass(entry):
    """The control for the cases above."""
    for options in (dict(pattern="fixed", summary=2, num_summary_patterns=2), dict(pattern="local|strided"),
                    dict(pattern="all", stride=None), dict(pattern="local+strided|fixed", summary=4)):
        ENTRY_POINTS[entry](dict(DEFAULTS, **options))
