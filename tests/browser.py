"""A real headless Chromium (Debian's ``chromium``) and pushd processes for
the browser tests.

Selenium drives the installed browser through Debian's ``chromedriver`` with
explicit paths, so nothing is ever downloaded.  pushd runs as ``twistd -n
pushd``, as users start it: the browser tests are synchronous (Selenium
blocks), so the server must not share their thread.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=900,560",
)


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "needs Debian's chromium and chromium-driver packages"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (the test extra)"
    return None


def launch() -> Any:
    """One Chromium with a fresh profile; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(
        "--user-data-dir=" + tempfile.mkdtemp(prefix="pushd-chromium-")
    )
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``condition`` until it is truthy (bounded); its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % (what or condition))
        time.sleep(0.02)


def js_until(driver, expression: str, timeout: float = 10.0) -> Any:
    """Wait until a JavaScript expression is truthy in the page; its value."""
    return until(
        lambda: driver.execute_script("return (%s);" % expression), timeout, expression
    )


class Process:
    """A child process whose output goes to a file we poll."""

    def __init__(self, args: list[str], log_dir: str, name: str) -> None:
        self.log_path = os.path.join(log_dir, name + ".log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=log_dir
        )

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        def found():
            match = re.search(pattern, self.log())
            if match is None and self.proc.poll() is not None:
                raise AssertionError(
                    "exited %s:\n%s" % (self.proc.returncode, self.log())
                )
            return match

        return until(found, timeout, "%r in %s" % (pattern, self.log_path))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def pushd(log_dir: str, *args: str, name: str = "pushd", port: int = 0) -> tuple:
    """``twistd -n pushd`` on 127.0.0.1; (process, port)."""
    process = Process(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "--logfile=-",
            "pushd",
            "--listen",
            "tcp:%d:interface=127.0.0.1" % port,
            *args,
        ],
        log_dir,
        name,
    )
    match = process.wait_for(r"pushd listening on [0-9.]+:(\d+)")
    return process, int(match.group(1))


def proxy(log_dir: str, target: int) -> tuple:
    """The upgrade-refusing proxy in front of ``target``; (process, port)."""
    script = os.path.join(os.path.dirname(__file__), "refusing_proxy.py")
    process = Process([sys.executable, script, str(target)], log_dir, "proxy")
    return process, int(process.wait_for(r"proxy listening on (\d+)").group(1))
