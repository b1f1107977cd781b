"""Open a page in headless Chromium over the DevTools protocol and report what a reader would see.

The protocol runs over ``--remote-debugging-pipe`` (file descriptors 3 and 4, JSON messages ended by
NUL), so no websocket library and no port are needed. Background networking is off and every
request that leaves ``file://`` / ``data:`` is recorded, so a page that needs the network fails.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
HOW_TO_GET = ("the report's browser test needs Chromium: `apt-get install -y chromium` (Debian/Ubuntu; `make setup` "
              "does this when run as root) or set VRU_LENS_CHROMIUM=/path/to/chrome")


def find_chromium() -> str | None:
    env = os.environ.get("VRU_LENS_CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class Page:
    """One headless Chromium with one tab; ``open(url)`` loads a page and collects its errors."""

    def __init__(self, binary: str, width: int = 1280, height: int = 900):
        r_cmd, w_cmd = os.pipe()
        r_evt, w_evt = os.pipe()
        # Chromium reads commands on fd 3 and writes on fd 4: put the pipe ends there in the child.
        hi_cmd, hi_evt = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (r_cmd, w_evt))

        def child_fds():
            os.dup2(hi_cmd, 3)
            os.dup2(hi_evt, 4)

        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--disable-dev-shm-usage", f"--window-size={width},{height}", "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=child_fds, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for fd in (r_cmd, w_evt, hi_cmd, hi_evt):
            os.close(fd)
        self.out, self.inp = os.fdopen(w_cmd, "wb", buffering=0), os.fdopen(r_evt, "rb", buffering=0)
        self.buffer, self.next_id, self.events = b"", 0, []
        self.session = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def _read(self) -> dict:
        while b"\0" not in self.buffer:
            chunk = self.inp.read(1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe: " + self.proc.stderr.read().decode()[-2000:])
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith(("Target.", "Browser.")):
            msg["sessionId"] = self.session
        self.out.write(json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> None:
        end = time.time() + timeout
        while not any(e["method"] == method for e in self.events):
            if time.time() > end:
                raise TimeoutError(f"no {method} within {timeout}s")
            self.events.append(self._read())

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url: str, settle: float = 2.0) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        time.sleep(settle)  # React (circuitsvis) renders after load
        self.evaluate("1")  # drain events queued meanwhile

    def errors(self) -> list[str]:
        """JavaScript exceptions, console errors/warnings/asserts, error log entries, network requests."""
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert", "warning"):
                out.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                           for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry'].get('text')} ({p['entry'].get('url', '')})")
            elif m == "Network.requestWillBeSent" and not p["request"]["url"].startswith(("file:", "data:", "about:")):
                out.append(f"network request: {p['request']['url']}")
        return out

    def screenshot(self, path: str) -> None:
        """The whole page as a PNG."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        png = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(png))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()
        self.inp.close()
        self.proc.stderr.close()
