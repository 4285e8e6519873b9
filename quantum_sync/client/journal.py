"""Where the client is in the server's journal (pure, no I/O).

A journal entry's ``seq`` is *heard* when it arrives (a FileOperation, or a page of
``/api/changes``) and *applied* when its job is done. :attr:`JournalCursor.value`, the
cursor the client stores, is the highest seq with every seq up to it applied: a crash or
a failed job never leaves a change behind the stored cursor. :attr:`JournalCursor.heard`
is where a catch-up starts (entries heard are already being applied).

The journal has an identity (``journal_id``): a server whose journal started over (a
lost state folder, a restored backup) names another one, and the cursor means nothing
there. :meth:`JournalCursor.check` tells which case an id is.
"""

import enum
import heapq


class Heard(enum.Enum):
    """What a seq that arrives is."""

    OLD = "old"  # heard before: skip it
    NEXT = "next"  # the one after everything heard
    GAP = "gap"  # later than the next: something in between is missing


class Identity(enum.Enum):
    """What a journal id sent by the server means for this client."""

    SAME = "same"  # the journal known (or the server names none)
    ADOPT = "adopt"  # none known yet (a client from before journal ids): take it
    CHANGED = "changed"  # another journal: the cursor means nothing there


#: The per-path order table is pruned when it grows past this (and past twice its last size).
PRUNE_MIN = 1024


def is_journal_id(value) -> bool:
    """A journal id as the server makes them: a non-empty string of at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= 64 and value.isprintable()


class JournalCursor:
    """Seqs heard, in flight and applied; the journal id; the order of changes per path."""

    def __init__(self, applied: int = 0, journal_id=None):
        self.journal_id = journal_id
        self.generation = 0  # bumped when the journal starts over: older jobs no longer count
        self._restart(applied)

    def _restart(self, cursor):
        self.heard = cursor
        self._value = cursor
        self._ahead = set()  # heard beyond ``heard``, with a gap before them
        self._inflight = []  # a heap of seqs heard and not yet applied
        self._done = set()  # applied seqs still in the heap
        self._path_seq = {}  # path → the newest seq applied to it
        self._prune_at = PRUNE_MIN

    @property
    def value(self) -> int:
        """The cursor to store: every seq up to it is applied."""
        return self._value

    def hear(self, seq: int) -> Heard:
        """A seq arrives; unless OLD it is in flight until :meth:`applied`."""
        if seq <= self.heard or seq in self._ahead:
            return Heard.OLD
        heapq.heappush(self._inflight, seq)
        if seq == self.heard + 1:
            self.heard = seq
            self._absorb()
            return Heard.NEXT
        self._ahead.add(seq)
        return Heard.GAP

    def delivered(self, upto: int) -> None:
        """Every seq up to ``upto`` has been delivered (a catch-up page's cursor, or the
        head a full reconcile covered): what was not heard of it does not concern us."""
        if upto > self.heard:
            self.heard = upto
            self._ahead = {s for s in self._ahead if s > upto}
            self._absorb()
        self._advance()

    def applied(self, seq: int, generation: int) -> None:
        """The job of ``seq`` is done (applied, or durably queued for later)."""
        if generation == self.generation:
            self._done.add(seq)
            self._advance()

    def _absorb(self):
        while self.heard + 1 in self._ahead:
            self._ahead.discard(self.heard + 1)
            self.heard += 1

    def _advance(self):
        inflight, done = self._inflight, self._done
        while inflight and inflight[0] in done:
            done.discard(heapq.heappop(inflight))
        self._value = min(self.heard, inflight[0] - 1) if inflight else self.heard

    def in_order(self, paths, seq: int) -> bool:
        """Whether change ``seq`` to ``paths`` is newer than every change applied to them
        (then it is remembered as their newest). Entries at or below :attr:`heard` can no
        longer matter (any later arrival is newer) and are pruned as the table grows."""
        path_seq = self._path_seq
        for path in paths:  # (a loop, not any() over a generator: once per change heard)
            if path_seq.get(path, 0) > seq:
                return False
        for path in paths:
            path_seq[path] = seq
        if len(self._path_seq) > self._prune_at:
            heard = self.heard
            self._path_seq = {p: s for p, s in self._path_seq.items() if s > heard}
            self._prune_at = max(PRUNE_MIN, 2 * len(self._path_seq))
        return True

    def tracked_paths(self) -> int:
        """How many paths the per-path order table holds (it stays bounded)."""
        return len(self._path_seq)

    def check(self, journal_id) -> Identity:
        """What ``journal_id`` (from an answer or a message) means; ADOPT takes it."""
        if journal_id == self.journal_id or not is_journal_id(journal_id):  # the usual case first
            return Identity.SAME
        if self.journal_id is None:
            self.journal_id = journal_id
            return Identity.ADOPT
        return Identity.CHANGED

    def start_over(self, head: int, journal_id) -> None:
        """The server's journal started over: everything up to ``head`` of the journal
        ``journal_id`` is covered (by a full reconcile); jobs of the old one no longer count."""
        self.generation += 1
        self.journal_id = journal_id
        self._restart(head)
