"""Per-channel positions of a Redis node (pushd.backends.redis_tracks), as
logic: what subscribers on a node get when its live feed has gaps, repeats
or restarts, with the stored stream faked (issue 10).  The same behaviour on
a real redis-server and real processes is in test_redis_faults.py."""

from twisted.internet.defer import fail, succeed

from pushd.backends.redis_tracks import (
    HISTORY_GAP,
    NO_POSITIONS,
    READ_FAILED,
    Tracks,
)
from pushd.message import Message

KEY = "default/kept"


def msg(offset, epoch="e1", key=KEY):
    app, _, channel = key.partition("/")
    return Message(
        channel,
        "n",
        offset,
        "id-%s-%s" % (epoch, offset),
        app,
        offset=offset,
        epoch=epoch,
    )


class Harness:
    def __init__(self, stream=("", 0, [])):
        self.delivered = []
        self.reports = []
        self.stream = stream
        self.recover_after_waits = None
        self.reads = 0
        self.waits = 0
        self.tracks = Tracks(
            self.delivered.append, self._read, self._report, self._wait
        )

    def _wait(self, seconds):
        self.waits += 1
        if self.waits == 3 and self.recover_after_waits:
            self.stream = self.recover_after_waits
        return succeed(None)

    def _read(self, key):
        self.reads += 1
        if isinstance(self.stream, Exception):
            return fail(self.stream)
        return succeed(self.stream)

    def _report(self, key, reason, kept):
        self.reports.append((key, reason, kept))

    def got(self):
        return [(m.epoch, m.offset) for m in self.delivered]


def subscribed(harness, epoch="e1", offset=0, key=KEY):
    harness.tracks.start(key)
    harness.tracks.settle(key, epoch, offset)


def test_live_messages_in_order_are_delivered_and_repeats_dropped():
    """Subscribers get each message once even if Redis repeats one."""
    h = Harness()
    subscribed(h, offset=3)
    for n in (4, 5, 5, 4, 6):
        h.tracks.received(msg(n))
    assert h.got() == [("e1", 4), ("e1", 5), ("e1", 6)]
    assert h.reads == 0 and h.reports == []


def test_what_arrives_while_subscribing_waits_and_older_is_dropped():
    """Messages that came before the position read are older than any
    subscriber; newer ones go out once the subscription settles."""
    h = Harness()
    h.tracks.start(KEY)
    for n in (3, 4, 5):
        h.tracks.received(msg(n))
    assert h.got() == []
    h.tracks.settle(KEY, "e1", 4)
    assert h.got() == [("e1", 5)]


def test_a_gap_is_filled_from_the_stream_before_newer_live_messages():
    """A message that does not follow the last one makes the node read what
    it missed and deliver that first: no gap, no reordering."""
    h = Harness(stream=("e1", 7, [msg(n) for n in range(1, 8)]))
    subscribed(h, offset=2)
    h.tracks.received(msg(3))
    h.tracks.received(msg(6))
    h.tracks.received(msg(7))
    assert h.got() == [("e1", n) for n in range(3, 8)]
    assert h.reads == 1 and h.reports == []


def test_reconnect_catches_up_then_goes_live_without_duplicates():
    """After a reconnect, live messages wait until what was missed has been
    read and delivered; those also in the stream go out once."""
    h = Harness()
    subscribed(h, offset=0)
    h.tracks.received(msg(1))
    h.tracks.hold_all()
    for n in (4, 5):  # live, while the node has not caught up yet
        h.tracks.received(msg(n))
    assert h.got() == [("e1", 1)]
    h.stream = ("e1", 5, [msg(n) for n in range(1, 6)])
    h.tracks.catch_up(KEY)
    assert h.got() == [("e1", n) for n in range(1, 6)]
    assert h.reports == []


def test_redis_restarted_empty_new_epoch_delivered_from_the_start():
    """Redis lost its data: the channel's new epoch starts at offset 1, and
    everything in it is delivered, without a loss notice."""
    h = Harness()
    subscribed(h, offset=0)
    for n in (1, 2):
        h.tracks.received(msg(n))
    h.tracks.hold_all()
    h.tracks.received(msg(3, "e2"))
    h.stream = ("e2", 3, [msg(n, "e2") for n in (1, 2, 3)])
    h.tracks.catch_up(KEY)
    assert h.got() == [("e1", 1), ("e1", 2), ("e2", 1), ("e2", 2), ("e2", 3)]
    assert h.reports == []


def test_trimmed_history_is_reported_and_delivery_goes_on():
    """If the stream no longer holds what was missed, the node says so
    (kept=True) and delivers what it has."""
    h = Harness()
    subscribed(h, offset=2)
    h.stream = ("e1", 9, [msg(n) for n in (7, 8, 9)])
    h.tracks.received(msg(9))
    assert h.got() == [("e1", 7), ("e1", 8), ("e1", 9)]
    assert h.reports == [(KEY, HISTORY_GAP, True)]


def test_rewound_history_is_reported_and_later_positions_delivered():
    """Redis came back with an older copy (positions reused): reported, and
    the reused positions are delivered rather than dropped as repeats."""
    h = Harness()
    subscribed(h, offset=10)
    h.tracks.hold_all()
    h.stream = ("e1", 8, [msg(n) for n in range(1, 9)])
    h.tracks.catch_up(KEY)
    h.tracks.received(msg(9))
    assert h.got() == [("e1", 9)]
    assert h.reports == [(KEY, HISTORY_GAP, True)]


def test_channel_without_history_is_reported_after_a_reconnect():
    """No stream before and after: the backend cannot tell what was missed
    (kept=False), and live messages flow again."""
    h = Harness()
    key = "default/live"
    h.tracks.start(key)
    h.tracks.settle(key, None, 0)
    h.tracks.hold_all()
    h.tracks.received(Message("live", "n", 1, "x", "default"))
    h.tracks.catch_up(key)
    assert h.reports == [(key, NO_POSITIONS, False)]
    assert [m.data for m in h.delivered] == [1]


def test_a_read_that_fails_for_a_while_is_retried_and_nothing_skipped():
    """Redis going away again while the node catches up does not make it skip
    what is stored: it reads again, then delivers everything in order."""
    h = Harness(stream=ConnectionError("down"))
    h.recover_after_waits = ("e1", 5, [msg(n) for n in range(1, 6)])
    subscribed(h, offset=1)
    h.tracks.received(msg(5))
    assert h.got() == [("e1", n) for n in range(2, 6)]
    assert h.reports == []


def test_a_read_that_keeps_failing_is_reported_and_does_not_hold_delivery():
    """If the stream cannot be read for long, the loss is reported and the
    buffered messages go out, rather than waiting forever."""
    h = Harness(stream=ConnectionError("down"))
    subscribed(h, offset=1)
    h.tracks.received(msg(5))
    assert h.reports == [(KEY, READ_FAILED, True)]
    assert h.got() == [("e1", 5)]
    assert h.waits == 20
