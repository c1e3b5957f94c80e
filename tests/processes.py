"""pushd processes for tests: started as users start them, logs polled."""

import os
import re
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.task import deferLater

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class Pushd:
    """A pushd process; its log goes to a file we can poll without blocking."""

    def __init__(self, tmp_path, *args, name="pushd", command=None):
        """Run ``twistd -n pushd ARGS``, or ``command`` (a whole argv) as given."""
        self.log_path = tmp_path / ("%s.log" % name)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            command or [TWISTD, "-n", "--pidfile=", "--logfile=-", "pushd", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=str(tmp_path),
        )

    def log(self):
        return self.log_path.read_text()

    async def wait_for(self, pattern, timeout=20.0):
        waited = 0.0
        while True:
            match = re.search(pattern, self.log())
            if match:
                return match
            if self.proc.poll() is not None or waited > timeout:
                raise AssertionError(
                    "no %r in log (exit %s):\n%s"
                    % (pattern, self.proc.returncode, self.log())
                )
            await deferLater(reactor, 0.05, lambda: None)
            waited += 0.05

    async def wait_exit(self, timeout=20.0):
        waited = 0.0
        while self.proc.poll() is None:
            assert waited < timeout, "pushd did not exit"
            await deferLater(reactor, 0.05, lambda: None)
            waited += 0.05
        self._log.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    async def port(self):
        """The port it listens on, once it says so in its log."""
        return int((await self.wait_for(r"pushd listening on [0-9.]+:(\d+)")).group(1))
