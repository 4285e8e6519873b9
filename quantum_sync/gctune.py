"""The garbage collector's settings for a long-running daemon (server and client).

CPython's cyclic collector runs a young-generation pass every 700 net container
allocations, and promotes survivors into older generations that are traversed again and
again. A burst of small files keeps thousands of requests, Deferreds and messages alive
at once, so with the defaults the daemons spent about a fifth of their CPU time in the
collector (measured with ``gc.callbacks`` during ``bench/bench_sync.py``: up to 1 s of
a client's 2.2 s for 4,000 files). Two changes make that a few percent:

- everything alive once the service is built (modules, classes, the configuration) is
  frozen out of the collector's sight, since it lives as long as the process;
- the young generation is collected every 10,000 allocations instead of 700, so most
  objects of a request die before a pass sees them. The garbage that can wait for a pass
  is a few megabytes at most. (50,000 was no faster and let one pass over a burst's
  survivors pause a client for 60 ms; 10,000 kept the longest pause under 30 ms.)
"""

import gc

#: Thresholds for :func:`gc.set_threshold` (young, middle, old generation).
THRESHOLDS = (10_000, 20, 20)


def tune_garbage_collector() -> None:
    """Freeze what is alive now and raise the collection thresholds (see the module's
    docstring). Called once, by ``makeService``, before the reactor runs."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
