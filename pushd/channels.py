"""Channel names: what is a valid one.

Names are restricted to a conservative alphabet so they are safe in URLs,
Redis keys and log lines without escaping.  ``:`` and ``&`` are allowed for
peer channels (``peer-<base>:<u1>&<u2>``), but never in private- and
presence- names: their signature covers ``connection_id:channel[:channel_data]``
(the string Pusher's server libraries sign), and a ``:`` in the channel would
let one signed string be split into another channel plus channel_data
(issue 11).
"""

import hmac
import re

from pushd.auth import channel_signature, validate_user_id
from pushd.errors import Forbidden, InvalidChannel, PushdError
from pushd.inputs import MAX_EVENT_LENGTH, loads, validate_event

PRIVATE = "private-"
PRESENCE = "presence-"
PERSONAL = "personal-"
PEER = "peer-"
MAX_CHANNEL_LENGTH = 200
MAX_CHANNEL_DATA_DEPTH = 32  # user_info is shown to every member
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
    if ":" in name and name.startswith((PRIVATE, PRESENCE)):
        raise InvalidChannel(
            "private- and presence- channel names may not contain ':' (%r)" % name[:64]
        )
    return name


def personal_channel(user_id: str) -> str:
    return PERSONAL + user_id


def is_public(name: str) -> bool:
    """Anyone may subscribe: no signature, user or membership involved."""
    return not name.startswith((PRIVATE, PRESENCE, PERSONAL, PEER))


def needs_signature(name: str) -> bool:
    return name.startswith(PRIVATE) or name.startswith(PRESENCE)


def accepts_client_events(name: str) -> bool:
    return (
        name.startswith(PRIVATE) or name.startswith(PRESENCE) or name.startswith(PEER)
    )


def peer_parts(name: str) -> tuple[str, frozenset[str]]:
    """``peer-<base>:<u1>&<u2>...`` -> (``presence-<base>``, {u1, u2, ...})."""
    base, sep, users = name[len(PEER) :].partition(":")
    members = frozenset(u for u in users.split("&") if u)
    if not sep or not base or len(members) < 2:
        raise InvalidChannel(
            "peer channels are named peer-<base>:<user1>&<user2>[&...]"
        )
    return PRESENCE + base, members


def authorize_subscribe(session, channel: str, frame: dict):
    """Apply the rules of the channel's kind; return the identity (user id,
    user info) to record as a member, or None.  Raises Forbidden.

    * public: anyone; identified users are recorded as members.
    * private-: ``auth`` = signature over (connection_id, channel).
    * presence-: ``auth`` over (connection_id, channel[, channel_data]); the
      member is the user in ``channel_data`` if given (signed), else the
      connection's user.  No user at all: refused.
    * personal-<user>: only that user.
    * peer-<base>:<u1>&<u2>: only the named users, and only while this
      connection is in presence-<base>.
    """
    app = session.app
    own = (session.user_id, session.user_info) if session.user_id is not None else None
    if needs_signature(channel):
        channel_data = frame.get("channel_data")
        if channel_data is not None and not isinstance(channel_data, str):
            raise Forbidden("channel_data must be the JSON string the app signed")
        if channel_data is not None and not channel.startswith(PRESENCE):
            # Signed as connection_id:channel:channel_data, it would turn a
            # signature for private-a:b into one for private-a (issue 11).
            raise Forbidden("channel_data is only for presence- channels")
        given = frame.get("auth")
        if not isinstance(given, str) or not given:
            raise Forbidden("%s needs an 'auth' signature from the app" % channel)
        signature = given.rpartition(":")[2]  # accept Pusher's "key:signature" too
        expected = channel_signature(
            app.secret, session.connection_id, channel, channel_data
        )
        if not hmac.compare_digest(
            expected.encode(), signature.encode("utf-8", "replace")
        ):
            raise Forbidden("auth signature for %s does not match" % channel)
        if channel.startswith(PRESENCE):
            if channel_data:
                try:
                    data = loads(channel_data, MAX_CHANNEL_DATA_DEPTH)
                    user_id = data.get("user_id")
                    if isinstance(user_id, int) and not isinstance(user_id, bool):
                        user_id = str(user_id)  # Laravel sends numeric ids
                    return validate_user_id(user_id), data.get("user_info")
                except (PushdError, AttributeError):
                    raise Forbidden(
                        "channel_data must be JSON with a valid user_id"
                    ) from None
            if own is None:
                raise Forbidden("presence channels need a user (token or channel_data)")
        return own
    if channel.startswith(PERSONAL):
        if session.user_id is None or channel != personal_channel(session.user_id):
            raise Forbidden("%s belongs to another user" % channel)
        return own
    if channel.startswith(PEER):
        presence, users = peer_parts(channel)
        if session.user_id not in users:
            raise Forbidden("%s is only for %s" % (channel, ", ".join(sorted(users))))
        if presence not in session.subscriptions:
            raise Forbidden("subscribe to %s before its peer channels" % presence)
        return own
    return own


__all__ = ["MAX_EVENT_LENGTH", "validate_event"]
