"""A minimal Chrome DevTools Protocol client for headless Debian ``chromium``, and a static web server.

No dependencies beyond the standard library: chromium is started with ``--remote-debugging-pipe``
and speaks the protocol over two pipes (it reads commands on fd 3 and writes replies and events
on fd 4, each message JSON ending in a NUL byte), so no websocket and no port are needed. Every
wait is bounded; ``Browser`` kills chromium when its ``with`` block ends.

    with serve(web_folder) as url, Browser() as browser:
        page = browser.open(url + "index.html")
        page.wait_for("document.readyState === 'complete'")
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import http.server
import json
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import ClassVar

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "install it with `apt-get install -y chromium` (`make install` does it)"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--mute-audio", "--hide-scrollbars")


class CDPError(RuntimeError):
    """Chromium is missing, answered a command with an error, died, or a wait ran out of time."""


def find_chromium() -> str | None:
    """The path of a chromium executable, or None."""
    return next(filter(None, map(shutil.which, EXECUTABLES)), None)


class Browser:
    """One headless chromium process with a temporary profile, driven over its debugging pipe."""

    def __init__(self, timeout: float = 30.0, width: int = 1280, height: int = 900):
        self.timeout = timeout
        executable = find_chromium()
        if executable is None:
            raise CDPError(f"chromium is not installed: {INSTALL_HINT}")
        self._profile = tempfile.mkdtemp(prefix="onnxcam-chromium-")
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # chromium wants the pipe at fds 3 and 4: copy both above 9 first so the dup2 below cannot clobber them
        child_ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, replies_write)]
        for fd in (commands_read, replies_write):
            os.close(fd)
        try:
            self.process = subprocess.Popen(
                [executable, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
                 f"--window-size={width},{height}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(3, 4),
                preexec_fn=functools.partial(_dup_to_3_and_4, *child_ends))
        finally:
            for fd in child_ends:
                os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        try:
            self.version = self.send("Browser.getVersion")["product"]
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill chromium (politely first, bounded) and remove its profile."""
        if self.process.poll() is None:
            with contextlib.suppress(CDPError, OSError):
                self.send("Browser.close", timeout=5)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        for fd in (self._commands, self._replies):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        """Send one command and return its result; events read meanwhile are kept in ``events``."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read(deadline, f"{method}'s reply")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, session: str | None = None, timeout: float | None = None) -> dict:
        """The first event ``method`` (of ``session``) not yet waited for, reading until it comes."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for index, event in enumerate(self.events):
                if event["method"] == method and event.get("sessionId") == session:
                    return self.events.pop(index)["params"]
            self.events.append(self._read(deadline, f"event {method}"))

    def open(self, url: str) -> Page:
        """A new tab at ``url``, loaded (its load event fired)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "DOM"):
            page.call(f"{domain}.enable")
        page.navigate(url)
        return page

    def _read(self, deadline: float, what: str) -> dict:
        """The next message from chromium, or a CDPError once ``deadline`` has passed or chromium has gone."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"chromium: no {what} within the time limit")
            if not select.select([self._replies], [], [], min(left, 1.0))[0]:
                continue
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise CDPError(f"chromium exited (code {self.process.poll()}) while waiting for {what}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)


def _dup_to_3_and_4(commands_read: int, replies_write: int) -> None:
    """In the child, before exec: chromium reads commands on fd 3 and writes replies on fd 4 (only dup2,
    which is async-signal-safe, so a server thread in the parent cannot deadlock it)."""
    os.dup2(commands_read, 3)
    os.dup2(replies_write, 4)


class Page:
    """One tab, attached with a flat session."""

    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def call(self, method: str, timeout: float | None = None, **params) -> dict:
        """A command to this tab."""
        return self.browser.send(method, params, self.session, timeout)

    def navigate(self, url: str) -> None:
        """Go to ``url`` and wait for its load event."""
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise CDPError(f"{url}: {result['errorText']}")
        self.browser.wait_event("Page.loadEventFired", self.session)

    def evaluate(self, expression: str, timeout: float | None = None):
        """The JSON value of a JavaScript expression (promises awaited); a thrown error is a CDPError."""
        result = self.call("Runtime.evaluate", timeout=timeout, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError(f"{expression[:60]!r} threw: {details.get('exception', {}).get('description') or details}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0, interval: float = 0.1):
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CDPError(f"{expression!r} still false after {timeout:.0f} s")
            time.sleep(interval)

    def set_files(self, selector: str, paths: list[str | Path]) -> None:
        """Choose files in an ``<input type=file>`` (fires its input and change events)."""
        node = self.call("Runtime.evaluate", expression=f"document.querySelector({json.dumps(selector)})")["result"]
        if "objectId" not in node:
            raise CDPError(f"no element matches {selector!r}")
        self.call("DOM.setFileInputFiles", files=[str(Path(p).resolve()) for p in paths], objectId=node["objectId"])

    def screenshot(self, path: str | Path) -> Path:
        """Save the whole page (beyond the viewport too) as PNG."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def console_errors(self) -> list[str]:
        """The page's uncaught exceptions and console.error messages so far (for failure messages)."""
        errors = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            if event["method"] == "Runtime.exceptionThrown":
                details = event["params"]["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif event["method"] == "Runtime.consoleAPICalled" and event["params"]["type"] == "error":
                args = event["params"]["args"]
                errors.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in args))
        return errors


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files; WebAssembly and modules with the types browsers insist on; no request log."""

    extensions_map: ClassVar[dict[str, str]] = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript"}
    mounts: ClassVar[dict[str, Path]] = {}

    def translate_path(self, path: str) -> str:
        for prefix, folder in self.mounts.items():
            if path.startswith(prefix):
                return str(folder / path[len(prefix):].split("?")[0].split("#")[0])
        return super().translate_path(path)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(root: str | Path, mounts: dict[str, str | Path] | None = None):
    """Serve ``root`` (and each folder of ``mounts`` under its URL prefix, e.g. ``{"/models/": tmp}``)
    on 127.0.0.1 at a free port, in a thread; yields the base URL (ending in ``/``); stops on exit."""
    handler = type("Handler", (_QuietHandler,), {"mounts": {k: Path(v) for k, v in (mounts or {}).items()}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
