"""Headless Chromium (Debian's, at /usr/bin/chromium) driven by Playwright's sync API from
a thread of its own, so that the test reactor keeps serving while the browser waits.

Playwright's sync objects belong to the thread that made them: every call goes through
:meth:`BrowserThread.run`, which runs a function of the browser in that thread and
answers with a Deferred::

    page = await browser.run(lambda b: b.new_page())
    await browser.run(lambda b: page.goto(server.url))
"""

import importlib
import os
import queue
import threading

from twisted.internet import defer
from twisted.python.failure import Failure

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update"]
#: Milliseconds Playwright waits for any one thing in the page.
WAIT_MS = 10000


def require_browser() -> None:
    """Skip where Debian's chromium or Playwright is missing, except under CI (where
    .ci/run installs both): there it fails."""
    from tests.support import skip_or_fail_under_ci

    if not os.access(CHROMIUM, os.X_OK):
        skip_or_fail_under_ci("the browser tests", f"Debian's chromium at {CHROMIUM}")
    try:
        importlib.import_module("playwright.sync_api")
    except ImportError:
        skip_or_fail_under_ci("the browser tests", "Playwright for Python (pip install '.[test]')")


class BrowserThread:
    """One Chromium for many tests, owned by one thread."""

    def __init__(self, reactor):
        self._reactor = reactor
        self._jobs = queue.Queue()
        started = queue.Queue()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True,
                                        name="chromium")
        self._thread.start()
        error = started.get(timeout=60)
        if error is not None:
            raise error

    def _serve(self, started):
        from playwright.sync_api import sync_playwright

        try:
            playwright = sync_playwright().start()
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        except BaseException as error:  # reported to the constructor
            started.put(error)
            return
        started.put(None)
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                function, answer = job
                try:
                    result = function(browser)
                except BaseException:
                    result = Failure()
                self._reactor.callFromThread(answer.callback, result)
        finally:
            browser.close()
            playwright.stop()

    def run(self, function) -> defer.Deferred:
        """``function(browser)`` in the browser's thread; fires with its result (or fails
        with its exception)."""
        answer = defer.Deferred()
        self._jobs.put((function, answer))
        return answer

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)


async def open_page(browser: BrowserThread, url: str, ready: bool = True):
    """A new page (its own context: no shared storage) at ``url``; with ``ready``, once
    the UI has loaded the tree."""

    def make(b):
        context = b.new_context(accept_downloads=True, viewport={"width": 1280, "height": 800})
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        # (answers with an error status are logged too: those are the API's, expected)
        page.on("console", lambda m: page.errors.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
        page.goto(url)
        if ready:
            page.wait_for_selector("body[data-ready=true]")
        return page

    return await browser.run(make)


def row_selector(path: str) -> str:
    """A CSS selector of the list row of ``path`` (quoted for an attribute value)."""
    escaped = path.replace("\\", "\\\\").replace('"', '\\"')
    return f'.row[data-path="{escaped}"]'
