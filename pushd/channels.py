"""Channel names: what is a valid one.

Names are restricted to a conservative alphabet so they are safe in URLs,
Redis keys and log lines without escaping.  ``:`` and ``&`` are allowed for
peer channels (``peer-<base>:<u1>&<u2>``).
"""

import re

from pushd.errors import InvalidChannel

MAX_CHANNEL_LENGTH = 200
_CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-=@,.;:&]{1,%d}" % MAX_CHANNEL_LENGTH)


def validate_channel(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise InvalidChannel."""
    if not isinstance(name, str):
        raise InvalidChannel("channel must be a string")
    if _CHANNEL_RE.fullmatch(name) is None:
        raise InvalidChannel(
            "invalid channel name %r: 1-%d characters of A-Z a-z 0-9 _ - = @ , . ; : &"
            % (name[:64], MAX_CHANNEL_LENGTH)
        )
    return name
