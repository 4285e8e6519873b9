#!/usr/bin/env python3
"""Web UI benchmark: how fast a change shows in the page, and how fast a big folder opens.

    .venv/bin/python bench/bench_ui.py [--writes 50] [--entries 10000] [--loads 5]

Starts a quantum-sync server and one ``twistd quantum-sync-client`` daemon on 127.0.0.1
(subprocesses), and headless Chromium (/usr/bin/chromium, through Playwright) on the
server's page. It measures:

- write → row: a 1 KiB file written into the client's folder until its row is in the
  page's list (``--writes`` files, one at a time; p50/p99). The same-run baseline is the
  moment the FileOperation broadcast reaches the page's WebSocket: the ratio row/broadcast
  is what the page itself adds to the server's and client's path.
- time to first row: a new page on a folder of ``--entries`` files until its first row is
  shown, from the start of navigation (``--loads`` page loads; median).

Times in the page are taken by a MutationObserver and a WebSocket listener installed
before the page's own scripts, on the same clock as the writes (epoch milliseconds).
Prints one table. Everything it starts it stops (by PID), whatever happens.
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import urllib.request

from bench_sync import QuantumPair, wait

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update"]

#: Installed before the page's scripts: when each row first appears (``__rows``), when
#: each FileOperation reaches the page (``__broadcasts``), when the first row appeared
#: since navigation started (``__first_row``, ms).
PROBE = """
window.__rows = {};
window.__broadcasts = {};
window.__first_row = null;
const epoch = () => performance.timeOrigin + performance.now();
new MutationObserver((records) => {
  for (const record of records) for (const node of record.addedNodes) {
    if (node.nodeType === 1 && node.classList.contains("row")) {
      if (window.__first_row === null) window.__first_row = performance.now();
      const path = node.dataset.path;
      if (!(path in window.__rows)) window.__rows[path] = epoch();
    }
  }
}).observe(document, { childList: true, subtree: true });
const Native = window.WebSocket;
window.WebSocket = class extends Native {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (event) => {
      const at = epoch();
      try {
        const message = JSON.parse(event.data);
        const op = message.operation || {};
        const body = op.Create || op.Update;
        if (message.type === "FileOperation" && body && !(body.metadata.path in window.__broadcasts)) {
          window.__broadcasts[body.metadata.path] = at;
        }
      } catch (e) {}
    });
  }
};
"""


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def measure_writes(browser, daemons, count):
    """``(row latencies, broadcast latencies)`` in ms of ``count`` writes, one at a time."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.add_init_script(PROBE)
    page = context.new_page()
    page.goto(daemons.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector("#connection[data-state=live]")
    rows, broadcasts = [], []
    for i in range(count):
        name = f"lat-{count - i:03d}.txt"  # each new file sorts first: its row is in view
        written = time.time() * 1000
        with open(os.path.join(daemons.dir_a, name), "wb") as f:
            f.write(os.urandom(1024))
        page.wait_for_function(f"() => {json.dumps(name)} in window.__rows", timeout=10000)
        seen = page.evaluate(f"() => [window.__rows[{json.dumps(name)}], window.__broadcasts[{json.dumps(name)}]]")
        rows.append(seen[0] - written)
        broadcasts.append(seen[1] - written)
    context.close()
    return rows, broadcasts


def measure_first_row(browser, daemons, loads):
    """Milliseconds from navigation to the first row of the big folder, per page load."""
    times = []
    for _ in range(loads):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.add_init_script(PROBE)
        page = context.new_page()
        page.goto(daemons.url + "/#/big")
        page.wait_for_function("() => window.__first_row !== null", timeout=30000)
        times.append(page.evaluate("() => window.__first_row"))
        context.close()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=50)
    parser.add_argument("--entries", type=int, default=10000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--screenshot", help="also save a screenshot of the page (PNG) here")
    options = parser.parse_args()
    from playwright.sync_api import sync_playwright

    base = tempfile.mkdtemp(prefix="bench-ui-")
    daemons = QuantumPair(base, sides="A")
    try:
        big = os.path.join(daemons.root, "big")
        os.makedirs(big)
        for i in range(options.entries):
            with open(os.path.join(big, f"f{i:05d}.txt"), "wb") as f:
                f.write(b"%d" % i)
        daemons.start(timeout=60)
        wait(lambda: len(get_json(daemons.url + "/api/list")) > options.entries, 120, "the big folder indexed")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            try:
                rows, broadcasts = measure_writes(browser, daemons, options.writes)
                first = measure_first_row(browser, daemons, options.loads)
                if options.screenshot:
                    page = browser.new_page(viewport={"width": 1100, "height": 520})
                    page.goto(daemons.url + "/")
                    page.wait_for_selector("body[data-ready=true]")
                    page.wait_for_selector("#connection[data-state=live]")
                    page.screenshot(path=options.screenshot)
            finally:
                browser.close()
    finally:
        daemons.stop()
        shutil.rmtree(base, ignore_errors=True)

    p50_row, p50_bcast = statistics.median(rows), statistics.median(broadcasts)
    print("| measure | p50 | p99 | target | baseline (broadcast at the page) p50 / p99 | ratio p50 |")
    print("|---|---|---|---|---|---|")
    print(f"| write → row, {len(rows)} writes | {p50_row:.1f} ms | {percentile(rows, 0.99):.1f} ms "
          f"| p50 < 100 ms | {p50_bcast:.1f} / {percentile(broadcasts, 0.99):.1f} ms "
          f"| {p50_row / max(p50_bcast, 0.001):.2f}x |")
    print(f"| first row of {options.entries:,} entries, {len(first)} loads | {statistics.median(first):.0f} ms "
          f"| {max(first):.0f} ms (max) | < 1000 ms | | |")


if __name__ == "__main__":
    main()
