"""Sized thread pools owned by a service, instead of the reactor's global one.

Each daemon service (the client's folder service, the server service) owns one
:class:`ThreadPoolService` and hands it down; code that must not block the reactor
(hashing, disk scans, file installs) calls ``threads.defer(f, *args)``.
Work that waits for a pool's own threads (stopping it) runs :func:`in_own_thread`.
:class:`ReactorThreads` is the same interface over a reactor's own pool, for parts used
on their own (tests, tools) without a service around them.
"""

import threading

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool


class ThreadPoolService(Service):
    """A thread pool of at most ``size`` threads, started and stopped with its owner.

    Work handed over before the start waits and runs once the pool starts. A stopped pool
    is replaced by a fresh one, so the service can be started again.
    """

    def __init__(self, reactor, size: int, name: str):
        if size < 1:
            raise ValueError("a thread pool needs at least one thread")
        self.reactor = reactor
        self.size = size
        self.pool_name = name
        self.pool = ThreadPool(0, size, name=name)

    def startService(self):
        super().startService()
        self.pool.start()

    def stopService(self):
        if not self.running:
            return
        super().stopService()
        pool, self.pool = self.pool, ThreadPool(0, self.size, name=self.pool_name)
        pool.stop()  # joins the threads: the owner stops it after everything that used it

    def defer(self, f, *args, **kwargs):
        """Run ``f(*args, **kwargs)`` in the pool; a Deferred of its result."""
        return deferToThreadPool(self.reactor, self.pool, f, *args, **kwargs)


def stop_children_but(parent, *last):
    """Stop ``parent`` and its children as ``MultiService.stopService`` does, except
    ``last`` (its pool, its database), which the parent stops itself once everything
    that uses them is done; a Deferred."""
    Service.stopService(parent)
    return DeferredList([maybeDeferred(child.stopService) for child in reversed(list(parent))
                         if not any(child is kept for kept in last)])


def in_own_thread(reactor, f, *args):
    """Run ``f(*args)`` on a short-lived thread of its own, for work that waits on a
    pool's threads (joining them), which neither the reactor nor that pool may do; a
    Deferred of its result, fired on the reactor."""
    done = Deferred()

    def run():
        try:
            result = f(*args)
        except BaseException:
            reactor.callFromThread(done.errback, Failure())
        else:
            reactor.callFromThread(done.callback, result)

    threading.Thread(target=run, name=getattr(f, "__qualname__", "in_own_thread"),
                     daemon=True).start()
    return done


class ReactorThreads:
    """The :class:`ThreadPoolService` interface over ``reactor``'s own thread pool."""

    def __init__(self, reactor):
        self.reactor = reactor

    def defer(self, f, *args, **kwargs):
        """Run ``f(*args, **kwargs)`` in the reactor's pool; a Deferred of its result."""
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f, *args, **kwargs)
