"""Ways in: each transport is a thin adapter around a Session."""


class SlowConsumerGuard:
    """The slow-consumer policy every transport shares, as a push producer.

    The transport registers the connection as a streaming producer on its
    socket; Twisted pauses it when the kernel stops taking bytes (the client
    is not reading).  Bytes written while paused are counted, and the
    connection is to be dropped once they pass ``send-queue-bytes``, so one
    stalled client cannot grow the server's memory without bound.
    """

    _paused = False
    _backlog = 0

    def pauseProducing(self) -> None:
        # Twisted calls this on every write while the buffer is over its
        # size; only the first call starts counting.
        if not self._paused:
            self._paused = True
            self._backlog = 0

    def resumeProducing(self) -> None:
        self._paused = False
        self._backlog = 0

    def stopProducing(self) -> None:
        pass

    def too_far_behind(self, nbytes: int, limit: int) -> bool:
        """Account for ``nbytes`` about to be written; True: drop the client."""
        if not self._paused:
            return False
        self._backlog += nbytes
        return self._backlog > limit
