"""Where each atomic pattern's keys are contiguous: the query groupings and key gathers of `sparse_attention`.

Groupings of the queries: rows, consecutive blocks of `stride` positions (local, block); residues, the classes
of equal position mod `stride`, the released code's `strided_transpose` (strided); single, one group of every
query (all, summary). A part is built for a range of queries [start, stop) (multiples of the stride) and
takes from k and v only the keys that range can see, so that chunks of queries cost what they use.
"""

from keras import ops

from sparse_transformer import patterns

GROUPING = {"all": "single", "summary": "single", "local": "rows", "block": "rows", "strided": "residues"}


def to_groups(x, grouping, stride, axis):
    """Splits the length axis `axis` of x into [groups, per_group] for `grouping`."""
    axis = axis % len(x.shape)
    if grouping == "single":
        return ops.expand_dims(x, axis)
    shape = ops.shape(x)
    x = ops.reshape(x, tuple(shape[:axis]) + (-1, stride) + tuple(shape[axis + 1:]))
    return ops.swapaxes(x, axis, axis + 1) if grouping == "residues" else x


def from_groups(x, grouping, axis):
    """Inverse of `to_groups`: merges the axes `axis`, `axis + 1` back into positions in natural order."""
    axis = axis % len(x.shape)
    if grouping == "residues":
        x = ops.swapaxes(x, axis, axis + 1)
    shape = ops.shape(x)
    return ops.reshape(x, tuple(shape[:axis]) + (-1,) + tuple(shape[axis + 2:]))


class Part:
    """One atomic pattern for the queries [start, stop): its grouping, keys and values per group, and the
    positions of its queries [groups, per_group] and keys [(heads,) groups or 1, keys].

    k and v are [b, h, keys, d], padded to a multiple of the stride; `heads` are the global head indices.
    """

    def __init__(self, atom, k, v, start, stop, stride, summary, heads, num_summary_patterns, causal,
                 key_offset=0):
        """k and v hold the positions key_offset, key_offset + 1, ... (a multiple of the stride)."""
        self.atom = atom
        self.grouping = GROUPING[atom]
        self.query_positions = to_groups(ops.arange(start, stop), self.grouping, stride, axis=0)
        # Causal queries never see past `stop`; bidirectional ones see everything.
        key_stop = stop - key_offset if causal else ops.shape(k)[2]
        if atom == "local":
            after = 0 if causal else 1
            self.keys, self.values = (self.windows(x, start - key_offset, stop - key_offset, stride, after)
                                      for x in (k, v))
            starts = ops.arange(start, stop, stride) - stride
            self.key_positions = starts[:, None] + ops.arange((2 + after) * stride)[None, :]
        elif atom == "block":
            self.keys, self.values = (to_groups(x[:, :, start - key_offset:stop - key_offset], "rows", stride,
                                                axis=2) for x in (k, v))
            self.key_positions = self.query_positions
        elif atom == "summary":
            self.keys, self.values, positions = self.summaries(
                k[:, :, :key_stop], v[:, :, :key_stop], stride, summary, heads, num_summary_patterns)
            self.key_positions = positions + key_offset
        else:
            self.keys, self.values = (to_groups(x[:, :, :key_stop], self.grouping, stride, axis=2)
                                      for x in (k, v))
            self.key_positions = to_groups(ops.arange(key_stop) + key_offset, self.grouping, stride, axis=0)

    @staticmethod
    def windows(x, start, stop, stride, after):
        """The keys of blocks [start, stop): [b, h, blocks, (2 + after) stride, d], the previous block first."""
        b, h, d = ops.shape(x)[0], ops.shape(x)[1], x.shape[-1]
        x = ops.pad(x, [[0, 0], [0, 0], [stride, after * stride], [0, 0]])[:, :, start:stop + (1 + after) * stride]
        x = ops.reshape(x, (b, h, -1, stride, d))
        blocks = ops.shape(x)[2] - 1 - after
        shifted = [x[:, :, offset:offset + blocks] for offset in range(2 + after)]
        return ops.reshape(ops.concatenate(shifted, axis=3), (b, h, blocks, -1, d))

    @staticmethod
    def summaries(k, v, stride, summary, heads, num_summary_patterns):
        """Each head's summary keys and values [b, h, 1, blocks x summary, d] and positions [h, 1, keys]."""
        keys, values, positions = [], [], []
        block_starts = ops.arange(0, ops.shape(k)[2], stride)[:, None]
        for j, head in enumerate(heads):
            first, last = patterns.summary_range(head, stride, summary, num_summary_patterns)
            for x, out in ((k, keys), (v, values)):
                blocks = ops.reshape(x[:, j:j + 1], (ops.shape(x)[0], 1, -1, stride, x.shape[-1]))
                out.append(ops.reshape(blocks[:, :, :, first:last], (ops.shape(x)[0], 1, 1, -1, x.shape[-1])))
            positions.append(ops.reshape(block_starts + ops.arange(first, last)[None, :], (1, 1, -1)))
        return ops.concatenate(keys, axis=1), ops.concatenate(values, axis=1), ops.concatenate(positions, axis=0)
