"""Drive ``tests/web/client.html`` (Strophe.js over BOSH or WebSocket) in headless Chromium with selenium.

* :func:`missing` says why the browser tests cannot run here (no Chromium, no chromedriver, no selenium,
  no ``npm ci --prefix tests/web``), or returns None.
* :class:`PageServer` serves the page, its script and Strophe.js on loopback from its own port, so the
  page's origin (``PageServer.origin``) differs from xmppd's HTTP listener: BOSH requests are cross-origin
  and need xmppd's ``[http] cors_origins``.
* :class:`Browser` starts headless Chromium (Debian's ``chromium`` and ``chromium-driver``; selenium's
  own driver download is never used), opens the page and reads ``window.xmppTest``.

Manual use: ``python tests/web/driver.py SERVICE JID PASSWORD [TO]`` logs in, prints the page state as
JSON, and saves a screenshot in ``test-artifacts/``.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

WEB_DIR = Path(__file__).resolve().parent
REPO = WEB_DIR.parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("XMPPD_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("XMPPD_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
STROPHE = WEB_DIR / "node_modules" / "strophe.js" / "dist" / "strophe.umd.min.js"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
    "--window-size=1000,800",
)
TIMEOUT = 15.0

# Files the page server serves: URL path -> (file, content type).
FILES = {
    "/client.html": (WEB_DIR / "client.html", "text/html; charset=utf-8"),
    "/client.js": (WEB_DIR / "client.js", "text/javascript; charset=utf-8"),
    "/strophe.umd.min.js": (STROPHE, "text/javascript; charset=utf-8"),
}


def missing() -> str | None:
    """Why the browser tests cannot run on this machine, or None when they can."""
    for path, what, fix in (
        (CHROMIUM, "Chromium", "apt-get install chromium"),
        (CHROMEDRIVER, "chromedriver", "apt-get install chromium-driver"),
    ):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{what} not found at {path} ({fix}; .ci/run installs it as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not STROPHE.is_file():
        return f"Strophe.js not installed at {STROPHE} (run: npm ci --prefix tests/web)"
    return None


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = urllib.parse.urlsplit(self.path).path
        if path == "/":
            path = "/client.html"
        if path == "/favicon.ico":
            self.send_response(204)
            self.end_headers()
            return
        if path not in FILES:
            self.send_error(404)
            return
        file, content_type = FILES[path]
        data = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows failures, not every page request


class PageServer:
    """Serves the test page on ``http://127.0.0.1:<port>`` from a thread; use as a context manager."""

    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="page-server", daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, **params: str) -> str:
        """The page's URL with ``params`` (service, jid, password, to, body) in its query string."""
        return f"{self.origin}/client.html?{urllib.parse.urlencode(params)}"

    def __enter__(self) -> PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class Browser:
    """Headless Chromium under chromedriver with a fresh profile; use as a context manager."""

    def __init__(self, timeout: float = TIMEOUT) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="xmppd-chromium-")
        self.driver: Any = None

    def __enter__(self) -> Browser:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit driver path keeps selenium-manager from looking for (or downloading) a driver.
        service = Service(CHROMEDRIVER, log_output=os.path.join(self.profile, "chromedriver.log"))
        try:
            self.driver = webdriver.Chrome(options=options, service=service)
        except Exception:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(self.timeout)
        self.driver.set_script_timeout(self.timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.driver is not None:
                self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    # -- the page ------------------------------------------------------------------------------------------

    def open(self, url: str) -> None:
        self.driver.get(url)

    def state(self) -> dict[str, Any]:
        """``window.xmppTest`` as plain data (without its functions and connection object)."""
        text = self.driver.execute_script(
            "const s = window.xmppTest; if (!s) return null;"
            "return JSON.stringify(s, (k, v) =>"
            " (k === 'connection' || typeof v === 'function') ? undefined : v);"
        )
        return json.loads(text) if text else {}

    def call(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def send(self, to: str, body: str) -> str:
        """Have the page send a chat message; its id."""
        return self.call("return window.xmppTest.send(arguments[0], arguments[1]);", to, body)

    def disconnect(self) -> None:
        self.call("window.xmppTest.disconnect();")

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], Any], what: str, timeout: float | None = None
    ) -> dict[str, Any]:
        """Poll the page state until ``predicate(state)`` is true; AssertionError (with the page's status,
        errors, traffic and console) if it is not within ``timeout``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            state = self.state()
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.describe(state)}")
            time.sleep(0.05)

    def wait_connected(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the page's session (CONNECTED); fail early when Strophe gives up."""

        def done(state: dict[str, Any]) -> bool:
            status = state.get("status")
            if status in ("CONNFAIL", "AUTHFAIL", "ERROR", "NO-STROPHE", "BAD-PARAMETERS", "EXCEPTION"):
                raise AssertionError(f"the page did not connect: {status}\n{self.describe(state)}")
            if status == "DISCONNECTED" and not state.get("connected"):
                raise AssertionError(f"the page was disconnected while connecting\n{self.describe(state)}")
            return bool(state.get("connected"))

        return self.wait_for(done, "the page to connect", timeout)

    def console(self) -> list[str]:
        """The browser console's messages since the last call."""
        try:
            return [f"{e['level']} {e['message']}" for e in self.driver.get_log("browser")]
        except Exception as e:  # not every driver supports logs
            return [f"(console unavailable: {e})"]

    def describe(self, state: dict[str, Any] | None = None) -> str:
        """A failure message's detail: status history, errors, last XML traffic, console."""
        state = self.state() if state is None else state
        traffic = "\n    ".join(state.get("traffic", [])[-30:])
        console = "\n    ".join(self.console()[-30:])
        return (
            f"  statuses: {state.get('statuses')}\n"
            f"  errors: {state.get('errors')}\n"
            f"  messages: {[(m.get('from'), m.get('body')) for m in state.get('messages', [])]}\n"
            f"  traffic (last 30):\n    {traffic}\n"
            f"  console:\n    {console}"
        )

    def screenshot(self, name: str) -> Path:
        """Save a PNG of the page under test-artifacts/ (gitignored)."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.split("Manual use: ")[1].strip(), file=sys.stderr)
        return 2
    reason = missing()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    service, jid, password, *rest = argv
    params = {"service": service, "jid": jid, "password": password}
    if rest:
        params["to"] = rest[0]
    with PageServer() as pages, Browser() as browser:
        print(f"page origin {pages.origin}", file=sys.stderr)
        browser.open(pages.url(**params))
        try:
            browser.wait_connected()
            time.sleep(1)
        finally:
            print(json.dumps(browser.state(), indent=2))
            print(browser.screenshot("driver-manual"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
