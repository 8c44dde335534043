"""
The status page in a real browser (issue 18): headless Chromium (Debian's
chromium, chromium-driver, python3-selenium; `make test` installs them)
loads GET / from a daemon under load and shows what /status and getItems
say: the counts, a worker's pid, an item looked up by id, a FAILED item in
the dead-letter list, a batch's counts; the chart draws, and the page keeps
updating. A screenshot is saved as build/dashboard.png.

Chromium and chromedriver are killed at the end of every test, whatever
happened, and every wait is bounded.
"""
import json
import os
import shutil
import signal
import threading
import time
import uuid

import pytest

from conftest import (FAILED, REPO, SUCCEEDED, descendants, free_port, http_get,
                      missing_dependency, pid_alive, wait_for)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HANDLERS = {"default": "echo", "echo": {"builtin": "echo"}, "sleep": {"builtin": "sleep"},
            "bad": {"exec": ["sh", "-c", 'echo "bad input" >&2; exit 3']}}


def status(address):
    got = http_get(address, "/status", timeout=10)
    assert got is not None and got[0] == 200, got
    return json.loads(got[1])


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium driven by chromedriver; killed at teardown with
    every process chromedriver started."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing_dependency("python3-selenium is not installed (make test installs it)")
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        missing_dependency("chromium and chromium-driver are not installed (make test installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1800", "--no-first-run", "--disable-extensions",
                f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    service = Service(CHROMEDRIVER, log_path=str(tmp_path / "chromedriver.log"))
    driver = None
    pids = set()
    try:
        driver = webdriver.Chrome(service=service, options=opts)
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        pids = {service.process.pid} | set(descendants(service.process.pid))
        yield driver
    finally:
        if service.process is not None:
            pids |= {service.process.pid} | set(descendants(service.process.pid))
        if driver is not None:
            try:
                driver.quit()
            except Exception:   # noqa: BLE001 - killed below anyway
                pass
        try:
            service.stop()
        except Exception:       # noqa: BLE001
            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: not any(pid_alive(p) for p in pids), 10, "chromium and chromedriver gone")
        shutil.rmtree(tmp_path / "chromium", ignore_errors=True)


class Load:
    """A thread submitting echo items (and now and then a failing one)
    until stopped."""

    def __init__(self, client, tag):
        self.client, self.tag = client, tag
        self.stop = threading.Event()
        self.sent = 0
        self.error = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        n = 0
        try:
            while not self.stop.is_set():
                items = [{"id": f"load-{self.tag}-{n + i}", "batch": f"load-{self.tag}",
                          "payload": b"x" * 64} for i in range(200)]
                self.client.submit(items, timeout=30)
                n += 200
                self.sent = n
                time.sleep(0.05)
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def finish(self):
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the load thread did not stop"
        assert self.error is None, f"the load failed: {self.error!r}"


# The page re-renders its tables on every poll, so an element found in one
# WebDriver call may be gone by the next (StaleElementReferenceException):
# everything is read in one script, run between two of the page's renders.
def text_of(driver, element_id):
    return texts(driver, f"#{element_id}")[0]


def texts(driver, selector):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText);",
        selector)


def attributes(driver, selector, *names):
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]),"
        " e => arguments[1].map(n => e.getAttribute(n)));", selector, list(names))


def number(s):
    return int(s.replace(",", "")) if s.strip() not in ("", "?") else None


@pytest.mark.deadline(240)
def test_dashboard_in_chromium_under_load(start_daemon, browser):
    address = f"127.0.0.1:{free_port()}"
    d = start_daemon({"handlers": HANDLERS, "status": {"listen": address},
                      "workers": {"count": 2}})
    c = d.client()
    tag = uuid.uuid4().hex[:6]
    # a FAILED item and a succeeded one to look up, in their own batch
    bad, good = f"dead-{tag}", f"good-{tag}"
    c.run_items([{"id": bad, "kind": "bad", "batch": f"b-{tag}", "payload": b"x"},
                 {"id": good, "kind": "echo", "batch": f"b-{tag}", "payload": b"hello page"}])

    browser.get(f"http://{address}/")
    wait_for(lambda: (number(text_of(browser, "polls")) or 0) >= 2, 30, "the page polled twice")

    # the batch's counts (before the load: /batches shows the newest 1000 items)
    def batch_row():
        rows = texts(browser, f'#batches tbody tr[data-batch="b-{tag}"]')
        return rows[0] if rows else None
    cells = wait_for(batch_row, 20, "the batch on the page").split()
    assert cells == [f"b-{tag}", "2", "0", "0", "1", "1", "0"], cells

    load = Load(d.client(), tag)
    try:
        wait_for(lambda: load.sent >= 400 or load.error, 30, "load running")

        # the process table holds every worker's pid, and the master and grpc process
        def pids_shown():
            return {(role, int(pid)) for role, pid in
                    attributes(browser, "#procs tbody tr", "data-role", "data-pid")}
        shown = wait_for(lambda: {("worker", p) for p in d.worker_pids()} <= pids_shown() and
                         pids_shown(), 20, "the workers' pids on the page")
        assert ("grpc", d.grpc_pid()) in shown and ("master", d.master_pid) in shown

        # the static numbers are /status's
        s = status(address)
        assert number(text_of(browser, "queue-capacity")) == s["queue"]["capacity"]
        assert text_of(browser, "generation") == str(s["generation"])
        assert text_of(browser, "version") == s["version"]

        # the dead-letter list holds the FAILED item, as getItems lists it
        assert bad in [i.id for i in c.get_items(states=[FAILED]).items]
        row = wait_for(lambda: texts(browser, f'#failed tbody tr[data-id="{bad}"]'),
                       20, "the FAILED item in the dead-letter list")
        assert "bad input" in row[0]

        # an item looked up by id: what getItems says
        g = c.get_items([good], with_results=True).items[0]
        box = browser.find_element("id", "lookup-id")
        box.clear()
        box.send_keys(good)
        browser.find_element("id", "lookup-go").click()
        field = lambda name: texts(  # noqa: E731
            browser, f'#item-detail dd[data-field="{name}"]')[0]
        wait_for(lambda: texts(browser, '#item-detail dd[data-field="state"]'),
                 20, "the looked-up item")
        assert field("id") == good and field("state") == "SUCCEEDED" and g.state == SUCCEEDED
        assert field("attempt") == f"{g.attempt} of {g.max_attempts}"
        assert field("result") == g.result.decode() == "hello page"

        # the page keeps updating while the load runs: polls and counts grow
        polls = number(text_of(browser, "polls"))
        done = number(text_of(browser, "total-succeeded"))
        wait_for(lambda: number(text_of(browser, "polls")) >= polls + 3 and
                 number(text_of(browser, "total-succeeded")) > done, 30, "the page updating")

        # the chart draws: its lines cover pixels of the canvas
        def drawn():
            return browser.execute_script("""
                const c = document.getElementById('chart');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                return n;""")
        wait_for(lambda: drawn() > 2000, 20, "the chart drawn")
        assert number(text_of(browser, "rate-succeeded")) is not None
    finally:
        load.finish()

    # once the load stops, the page's totals settle on /status's
    def settled():
        s = status(address)
        succeeded = sum(k["succeeded"] for k in s["kinds"].values())
        failed = sum(k["failed"] for k in s["kinds"].values())
        return (s["queue"]["depth"] == 0 and
                number(text_of(browser, "total-succeeded")) == succeeded and
                number(text_of(browser, "total-failed")) == failed and
                number(text_of(browser, "queue-depth")) == 0)
    wait_for(settled, 30, "the page's totals equal /status's", interval=0.3)
    (REPO / "build").mkdir(exist_ok=True)
    assert browser.save_screenshot(str(REPO / "build" / "dashboard.png"))
    assert (REPO / "build" / "dashboard.png").stat().st_size > 10000
