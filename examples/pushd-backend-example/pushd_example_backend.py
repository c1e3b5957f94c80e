"""A backend that behaves like the memory backend and also keeps a bounded
log of what was published: the smallest useful example of extending pushd.

``--backend example:keep=100:label=demo``
"""

from collections import deque

from twisted.logger import Logger
from zope.interface import implementer

from pushd.backends import parse_argstring
from pushd.backends.memory import MemoryBackend
from pushd.interfaces import IBackend


@implementer(IBackend)
class ExampleBackend(MemoryBackend):
    _log = Logger()

    def __init__(self, keep: int, label: str) -> None:
        super().__init__()
        self.label = label
        self.published = deque(maxlen=keep)

    def start(self):
        self._log.info("example backend {label} started", label=self.label)
        return super().start()

    def publish(self, message, retention=None):
        self.published.append(message)
        return super().publish(message, retention)


def from_argstring(reactor, argstring):
    args = parse_argstring(argstring)
    unknown = set(args) - {"keep", "label"}
    if unknown:
        raise ValueError("unknown argument(s): %s" % ", ".join(sorted(unknown)))
    try:
        keep = int(args.get("keep", 100))
    except ValueError:
        raise ValueError("keep takes a whole number") from None
    return ExampleBackend(keep, args.get("label", "example"))
