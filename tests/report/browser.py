"""A page opened in headless Chromium, as a person sees it, driven over the DevTools protocol.

The protocol runs over ``--remote-debugging-pipe`` (Chromium reads commands on
file descriptor 3 and answers on 4, each message JSON ended by a NUL byte), so
no port is opened, nothing is downloaded and no client library is needed.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    pass


@dataclass
class PageView:
    """What the page showed and said."""

    problems: list[str] = field(default_factory=list)
    """Console errors, uncaught exceptions and error log entries, as text."""
    values: dict[str, Any] = field(default_factory=dict)
    """Results of the expressions evaluated in the loaded page."""
    screenshot: bytes = b""


# Puts our pipe ends on 3 and 4, then becomes Chromium. (preexec_fn cannot: subprocess closes every
# descriptor not in pass_fds after it runs; dash's redirections take single digits only.)
_TRAMPOLINE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"
)


def _above_nine(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class _Pipe:
    def __init__(self, executable: str, profile_dir: Path, log: IO[bytes]) -> None:
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()
        # dup2 onto 3 and 4 must not overwrite one of our ends before it is copied: move both above 9.
        to_browser_read = _above_nine(to_browser_read)
        from_browser_write = _above_nine(from_browser_write)
        command = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--window-size=1280,1600"]
        self.process = subprocess.Popen(
            [sys.executable, "-c", _TRAMPOLINE, str(to_browser_read), str(from_browser_write), *command],
            pass_fds=(to_browser_read, from_browser_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 16)
                if not chunk:
                    raise BrowserError("Chromium closed the DevTools pipe (did it start?)")
                self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:  # fmt: skip
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for index, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline)
            if message.get("method") == method:
                return message
            self.events.append(message)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # it may be gone already
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self._write)
        os.close(self._read)


def _problems(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            found.append(f"uncaught: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            texts = [str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])]
            found.append(f"console.{params.get('type')}: {' '.join(texts)}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"log {entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
    return found


def view(page: Path, expressions: dict[str, str], *, settle: float = 0.5) -> PageView:
    """Open a file in headless Chromium, let its scripts run, evaluate expressions, take a screenshot."""
    executable = chromium()
    if executable is None:
        raise BrowserError("no chromium on PATH")
    with tempfile.TemporaryDirectory(prefix="hybridtrust-chromium-") as profile_dir, tempfile.TemporaryFile() as log:
        pipe = _Pipe(executable, Path(profile_dir), log)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
            pipe.wait_for("Page.loadEventFired")
            time.sleep(settle)  # pytest-html renders its table from JSON after load
            result = PageView()
            for name, expression in expressions.items():
                answer = pipe.call(
                    "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
                )
                if "exceptionDetails" in answer:
                    raise BrowserError(f"{name}: {answer['exceptionDetails'].get('text')}")
                result.values[name] = answer.get("result", {}).get("value")
            shot = pipe.call("Page.captureScreenshot", {"format": "png"}, session=session)
            result.screenshot = base64.b64decode(shot["data"])
            result.problems = _problems(pipe.events)
            return result
        except BrowserError as error:
            log.seek(0)
            raise BrowserError(f"{error}; Chromium said: {log.read()[-2000:].decode(errors='replace')}") from None
        finally:
            pipe.close()
