"""The ``pushd`` console script: ``twistd -n --pidfile= pushd`` for people who
do not know twistd.

``pushd --port 8000`` is exactly ``twistd -n --pidfile= pushd --port 8000``:
in the foreground (so a generated API secret shows in the terminal, not in a
``twistd.log``), logging to stdout, with no pidfile (so several nodes can run
from one directory).  ``twistd pushd`` stays the primary, documented way: it
takes twistd's own options (``--logfile``, ``--reactor``, ``--umask``...).
"""

from __future__ import annotations

import sys

TWISTD_ARGS = ["-n", "--pidfile=", "pushd"]


def twistd_argv(args: list[str]) -> list[str]:
    """The twistd command line that ``pushd ARGS`` stands for."""
    return ["twistd", *TWISTD_ARGS, *args]


def main(argv: list[str] | None = None) -> None:
    """Run twistd in this process with pushd's arguments appended."""
    from twisted.scripts.twistd import run

    sys.argv = twistd_argv(list(sys.argv[1:] if argv is None else argv))
    run()
