"""One log multiplexer for every target: the lines of several sources, prefixed by source.

A source is a name and a function that yields its lines (a file's tail, a container's or a pod's
log stream) and stops when the given event is set; ``close`` (when the source has one) is called
on shutdown to end a read that blocks on the network. Without ``follow`` the sources are read one
after the other, in order; with it, one thread per source feeds a bounded queue and lines are
interleaved as they arrive. ``LogStream.close`` (the CLI calls it when Ctrl-C unwinds, and
exhausting the stream calls it too) stops every reader, closes every stream and joins the
threads, so nothing is left reading after a command returns.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from taskscale import proc

# A follower polls its file this often when nothing new was written.
FILE_POLL_S = 0.25
JOIN_TIMEOUT_S = 2.0
QUEUE_SIZE = 10_000


@dataclass(frozen=True)
class LogSource:
    name: str
    # Yields lines until exhausted or until the event is set (checked between lines).
    read: Callable[[threading.Event], Iterator[str]]
    # Ends a blocked read (closes a network stream); None when reads never block for long.
    close: Callable[[], None] | None = None


class LogStream(Iterator[str]):
    """Lines of ``sources`` (``name | line`` when ``prefix``); always ``close`` it."""

    def __init__(self, sources: list[LogSource], *, follow: bool, prefix: bool) -> None:
        self._sources = sources
        self._prefix = prefix
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lines = self._followed() if follow and len(sources) > 1 else self._in_order()

    def __iter__(self) -> LogStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._lines)
        except StopIteration:
            self.close()
            raise

    def close(self) -> None:
        """Stop every reader, close every stream, join the reader threads (bounded)."""
        self._stop.set()
        for source in self._sources:
            if source.close is not None:
                with contextlib.suppress(Exception):  # a stream may already be gone
                    source.close()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
        with contextlib.suppress(Exception):
            self._lines.close()  # type: ignore[attr-defined]

    def _format(self, name: str, line: str) -> str:
        return f"{name} | {line}" if self._prefix else line

    def _in_order(self) -> Iterator[str]:
        for source in self._sources:
            for line in source.read(self._stop):
                if self._stop.is_set():
                    return
                yield self._format(source.name, line)

    def _followed(self) -> Iterator[str]:
        lines: queue.Queue[tuple[str, str | None]] = queue.Queue(maxsize=QUEUE_SIZE)

        def put(item: tuple[str, str | None]) -> None:
            while not self._stop.is_set():
                with contextlib.suppress(queue.Full):
                    lines.put(item, timeout=0.2)
                    return

        def pump(source: LogSource) -> None:
            try:
                for line in source.read(self._stop):
                    if self._stop.is_set():
                        return
                    put((source.name, line))
            except Exception as exc:  # a stream closed under it on shutdown, or a reset
                if not self._stop.is_set():
                    put((source.name, f"(log ended: {getattr(exc, 'message', None) or exc!r})"))
            finally:
                put((source.name, None))

        self._threads = [
            threading.Thread(target=pump, args=(s,), daemon=True, name=f"log-{s.name}")
            for s in self._sources
        ]
        for thread in self._threads:
            thread.start()
        open_streams = len(self._threads)
        while open_streams:
            name, line = lines.get()
            if line is None:
                open_streams -= 1
                continue
            yield self._format(name, line)


def file_source(name: str, path: Path, tail: int, follow: bool) -> LogSource:
    """The last ``tail`` lines of a log file, then (``follow``) lines as they are appended; a
    truncated or deleted file (``down --purge``) starts over from its beginning."""

    def read(stop: threading.Event) -> Iterator[str]:
        text = proc.file_tail(path, tail) if tail > 0 else None
        yield from (text or "").splitlines()
        try:
            offset = path.stat().st_size
        except OSError:
            offset = 0
        while follow and not stop.is_set():
            try:
                size = path.stat().st_size
            except OSError:
                size = 0
            if size < offset:
                offset = 0
            if size > offset:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read(size - offset)
                complete, newline, _ = data.rpartition(b"\n")
                if newline:
                    offset += len(complete) + 1
                    yield from complete.decode(errors="replace").splitlines()
                    continue
            stop.wait(FILE_POLL_S)

    return LogSource(name, read)


def chunked_lines(chunks: Iterator[bytes | str]) -> Iterator[str]:
    """Complete lines out of a stream of byte or text chunks (the last partial one at the end)."""
    pending = ""
    for chunk in chunks:
        pending += chunk.decode(errors="replace") if isinstance(chunk, bytes) else chunk
        *complete, pending = pending.split("\n")
        yield from complete
    if pending:
        yield pending
