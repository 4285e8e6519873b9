"""The journal cursor: heard, applied, stored; identity; per-path order (pure)."""

from hypothesis import given, strategies as st

from quantum_sync.client.journal import PRUNE_MIN, Heard, Identity, JournalCursor


def test_the_stored_cursor_waits_for_the_change_to_be_applied():
    cursor = JournalCursor(4)
    assert cursor.hear(5) is Heard.NEXT
    assert cursor.heard == 5 and cursor.value == 4  # heard, not applied: a crash re-fetches it
    cursor.applied(5, cursor.generation)
    assert cursor.value == 5


def test_a_gap_is_told_and_the_cursor_stops_before_it():
    cursor = JournalCursor(4)
    assert cursor.hear(7) is Heard.GAP
    cursor.applied(7, cursor.generation)
    assert cursor.heard == 4 and cursor.value == 4
    assert cursor.hear(7) is Heard.OLD and cursor.hear(3) is Heard.OLD
    for seq in (5, 6):
        assert cursor.hear(seq) is Heard.NEXT
    assert cursor.heard == 7 and cursor.value == 4
    cursor.applied(6, cursor.generation)
    assert cursor.value == 4
    cursor.applied(5, cursor.generation)
    assert cursor.value == 7


def test_a_catch_up_page_covers_what_it_did_not_list():
    cursor = JournalCursor(0)
    cursor.hear(9)  # heard live, in flight
    cursor.delivered(12)  # the page's cursor: the rest were the client's own changes
    assert cursor.heard == 12 and cursor.value == 8
    cursor.applied(9, cursor.generation)
    assert cursor.value == 12


def test_a_job_of_a_journal_that_started_over_no_longer_counts():
    cursor = JournalCursor(50, "old")
    cursor.hear(51)
    old = cursor.generation
    cursor.start_over(3, "new")
    assert (cursor.value, cursor.heard, cursor.journal_id) == (3, 3, "new")
    cursor.applied(51, old)
    assert cursor.value == 3
    assert cursor.hear(4) is Heard.NEXT  # the new journal's seqs are heard again from its head


def test_identity_same_adopt_changed():
    cursor = JournalCursor(0)
    assert cursor.check(None) is Identity.SAME  # a server that names none
    assert cursor.check("a" * 32) is Identity.ADOPT and cursor.journal_id == "a" * 32
    assert cursor.check("a" * 32) is Identity.SAME
    assert cursor.check("b" * 32) is Identity.CHANGED and cursor.journal_id == "a" * 32
    assert cursor.check(17) is Identity.SAME and cursor.check("") is Identity.SAME  # not an id


def test_an_older_change_to_a_path_is_skipped():
    cursor = JournalCursor(0)
    assert cursor.in_order(["a"], 5)
    assert not cursor.in_order(["a"], 3)
    assert cursor.in_order(["a", "b"], 6)
    assert not cursor.in_order(["c", "b"], 4)


def test_the_per_path_order_table_stays_bounded():
    cursor = JournalCursor(0)
    for seq in range(1, 20 * PRUNE_MIN):
        cursor.hear(seq)
        assert cursor.in_order([f"file-{seq}"], seq)
        cursor.applied(seq, cursor.generation)
        assert cursor.tracked_paths() <= 2 * PRUNE_MIN + 1
    assert cursor.value == 20 * PRUNE_MIN - 1


@given(st.lists(st.integers(1, 40), max_size=80), st.randoms())
def test_the_stored_cursor_never_passes_a_change_not_applied(seqs, rnd):
    cursor = JournalCursor(0)
    inflight = []
    for seq in seqs:
        if cursor.hear(seq) is not Heard.OLD:
            inflight.append(seq)
        if inflight and rnd.random() < 0.5:
            cursor.applied(inflight.pop(rnd.randrange(len(inflight))), cursor.generation)
        assert all(cursor.value < s for s in inflight)
        assert cursor.value <= cursor.heard
