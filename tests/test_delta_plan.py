"""The delta upload's head and the new block list made from a plan (pure, hypothesis)."""

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_sync import delta
from quantum_sync.blocks import Reuse, Send, plan_delta
from edits import SMALL, edited, edits, random_bytes

@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.integers(0, 40000), st.lists(edits(3000), max_size=4), st.booleans())
def test_the_list_rebuilt_from_a_plan_is_the_new_contents_list(seed, size, changes, repeat):
    base = random_bytes(seed, size)
    if repeat:  # a base holding a block twice
        base = base[:size // 2] * 2
    new = edited(base, seed, changes)
    base_blocks = SMALL.blocks(base)
    plan = plan_delta(base_blocks, SMALL.blocks(new))
    assert delta.unheld_reuse(plan, base_blocks) is None
    rebuilt = delta.rebuilt_blocks(plan, base_blocks,
                                   lambda step: SMALL.blocks(new[step.offset:step.offset + step.length]))
    assert tuple(rebuilt) == SMALL.blocks(new)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=5000), st.binary(max_size=5000))
def test_a_head_says_its_plan_again(base, new):
    plan = plan_delta(SMALL.blocks(base), SMALL.blocks(new))
    head = delta.encode_head(plan)
    count = delta.head_steps(head[:delta.HEAD_FIXED])
    assert count == len(plan)
    assert delta.decode_steps(head[delta.HEAD_FIXED:]) == plan
    assert len(head) == delta.HEAD_FIXED + count * delta.STEP_SIZE


@pytest.mark.parametrize("steps,message", [
    (b"\x01" + bytes(16), "no bytes"),
    (b"\x03" + bytes(7) + b"\x01" + bytes(7) + b"\x01", "unknown step"),
    (b"\x02" + bytes(7) + b"\x05" + bytes(7) + b"\x01", "where the content is at 0"),
    (b"\x01" * 5, "whole number"),
])
def test_a_malformed_plan_is_refused(steps, message):
    with pytest.raises(ValueError, match=message):
        delta.decode_steps(steps)


def test_a_malformed_head_is_refused():
    for fixed, message in ((b"QSD", "shorter"), (b"XXXX\x00\x00\x00\x01", "does not start"),
                           (b"QSD1\xff\xff\xff\xff", "steps")):
        with pytest.raises(ValueError, match=message):
            delta.head_steps(fixed)


def test_a_reuse_that_is_not_whole_base_blocks_is_found():
    base = random_bytes(1, 20000)
    blocks = SMALL.blocks(base)
    second = blocks[1]
    assert delta.unheld_reuse((Reuse(0, blocks[0].length + second.length),), blocks) is None
    assert delta.unheld_reuse((Reuse(1, second.length),), blocks) == Reuse(1, second.length)
    assert delta.unheld_reuse((Send(0, 5), Reuse(second.offset, second.length - 1)), blocks) is not None


def test_runs_are_grouped_for_multi_range_requests():
    small, big = 100_000, 2 * 1024 * 1024
    runs = [(i * 10**7, small) for i in range(20)]
    groups = delta.range_groups(runs)
    assert [len(g) for g in groups] == [16, 4] and sum(groups, []) == runs
    mixed = [(0, small), (10**7, big), (2 * 10**7, small), (3 * 10**7, small)]
    assert delta.range_groups(mixed) == [[(0, small)], [(10**7, big)], [(2 * 10**7, small), (3 * 10**7, small)]]
    many = [(i * 10**7, 900_000) for i in range(12)]
    assert [len(g) for g in delta.range_groups(many)] == [9, 3]  # 8 MiB at most a request
    assert delta.range_groups([]) == []


def byteranges(boundary, parts, total=10**6):
    body = b"".join(b"\r\n--%s\r\nContent-type: application/octet-stream\r\nContent-range: bytes %d-%d/%d\r\n\r\n%s"
                    % (boundary, offset, offset + len(data) - 1, total, data) for offset, data in parts)
    return body + b"\r\n--%s--\r\n" % boundary


def test_a_multipart_answer_is_split_into_its_runs():
    boundary = b"b0undary"
    parts = [(10, b"--b0undary\r\n" * 3), (5000, b"x" * 100)]  # a boundary inside the data
    body = byteranges(boundary, parts)
    runs = [(offset, len(data)) for offset, data in parts]
    assert delta.split_byteranges(body, boundary, runs) == [data for _, data in parts]
    for wrong_body, wrong_runs in ((body, [(10, 39), (5001, 100)]), (body, runs + [(9000, 5)]),
                                   (body[:-10], runs), (body.replace(b"Content-range", b"X-range"), runs),
                                   (byteranges(boundary, parts[::-1]), runs)):
        with pytest.raises(ValueError):
            delta.split_byteranges(wrong_body, boundary, wrong_runs)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=5000), st.binary(max_size=5000), st.integers(1, 5))
def test_a_head_read_as_a_stream_says_its_plan_again(base, new, at_once):
    plan = plan_delta(SMALL.blocks(base), SMALL.blocks(new))
    head = delta.encode_head(plan)
    body = io.BytesIO(head[delta.HEAD_FIXED:] + b"the sent bytes")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(delta, "_STEPS_READ", at_once)
        assert tuple(delta.read_steps(body, len(plan))) == plan
    assert body.read() == b"the sent bytes"
    if plan:
        with pytest.raises(ValueError, match="ends inside the plan"):
            tuple(delta.read_steps(io.BytesIO(head[delta.HEAD_FIXED:-1]), len(plan)))
