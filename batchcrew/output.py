"""Task output: what a task writes to its stdout and stderr, captured at a worker's file
descriptors, cut to `output_max`, mirrored to the worker's own stdout and stderr (each byte to
the stream it was written to), and relayed to the controller's stderr while it runs.

`Capture` is the worker's side (installed by the worker process's entry point only: it takes
the process's descriptors 1 and 2 over); `Relay` is the controller's. `last_line` serves both:
the workers table shows a running task's last line.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from typing import Literal, TextIO

#: A stream, by its file descriptor: 1 for stdout, 2 for stderr.
Stream = Literal[1, 2]

#: The capture's file is emptied as a task begins once it holds more than this.
_TRUNCATE_AT = 1 << 20
_CHUNK = 1 << 16  # bytes mirrored at a time
_TAIL_MAX = 200  # characters of the last line the workers table shows
_LAST_MAX = 1024  # bytes of the running task's output kept to find that line in
_LINE_MAX = 1 << 16  # a relayed line without an end is written out once this long


def cut(head: bytes, tail: bytes, total: int, limit: int, why: str) -> bytes:
    """Output of `total` bytes (more than `limit`) kept to `limit` bytes: its first bytes
    (`head`) and its last ones (`tail`), and in between a note of how many were cut and why.
    The note is not counted in `limit`; a character split by the cut is left out whole."""
    first = _whole_characters(head[: limit - limit // 2], at_end=True)
    last = _whole_characters(tail[len(tail) - limit // 2 :], at_end=False) if limit // 2 else b""
    note = f"\n[... {total - len(first) - len(last):,} bytes of output cut: {why} ...]\n"
    return first + note.encode() + last


def last_line(data: bytes) -> str:
    """The last line of `data` with text on it, cut to a few hundred characters."""
    for line in reversed(data.splitlines()):  # a progress bar's \r ends a line too
        text = line.decode(errors="replace").strip()
        if text:
            return text if len(text) <= _TAIL_MAX else "…" + text[-_TAIL_MAX:]
    return ""


def split_by_stream(
    start: int, end: int, stdout_end: int, stderr_end: int
) -> list[tuple[int, int, Stream]]:
    """The bytes from `start` to `end` of a file that stdout and stderr append to, in pieces
    `(first, last, stream)`, told apart by where each stream's last write ended (`stdout_end`,
    `stderr_end`). A stream wrote in the region if its last write ended inside it. Only stdout:
    the bytes up to its end are its, the rest stderr's. Both: the one that ended first has the
    bytes up to its end, the other the bytes from there to its own end. Bytes after those, and
    all of them when only stderr (or neither: another writer) wrote, go to stderr.

    Exact when one stream wrote in the region; when both did, an earlier write of the one that
    ended last may be counted as the other's."""
    pieces: list[tuple[int, int, Stream]] = []
    if start < stdout_end <= end:
        if start < stderr_end < stdout_end:  # both wrote, stderr's last write ended first
            pieces.append((start, stderr_end, 2))
            start = stderr_end
        pieces.append((start, stdout_end, 1))
        start = stdout_end
    if start < end:
        pieces.append((start, end, 2))
    return pieces


def _whole_characters(data: bytes, *, at_end: bool) -> bytes:
    """`data` without the part of a UTF-8 character that a cut left at its end (or start)."""
    if at_end:
        for back in range(1, min(4, len(data)) + 1):
            byte = data[-back]
            if byte < 0x80:
                return data  # ASCII: nothing is split
            if byte >= 0xC0:  # the first byte of a character `back` bytes from the end
                needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
                return data[:-back] if needed > back else data
        return data
    skip = 0
    while skip < min(3, len(data)) and 0x80 <= data[skip] < 0xC0:
        skip += 1
    return data[skip:]


class Capture:
    """The worker process's stdout and stderr, taken over at their file descriptors.

    Descriptors 1 and 2 both append to one unlinked temporary file, so a task's `print`, its
    writes to `sys.stderr`, and whatever C extensions and subprocesses write land there in the
    order they were written. The descriptors the process started with are kept, and what the
    file gains is mirrored to them (live, by `follow`), each byte to the stream it was written
    to, so that a local worker's tasks print on the controller's stdout and stderr, and a
    remote worker's log stream shows both. Descriptors 1 and 2 are two open files of their
    own: where each one's last write ended tells which bytes are whose (`split_by_stream`),
    exactly when one of them wrote since the last look. `log` (the original stderr) is where
    the worker's own messages go.

    `begin` and `end` frame a task (on the main thread): what the file gained in between is
    the task's output, cut to `output_max` bytes. What is written between tasks (by a thread a
    task left running) is mirrored only. With `relay`, `relay_since` gives what a running
    task wrote since it was last asked, at most `relay_max` bytes. The watcher thread calls
    `follow`, `relay_since` and `tail` meanwhile: a lock keeps the two threads apart.
    Raises OSError if the descriptors cannot be taken over (no temporary directory, say).
    """

    def __init__(
        self,
        output_max: int,
        *,
        relay: bool = False,
        relay_max: int = 1 << 16,
        directory: str | None = None,
    ) -> None:
        self.output_max = output_max
        self.relay = relay
        self._relay_max = relay_max
        _flush()
        self._saved = os.dup(1), os.dup(2)
        self._log = self._saved[1]
        handle, path = tempfile.mkstemp(prefix="batchcrew-output-", dir=directory)
        try:
            self._file = os.open(path, os.O_RDWR | os.O_APPEND)  # read, measured, truncated
            # Each stream's own open file, kept to ask where its last write ended (appending
            # leaves its offset there; measuring `_file` moves neither).
            self._writers = (
                os.open(path, os.O_WRONLY | os.O_APPEND),
                os.open(path, os.O_WRONLY | os.O_APPEND),
            )
        finally:
            os.close(handle)
            os.unlink(path)  # gone with the process, whichever way it ends
        os.dup2(self._writers[0], 1)
        os.dup2(self._writers[1], 2)
        self.log: TextIO = open(  # noqa: SIM115 (the worker's log, for its life: see close)
            self._log,
            "w",
            buffering=1,
            encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
            errors="backslashreplace",
            closefd=False,
        )
        # A task's prints reach the file (and the worker's log, live) line by line.
        with contextlib.suppress(Exception):
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        # With relay on, a worker whose log is a terminal leaves a task's output to the relay,
        # which prints it on the controller's (the same terminal, for a local worker).
        self._mirror = not (relay and os.isatty(self._log))
        self._lock = threading.Lock()
        self._start: int | None = None  # where the running task's output begins in the file
        self._seen = 0  # how far the file was read (and mirrored)
        self._mirrored: Stream = 2  # the stream the last mirrored bytes went to
        self._relayed = 0  # how far the running task's output was relayed
        self._last = b""  # the end of what the running task wrote, for `tail`
        self._ended = (0, 0)  # where the last task's output began and ended
        self._unrelayed = b""  # what the last task wrote after its last relay

    def begin(self) -> None:
        """A task starts: its output begins where the file was last seen to end (by the last
        task's `end`, or by `follow` since, which mirrored what came between). So a
        task costs one system call here, at its end; only output written between tasks in
        the moment before this one starts (after the watcher's last look, at most a tick ago)
        is counted as this task's.

        Its common path takes no lock, as every task pays for it: it only reads `_seen`, which
        the watcher may move on meanwhile (having mirrored what came between tasks); the
        task's output then starts a little earlier, as said above, and nothing is mirrored
        twice. `_start`, set last, is what tells the watcher that a task runs."""
        start = self._seen
        if start > _TRUNCATE_AT:
            with self._lock:
                size = self._size()
                if size > self._seen:
                    self._copy(self._seen, size)  # written between tasks: not this task's
                os.ftruncate(self._file, 0)  # its writers append: they go on from 0
                for writer in self._writers:  # where they last ended is no longer in the file
                    os.lseek(writer, 0, os.SEEK_SET)
                self._seen = 0
                start = 0
        self._last = b""
        self._relayed = start
        self._start = start

    def follow(self) -> None:
        """Mirror what was written since the last look (the watcher, every tick)."""
        with self._lock:
            size = self._size()
            if size <= self._seen:
                return
            if self._start is None:
                self._seen = self._copy(self._seen, size)  # between tasks
            else:
                self._look(self._start, size)

    def relay_since(self) -> bytes:
        """What the running task wrote since the last call (as far as `follow` looked), at
        most `relay_max` bytes: the last ones, after a note of how many were skipped."""
        with self._lock:
            return b"" if self._start is None else self._take_relay()

    def tail(self) -> str:
        """The last line the running task wrote (see `last_line`); "" if none."""
        with self._lock:
            last = self._last if self._start is not None else b""
        return last_line(last)

    def end(self) -> bytes:
        """The task has returned: its output, cut to `output_max` (b"" if it wrote nothing).
        Python's streams are flushed first, so a `print` without a newline counts too."""
        _flush()
        start = self._start
        if start is None:
            return b""
        size = os.lseek(self._file, 0, os.SEEK_END)  # its one system call (see `_size`)
        if size == start:
            # The common case: it wrote nothing, so the watcher has nothing to copy or keep,
            # and no lock is needed to say that the task is over.
            self._ended = (start, size)
            self._unrelayed = b""
            self._start = None
            return b""
        with self._lock:
            start = self._start
            if start is None:
                return b""
            size = self._size()  # a task may have truncated the file: `_size` says what then
            start = min(start, size)
            self._start = None
            if size > self._seen:
                size = self._look(start, size)
            self._ended = (start, size)
            if self._mirror and not self._last.endswith(b"\n"):
                # What that stream says next (the worker's log, say) starts a line.
                _write_all(self._saved[self._mirrored - 1], b"\n")
            self._unrelayed = self._take_relay() if self.relay else b""
            return self._kept(start, size, self.output_max, f"output_max={self.output_max}")

    def again(self, limit: int, why: str) -> bytes:
        """The last task's output again, cut to `limit` bytes (for an outcome that would be
        too large to send), the note saying `why`."""
        with self._lock:
            start, size = self._ended
            return self._kept(start, size, min(limit, self.output_max), why)

    def so_far(self) -> bytes:
        """What the running task wrote until now, cut to `output_max` (for an outcome sent
        while it still runs: a timed-out task that does not stop)."""
        with self._lock:
            written = self._written()
            if written is None:
                return b""
            start, size = written
            if size > self._seen:
                size = self._look(start, size)
            return self._kept(start, size, self.output_max, f"output_max={self.output_max}")

    def take_unrelayed(self) -> bytes:
        """What the task that just ended wrote after its last relay (with `relay` only)."""
        with self._lock:
            data, self._unrelayed = self._unrelayed, b""
            return data

    def close(self) -> None:
        """Mirror what is left, give descriptors 1 and 2 back, close the file."""
        _flush()
        with self._lock, contextlib.suppress(OSError):
            size = self._size()
            if size > self._seen:
                self._copy(self._seen, size)
            self._start = None
            self.log.flush()
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
            self.log.close()
            for descriptor in (*self._saved, *self._writers, self._file):
                os.close(descriptor)

    # -- under the lock -----------------------------------------------------------------------

    def _written(self) -> tuple[int, int] | None:
        """Where the running task's output starts and ends in the file; None if no task
        runs. Called holding the lock."""
        start = self._start
        if start is None:
            return None
        size = self._size()
        return min(start, size), size

    def _size(self) -> int:
        """The file's size now. Should a task have truncated it (opening /dev/stdout for
        writing does), what was read of it is forgotten."""
        # Its writers append wherever the offset is: moving it to the end costs them nothing,
        # and asks less of the kernel than fstat does.
        size = os.lseek(self._file, 0, os.SEEK_END)
        if size < self._seen:
            self._seen = self._relayed = size
            if self._start is not None:
                self._start = min(self._start, size)
        return size

    def _look(self, start: int, size: int) -> int:
        """The running task wrote up to `size`: mirror the new part, keep the end. Returns
        where the file was seen to end (past `size` if mirroring found more: see `_copy`)."""
        if self._mirror:
            size = self._copy(self._seen, size)
        self._seen = size
        length = min(size - start, _LAST_MAX)
        self._last = os.pread(self._file, length, size - length)
        return size

    def _copy(self, start: int, end: int) -> int:
        """Mirror the file's bytes from `start` to `end`, each piece to the stream that wrote
        it (see `split_by_stream`). Returns where it mirrored to: past `end` when a stream's
        last write ended past it, having come after the file was measured (that write is then
        mirrored whole, rather than what the stream wrote before it going to stderr)."""
        stdout_end = os.lseek(self._writers[0], 0, os.SEEK_CUR)  # moves nothing
        stderr_end = os.lseek(self._writers[1], 0, os.SEEK_CUR)
        if max(stdout_end, stderr_end) > end:
            end = max(end, os.lseek(self._file, 0, os.SEEK_END))
        for first, last, stream in split_by_stream(start, end, stdout_end, stderr_end):
            self._mirrored = stream
            target = self._saved[stream - 1]
            while first < last:
                chunk = os.pread(self._file, min(_CHUNK, last - first), first)
                if not chunk:
                    break  # a task truncated the file: `_size` sees to it next
                _write_all(target, chunk)
                first += len(chunk)
        return end

    def _take_relay(self) -> bytes:
        start, end = self._relayed, self._seen
        self._relayed = end
        if end - start <= self._relay_max:
            return os.pread(self._file, end - start, start) if end > start else b""
        kept = max(0, self._relay_max - 100)
        note = f"[... {end - start - kept:,} bytes not relayed ...]\n".encode()
        return note + _whole_characters(os.pread(self._file, kept, end - kept), at_end=False)

    def _kept(self, start: int, size: int, limit: int, why: str) -> bytes:
        total = size - start
        if limit <= 0:
            return b""
        if total <= limit:
            return os.pread(self._file, total, start) if total else b""
        head = os.pread(self._file, limit - limit // 2, start)
        tail = os.pread(self._file, limit // 2, size - limit // 2) if limit // 2 else b""
        return cut(head, tail, total, limit, why)


def _flush() -> None:
    """Flush Python's stdout and stderr (a task may have replaced them with anything)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        pass


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(descriptor, view)
        except InterruptedError:
            continue
        except OSError:
            return  # the log is gone (a closed pipe): the output stays in the results
        view = view[written:]


class Relay:
    """The controller's side of `output_relay`: relayed output written to its stderr line by
    line, each line after its task's name (`[fit-3] epoch 2: loss 0.41`).

    A line's end may come in a later message: each task's unfinished line waits until it
    comes, or until the task resolves (`end`).
    """

    def __init__(self) -> None:
        self._partial: dict[int, tuple[str, bytes]] = {}

    def write(self, task_id: int, name: str, data: bytes) -> None:
        """Write the whole lines of `data`, keeping an unfinished last line for later."""
        _, before = self._partial.pop(task_id, ("", b""))
        data = before + data
        end = data.rfind(b"\n") + 1
        if len(data) - end >= _LINE_MAX:
            end = len(data)
        if end < len(data):
            self._partial[task_id] = (name, data[end:])
        if end:
            self._emit(name, data[:end])

    def end(self, task_id: int) -> None:
        """Task `task_id` resolved: write its unfinished line, if any."""
        if self._partial:
            name, rest = self._partial.pop(task_id, ("", b""))
            if rest:
                self._emit(name, rest)

    def _emit(self, name: str, data: bytes) -> None:
        prefix = f"[{name}] "
        text = data.decode(errors="replace").rstrip("\n")
        lines = "".join(f"{prefix}{line}\n" for line in text.split("\n"))
        stream = sys.stderr  # looked up now: it may have been redirected since
        with contextlib.suppress(Exception):
            stream.write(lines)
            stream.flush()
