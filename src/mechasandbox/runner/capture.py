"""Bounded capture of one output stream."""

from __future__ import annotations


class CappedBuffer:
    """Keeps the first `cap` bytes; everything after is counted and dropped.

    The reader keeps draining past the cap so that the command never blocks on a full pipe,
    while the host's memory stays bounded by `cap`.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._chunks: list[bytes] = []
        self._kept = 0
        self.dropped = 0

    def feed(self, data: bytes) -> bytes:
        """Keep what of `data` fits; returns that part (b"" once the cap is reached)."""
        room = self._cap - self._kept
        if room <= 0:
            self.dropped += len(data)
            return b""
        kept = data[:room]
        self._chunks.append(kept)
        self._kept += len(kept)
        self.dropped += len(data) - len(kept)
        return kept

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def value(self) -> bytes:
        return b"".join(self._chunks)
