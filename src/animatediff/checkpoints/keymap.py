"""Key mappings as data.

A table maps *our* module prefixes to the prefixes a file format uses, e.g.
`{"down_blocks.0.resnets.0.norm1": "input_blocks.1.0.in_layers.0"}`. A key is translated through its
longest prefix present in the table; the rest of the key is kept. Each format builds its table with
one small function (index arithmetic lives there), so a table can be printed, inverted and
round-trip tested.
"""

from __future__ import annotations

import torch

PrefixTable = dict[str, str]


def translate(key: str, table: PrefixTable) -> str:
    """Translate `key` through the longest dotted prefix found in `table` (unchanged if none)."""
    parts = key.split(".")
    for cut in range(len(parts), -1, -1):  # cut 0: a "" entry prefixes every key
        prefix = ".".join(parts[:cut])
        if prefix in table:
            target = table[prefix]
            rest = ".".join(parts[cut:])
            return f"{target}.{rest}" if target and rest else (target or rest)
    return key


def key_map(our_keys: list[str], table: PrefixTable, file_prefix: str = "") -> dict[str, str]:
    """{our key: file key} for every key of our model."""
    return {k: file_prefix + translate(k, table) for k in our_keys}


def invert(table: PrefixTable) -> PrefixTable:
    inverse = {v: k for k, v in table.items()}
    if len(inverse) != len(table):
        raise ValueError("table is not one-to-one")
    return inverse


def adapt_shape(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Reconcile a 1x1 conv weight [O, I, 1, 1] with a linear weight [O, I] (either way).

    LDM stores the VAE attention projections as 1x1 convs, diffusers as linears; SD1.x/SD2.x differ
    the same way for the transformers' proj_in/proj_out. Any other mismatch returns None.
    """
    if tuple(t.shape) == tuple(shape):
        return t
    if t.shape[:2] == shape[:2] and all(d == 1 for d in (*t.shape[2:], *shape[2:])):
        return t.reshape(shape)
    return None
