"""Block-sparse attention driven by a DeepSpeed-style block layout: an example on the zoo's library.

`block_sparse_attention(q, k, v, layout=..., block_size=...)` runs any boolean `[heads, query_blocks,
key_blocks]` layout; `layouts` builds DeepSpeed's (fixed, variable, BigBird, Longformer, sliding window) and
OpenAI's fixed one. No zoo model or gin file selects them (the Sparse Transformer's patterns are
`sparse_transformer.attention_mask`'s grammar), so they live here, outside the product, tested in
tests/examples.
"""

from examples.block_layouts import layouts
from examples.block_layouts.block_sparse import block_sparse_attention

__all__ = ["block_sparse_attention", "layouts"]
