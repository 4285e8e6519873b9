"""Block lists and delta plans (pure, hypothesis): whatever the base and the new content,
the plan rebuilds the new content exactly; an insert, a delete or an overwrite at a
random place sends about the edit and reuses every untouched block."""

import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_sync import blocks as blocks_module
from quantum_sync.blocks import (
    AVG_BLOCK,
    BlockList,
    BlockStream,
    MAX_BLOCK,
    MIN_BLOCK,
    Chunker,
    Reuse,
    Send,
    decode_blocks,
    encode_blocks,
    plan_delta,
    literals,
    rebuild,
    sent_bytes,
)
from edits import SMALL, edited, edits, random_bytes

def test_block_lists_cover_the_content_within_the_sizes():
    data = random_bytes(1, 3 * 1024 * 1024)
    blocks = Chunker().blocks(data)
    assert blocks[0].offset == 0 and sum(b.length for b in blocks) == len(data)
    assert all(a.offset + a.length == b.offset for a, b in zip(blocks, blocks[1:]))
    assert all(MIN_BLOCK <= b.length <= MAX_BLOCK for b in blocks[:-1])
    assert 0.5 * AVG_BLOCK < len(data) / len(blocks) < 2 * AVG_BLOCK
    assert Chunker().blocks(b"") == ()
    assert Chunker().blocks(data) == blocks  # deterministic


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=6000), st.binary(max_size=6000))
def test_any_base_and_new_content_rebuild_exactly(base, new):
    plan = plan_delta(SMALL.blocks(base), SMALL.blocks(new))
    assert rebuild(plan, base, literals(plan, new)) == new
    assert sent_bytes(plan) <= len(new)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(2000, 40000), st.lists(edits(300), min_size=1, max_size=3))
def test_edits_send_about_the_edit_and_reuse_untouched_blocks(seed, size, changes):
    base = random_bytes(seed, size)
    new, touched = edited(base, seed, changes), sum(length for _, _, length in changes)
    base_blocks, new_blocks = SMALL.blocks(base), SMALL.blocks(new)
    plan = plan_delta(base_blocks, new_blocks)
    assert rebuild(plan, base, literals(plan, new)) == new
    # the cuts fall again where they did soon after each edit: per edit, at most the
    # edited bytes and the few blocks around it travel
    assert sent_bytes(plan) <= touched + len(changes) * 4 * SMALL.max_size
    # every block of the new content that the base holds is reused
    held = {(b.sha256, b.length) for b in base_blocks}
    sent = {(b.sha256, b.length) for b in new_blocks
            if any(isinstance(s, Send) and s.offset <= b.offset < s.offset + s.length for s in plan)}
    assert not sent & held


def test_an_untouched_content_is_all_reuse_and_an_append_sends_its_tail():
    base = random_bytes(7, 50_000)
    blocks = SMALL.blocks(base)
    assert plan_delta(blocks, blocks) == (Reuse(0, len(base)),)
    longer = base + random_bytes(8, 3000)
    plan = plan_delta(blocks, SMALL.blocks(longer))
    assert sent_bytes(plan) <= 3000 + SMALL.max_size
    assert plan[0] == Reuse(0, plan[0].length) and plan[0].length >= len(base) - SMALL.max_size


def test_rebuild_refuses_bytes_that_do_not_fit_the_plan():
    base, new = random_bytes(1, 5000), random_bytes(2, 5000)
    plan = plan_delta(SMALL.blocks(base), SMALL.blocks(new))
    sent = literals(plan, new)
    for wrong, kind in [(sent[:-1], "fewer"), (sent + b"x", "more")]:
        with pytest.raises(ValueError, match=kind):
            rebuild(plan, base, wrong)
    with pytest.raises(ValueError, match="past the end"):
        rebuild((Reuse(4990, 20),), base, b"")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 30000), st.lists(st.integers(1, 5000), max_size=40))
def test_a_stream_fed_in_any_pieces_gives_the_whole_contents_blocks(seed, size, cuts):
    data = random_bytes(seed, size)
    stream, found, position = BlockStream(SMALL), [], 0
    for length in cuts:
        found += stream.feed(data[position:position + length])
        position = min(size, position + length)
    found += stream.feed(data[position:])
    found += stream.finish()
    assert tuple(found) == SMALL.blocks(data)


def test_a_stream_holds_at_most_one_block_and_one_piece():
    stream = BlockStream(SMALL)
    data = random_bytes(3, 200_000)
    for start in range(0, len(data), 4096):
        stream.feed(data[start:start + 4096])
        assert stream.held <= SMALL.max_size + 4096


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 20000), st.integers(0, 5))
def test_the_compact_form_of_a_block_list_round_trips(seed, size, split):
    blocks = SMALL.blocks(random_bytes(seed, size))
    encoded = encode_blocks(blocks)
    assert len(encoded) == 36 * len(blocks)
    assert decode_blocks(encoded, SMALL.max_size) == blocks
    cut = min(split, len(blocks))  # read in two parts
    first = decode_blocks(encoded[:36 * cut], SMALL.max_size)
    rest = decode_blocks(encoded[36 * cut:], SMALL.max_size, sum(b.length for b in first))
    assert first + rest == blocks


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_decode_to_a_block_list_or_a_value_error(data):
    try:
        blocks = decode_blocks(data, 1280)
    except ValueError:
        return
    assert encode_blocks(blocks) == data
    assert all(0 < b.length <= 1280 for b in blocks)


def _compact_list(seed: int, count: int) -> bytes:
    """The compact form of ``count`` blocks of random hashes (1 to 64 KiB each)."""
    rng = random.Random(seed)
    return b"".join(rng.randrange(1, 65536).to_bytes(4, "big") + rng.randbytes(32) for _ in range(count))


def test_a_decoded_list_is_its_blocks_made_when_looked_at():
    blocks = SMALL.blocks(random_bytes(4, 30_000))
    held = decode_blocks(encode_blocks(blocks), SMALL.max_size)
    assert isinstance(held, BlockList) and held == blocks and tuple(held) == blocks and len(held) == len(blocks)
    assert held[0] == blocks[0] and held[-1] == blocks[-1] and held[1:3] == blocks[1:3]
    assert encode_blocks(held) == encode_blocks(blocks)
    assert held != blocks[1:] and decode_blocks(b"") == () and decode_blocks(b"") != blocks
    with pytest.raises(IndexError):
        held[len(blocks)]


@pytest.mark.parametrize("sort_run", [3, 8192])
def test_plans_of_decoded_lists_are_those_of_the_blocks(monkeypatch, sort_run):
    monkeypatch.setattr(blocks_module, "_SORT_RUN", sort_run)
    for seed in range(20):
        base = random_bytes(seed, 40_000)
        if seed % 2:
            base = base[:20_000] * 2  # a block held twice: the first one is reused
        new = edited(base, seed, [(seed * 997 % 30_000, 1, 300), (7, 0, 50)])
        base_blocks, new_blocks = SMALL.blocks(base), SMALL.blocks(new)
        plan = plan_delta(decode_blocks(encode_blocks(base_blocks), SMALL.max_size),
                          decode_blocks(encode_blocks(new_blocks), SMALL.max_size))
        assert plan == _plan_by_dict(base_blocks, new_blocks)
        assert rebuild(plan, base, literals(plan, new)) == new


def _plan_by_dict(base, new) -> tuple:
    """The plan from a dict of every base block (the reference)."""
    held, steps = {}, []
    for block in base:
        held.setdefault((block.sha256, block.length), block.offset)
    for block in new:
        at = held.get((block.sha256, block.length))
        last = steps[-1] if steps else None
        if at is None and isinstance(last, Send):
            steps[-1] = Send(last.offset, last.length + block.length)
        elif at is None:
            steps.append(Send(block.offset, block.length))
        elif isinstance(last, Reuse) and last.base_offset + last.length == at:
            steps[-1] = Reuse(last.base_offset, last.length + block.length)
        else:
            steps.append(Reuse(at, block.length))
    return tuple(steps)


def test_a_plan_holds_a_few_bytes_a_block_of_the_base():
    count = 40_000  # about 10 GiB of the default blocks
    base = decode_blocks(_compact_list(1, count))
    new = decode_blocks(_compact_list(2, 10) + base.data[36:])  # ten blocks changed at the start
    tracemalloc.start()
    try:
        plan = plan_delta(base, new)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan[0] == Send(0, sum(b.length for b in new[:10])) and len(plan) == 2
    # an index of 8 bytes a block (two while it is sorted) and a run being sorted
    assert peak < 40 * count, peak
