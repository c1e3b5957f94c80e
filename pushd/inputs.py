"""What pushd accepts from the outside: JSON it can pass on, and event names.

Everything a client or publisher sends ends up in other clients' streams, so
it is refused at the door (error frame / HTTP 400) unless pushd can always
write it out again:

* JSON only as RFC 8259 defines it: no ``NaN``/``Infinity`` (Python would
  echo them as bare ``NaN``, which no JSON parser reads), no lone UTF-16
  surrogates (``"\\ud800"`` cannot be encoded as UTF-8, so every delivery
  of it failed), and at most ``max-json-depth`` levels of nesting (deeper
  input made the parser recurse until it raised, logging a traceback per
  frame);
* event names of printable ASCII without spaces (no CR/LF to forge SSE
  fields with), which still admits names real apps use, such as Laravel's
  ``App\\Events\\OrderShipped`` or ``.order.shipped``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from pushd.errors import InvalidField, InvalidJSON, MissingField
from pushd.message import SYSTEM_PREFIX

MAX_EVENT_LENGTH = 200
EVENT_RE = re.compile(r"[\x21-\x7e]{1,%d}" % MAX_EVENT_LENGTH)
_SURROGATE = re.compile("[\ud800-\udfff]")
# A surrogate can only come from a \uD8xx-\uDFxx escape: UTF-8 input that
# encodes one is refused by the decoder.  Raw input without such an escape
# needs no walk for them.
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")


def validate_event(event: object) -> str:
    """``event`` if it is a name pushd may send on; InvalidField otherwise."""
    if event is None:
        raise MissingField("missing 'event'")
    if not isinstance(event, str) or EVENT_RE.fullmatch(event) is None:
        raise InvalidField(
            "'event' must be 1-%d printable ASCII characters without spaces "
            "(! through ~)" % MAX_EVENT_LENGTH
        )
    if event.startswith(SYSTEM_PREFIX):
        raise InvalidField("event names starting with %r are reserved" % SYSTEM_PREFIX)
    return event


def _refuse_constant(name: str) -> Any:
    raise InvalidJSON("%s is not JSON; send a number, a string or null" % name)


# One decoder for every call: json.loads(raw, parse_constant=...) built a
# new one each time (a tenth of parsing a publish's body).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _decode(raw: bytes | str) -> Any:
    """json.loads(raw, parse_constant=_refuse_constant), exactly."""
    if isinstance(raw, str):
        if raw.startswith("\ufeff"):
            raise json.JSONDecodeError(
                "Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0
            )
    else:
        raw = raw.decode(json.detect_encoding(raw), "surrogatepass")
    return _DECODER.decode(raw)


def loads(raw: bytes | str, max_depth: int, depth_checked_later: bool = False) -> Any:
    """Parse client JSON strictly; InvalidJSON says what is wrong.

    Gated on cheap scans of ``raw`` so ordinary input is parsed once and
    walked only when it could hold a surrogate or be too deep.  With
    ``depth_checked_later`` (a batch whose every value ``Hub.publish``
    checks with ``check_value``) only a surrogate escape causes a walk: a
    frame of 100 messages always holds more brackets than ``max_depth``.
    """
    try:
        value = _decode(raw)
    except RecursionError:
        raise InvalidJSON("JSON nested deeper than %d levels" % max_depth) from None
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, InvalidJSON):
            raise
        raise InvalidJSON(str(e)[:200]) from None
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if _SURROGATE_ESCAPE.search(data) is not None:
        check_value(value, max_depth + 1_000_000 if depth_checked_later else max_depth)
    elif not depth_checked_later and data.count(b"[") + data.count(b"{") > max_depth:
        check_value(value, max_depth)
    return value


def _has_surrogate(text: str) -> bool:
    # Most strings are ASCII, which holds no surrogate: checked in C.
    return not text.isascii() and _SURROGATE.search(text) is not None


_SCALARS = (int, bool, type(None))


def check_value(value: Any, max_depth: int) -> Any:
    """``value`` if pushd can encode it as JSON for every client; else InvalidJSON.

    Iterative, so a deep value cannot exhaust the stack here either.  A flat
    object of strings and whole numbers (most message data) is checked in
    one loop without the walk.
    """
    if type(value) is dict and max_depth >= 1:
        # ASCII holds no surrogate: tested in C, without a call per string.
        search = _SURROGATE.search
        for key, child in value.items():
            kind = type(child)
            if kind is str:
                if not child.isascii() and search(child) is not None:
                    break
            elif kind not in _SCALARS:
                break
            if type(key) is not str or (not key.isascii() and search(key) is not None):
                break  # the walk says which
        else:
            return value
    return _walk(value, max_depth)


def _walk(value: Any, max_depth: int) -> Any:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _has_surrogate(item):
                raise InvalidJSON("strings must not hold lone UTF-16 surrogates")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidJSON("NaN and Infinity are not JSON")
        elif isinstance(item, (dict, list, tuple)):
            if depth > max_depth:
                raise InvalidJSON("JSON nested deeper than %d levels" % max_depth)
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and _has_surrogate(key):
                        raise InvalidJSON("keys must not hold lone UTF-16 surrogates")
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
    return value
