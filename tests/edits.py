"""Contents and edits for the block-list and delta-plan property tests (pure)."""

import random

from hypothesis import strategies as st

from quantum_sync.blocks import Chunker

#: Small blocks, so that small examples hold many of them.
SMALL = Chunker(min_size=64, avg_size=320, max_size=1280)


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def edits(longest: int):
    """An insert, a delete or an overwrite of at most ``longest`` bytes, at a place to be
    taken modulo the content's length."""
    return st.tuples(st.sampled_from(["insert", "delete", "overwrite"]), st.integers(0, 2**32),
                     st.integers(1, longest))


def edited(base: bytes, seed: int, changes) -> bytes:
    """``base`` with each of ``changes`` (from :func:`edits`) made in turn."""
    new = bytearray(base)
    for kind, where, length in changes:
        where %= len(new) + 1
        if kind == "insert":
            new[where:where] = random_bytes(where + seed, length)
        elif kind == "delete":
            del new[where:where + length]
        else:
            new[where:where + length] = random_bytes(where ^ seed, min(length, len(new) - where))
    return bytes(new)
