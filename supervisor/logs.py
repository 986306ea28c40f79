"""The supervisor's log: its own messages, the platform's per-call lines, the function's output.

Everything goes to stderr, one line per record, as readable text or as JSON lines. Records are
buffered and written together at most FLUSH_DELAY_S after the first of them, so the per-call
lines (START, END, REPORT) and the function's output cost a list append on the hot path, not a
system call each (a write to a file costs the supervisor as much as the rest of a call). In text
form the per-call lines are even formatted then, from the figures kept at the call's time: a
batch of hundreds of lines formatted in one go finds the code and data of the formatting in the
CPU's caches, where a line formatted between two calls does not (hello at 32 connections: the
per-call lines cost the supervisor ~6.5 us a call formatted at once, ~1.5-2 us less formatted
in batches). The time stamp's text is made once a millisecond. The writing itself never blocks
and never fails the caller (see logsink.py).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import time
from typing import Protocol

from supervisor import pipes
from supervisor.calls import Call
from supervisor.config import LOG_LEVELS
from supervisor.logsink import LogSink

# A REPORT line's figures: request id, duration ms, memory limit MB, peak kB, queuing ms, init
# ms or None (report_line's arguments).
ReportFigures = tuple[str, float, int, int, float, float | None]

LEVELS = {name: getattr(logging, name.upper()) for name in LOG_LEVELS}
_LEVEL_NAMES = {number: name.upper() for name, number in LEVELS.items()}
_PADDED_LEVEL_NAMES = {number: f"{name:<7}" for number, name in _LEVEL_NAMES.items()}

# A worker line longer than this is cut: a function printing 50 MB without a newline must not
# become a 50 MB string in the supervisor.
MAX_LINE_BYTES = 64 * 1024
# How much of a worker's pending output one drain reads before it lets the loop run again.
MAX_DRAIN_BYTES = 1024 * 1024
# Records wait at most this long to be written, or until this many characters are waiting: a
# person reading the log does not see 20 ms, and at thousands of calls a second one write
# carries hundreds of lines.
FLUSH_DELAY_S = 0.02
FLUSH_CHARS = 64 * 1024
# What a call's START line, or its END and REPORT lines, count toward FLUSH_CHARS before they
# are formatted: about their length.
_CALL_LINES_CHARS = 160
# How much of a call's log a tail (the Lambda API's X-Amz-Log-Type: Tail) keeps: its last 4 KB.
TAIL_BYTES = 4096


class Log:
    """Formats records and writes them to a stream, in batches while an event loop runs."""

    def __init__(self, log_format: str, level: str, function: str,
                 sink: LogSink | None = None) -> None:
        self.level = LEVELS[level]
        self._json = log_format == "json"
        self._function = function
        self._sink = sink if sink is not None else LogSink()
        # Lines, and per-call records still to be formatted: (formatter, its arguments...).
        self._pending: list[str | tuple] = []
        self._pending_lines = 0
        self._pending_chars = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._stamp_second = self._stamp_ms = -1
        self._stamp_prefix = self._stamp = ""
        self._tails: dict[str, _Tail] = {}

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Batch writes on this loop; with None, write every record at once."""
        self.flush()
        self._loop = loop
        self._sink.attach(loop)

    def close(self, timeout_s: float) -> None:
        """Detach from the loop and give buffered records up to `timeout_s` to go out."""
        self.attach(None)
        self._sink.drain(timeout_s)

    @property
    def dropped_lines(self) -> int:
        """Records lost because the destination did not take them in time, or failed."""
        return self._sink.dropped_lines

    def write(self, level: int, message: str, instance: int | None = None,
              request_id: str | None = None, stream: str | None = None) -> None:
        """Log one record; `stream` marks a line the function wrote to stdout or stderr."""
        if self._tails:
            self._keep_in_tail(request_id, message)
        self._write(level, message, instance, request_id, stream)

    def _write(self, level: int, message: str, instance: int | None, request_id: str | None,
               stream: str | None = None) -> None:
        if level < self.level:
            return
        if self._json:
            line = self._format_json(level, message, instance, request_id, stream)
        else:
            line = f"{self._text_prefix(level, instance, request_id)}{message}\n"
        self._add(line, 1, len(line))

    def call_started(self, instance: int, request_id: str, version: str) -> None:
        """A call's START line (written for every call: made with as little work as it can)."""
        if self._tails:
            self._keep_in_tail(request_id, start_line(request_id, version))
        if self.level > logging.INFO:
            return
        if self._json:
            self._write(logging.INFO, start_line(request_id, version), instance, request_id)
            return
        self._add((_start_text, self._timestamp(), instance, request_id, version), 1,
                  _CALL_LINES_CHARS)

    def call_ended(self, instance: int, figures: ReportFigures) -> None:
        """A call's END line and its REPORT line, of `figures` (see report_line)."""
        request_id = figures[0]
        if self._tails:
            self._keep_in_tail(request_id, end_line(request_id), report_line(*figures))
        if self.level > logging.INFO:
            return
        if self._json:
            self._write(logging.INFO, end_line(request_id), instance, request_id)
            self._write(logging.INFO, report_line(*figures), instance, request_id)
            return
        self._add((_end_text, self._timestamp(), instance, figures), 2, _CALL_LINES_CHARS)

    def tail(self, request_id: str) -> None:
        """Keep the last TAIL_BYTES of the lines of call `request_id`, whatever the log level,
        until take_tail()."""
        self._tails[request_id] = _Tail()

    def _keep_in_tail(self, request_id: str | None, *lines: str) -> None:
        tail = self._tails.get(request_id) if request_id is not None else None
        if tail is not None:
            for line in lines:
                tail.add(line)

    def take_tail(self, request_id: str) -> str:
        """The kept end of the call's log (one line per record), and stop keeping it."""
        tail = self._tails.pop(request_id, None)
        return tail.text() if tail is not None else ""

    def _add(self, entry: str | tuple, lines: int, chars: int) -> None:
        self._pending.append(entry)
        self._pending_lines += lines
        self._pending_chars += chars
        if self._loop is None or self._pending_chars >= FLUSH_CHARS:
            self.flush()
        elif self._flush_timer is None:
            self._flush_timer = self._loop.call_later(FLUSH_DELAY_S, self.flush)

    def debug(self, message: str, instance: int | None = None) -> None:
        self.write(logging.DEBUG, message, instance)

    def info(self, message: str, instance: int | None = None) -> None:
        self.write(logging.INFO, message, instance)

    def warning(self, message: str, instance: int | None = None) -> None:
        self.write(logging.WARNING, message, instance)

    def error(self, message: str, instance: int | None = None) -> None:
        self.write(logging.ERROR, message, instance)

    def flush(self) -> None:
        """Write the waiting records now."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if not self._pending:
            return
        data = "".join([entry if isinstance(entry, str) else entry[0](*entry[1:])
                        for entry in self._pending]).encode("utf-8", "replace")
        lines = self._pending_lines
        self._pending.clear()
        self._pending_lines = self._pending_chars = 0
        self._sink.write(data, lines)

    def _timestamp(self) -> str:
        """The time as ISO 8601 UTC with milliseconds; made anew only when the millisecond
        changes, the date and time of day only when the second does."""
        now_ms = int(time.time() * 1000)
        if now_ms != self._stamp_ms:
            self._stamp_ms = now_ms
            second, ms = divmod(now_ms, 1000)
            if second != self._stamp_second:
                self._stamp_second = second
                self._stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamp = f"{self._stamp_prefix}.{ms:03d}Z"
        return self._stamp

    def _text_prefix(self, level: int, instance: int | None, request_id: str | None) -> str:
        if request_id is not None:
            where = f"[{request_id}] " if instance is None else f"[{instance} {request_id}] "
        elif instance is not None:
            where = f"[{instance}] "
        else:
            where = ""
        return f"{self._timestamp()} {_PADDED_LEVEL_NAMES[level]} {where}"

    def _format_json(self, level: int, message: str, instance: int | None,
                     request_id: str | None, stream: str | None) -> str:
        record = {
            "time": self._timestamp(),
            "level": _LEVEL_NAMES[level],
            "function": self._function,
            "instance": instance,
            "request_id": request_id,
            "message": message,
        }
        if stream is not None:
            record["stream"] = stream
        return json.dumps(record, ensure_ascii=False) + "\n"


class _Tail:
    """The last lines of one call's log, within TAIL_BYTES or a little more."""

    def __init__(self) -> None:
        self._lines: collections.deque[str] = collections.deque()
        self._size = 0

    def add(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line) + 1
        while self._size - len(self._lines[0]) - 1 >= TAIL_BYTES:
            self._size -= len(self._lines.popleft()) + 1

    def text(self) -> str:
        encoded = "".join(line + "\n" for line in self._lines).encode("utf-8", "replace")
        return encoded[-TAIL_BYTES:].decode("utf-8", "ignore")


class RefusalLines:
    """The lines of calls refused at once (429), at most `per_second` a second.

    Under overload a line per refusal would write more log than the calls it refuses, and cost
    the supervisor more than the refusal itself; beyond the budget, refusals are counted and
    one line a second says how many went unlogged (the metrics count them all).
    """

    def __init__(self, log: Log, per_second: int, loop: asyncio.AbstractEventLoop) -> None:
        self._log = log
        self._per_second = per_second
        self._loop = loop
        self._second = -1
        self._written = 0
        self._unwritten = 0

    def write(self, request_id: str, line: str) -> None:
        second = int(time.monotonic())
        if second != self._second:
            self._second = second
            self._written = 0
        if self._written < self._per_second:
            self._written += 1
            self._log.write(logging.WARNING, line, None, request_id)
            return
        if not self._unwritten:
            self._loop.call_later(1.0, self._summarize)
        self._unwritten += 1

    def _summarize(self) -> None:
        self._log.warning(f"{self._unwritten} more call(s) refused with 429 were not logged "
                          f"one by one (at most {self._per_second} lines a second)")
        self._unwritten = 0


class LoggingBridge(logging.Handler):
    """Sends records of the standard logging module (asyncio's, the HTTP layer's) to our Log."""

    def __init__(self, log: Log) -> None:
        super().__init__()
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        known_level = max((n for n in _LEVEL_NAMES if n <= record.levelno), default=logging.DEBUG)
        self._log.write(known_level, self.format(record))


class CallSource(Protocol):
    """Who a worker's output line belongs to: the instance and the call it is serving."""

    id: int
    request_id: str | None


class OutputCapture:
    """Reads one of a worker's output pipes and logs each line under the call it belongs to."""

    def __init__(self, fd: int, stream: str, source: CallSource, log: Log,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._fd = fd
        self._stream = stream
        self._source = source
        self._log = log
        self._loop = loop
        self._partial = bytearray()
        self._dropped_bytes = 0
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read_once)

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def holds_partial_line(self) -> bool:
        """Whether part of a line (no newline yet) waits to be logged."""
        return bool(self._partial or self._dropped_bytes)

    def end_call(self, drain: bool) -> None:
        """The call ended: log its output, reading what is left in the pipe if `drain`."""
        if drain:
            self.drain()
        else:
            self._emit_partial()

    def drain(self) -> None:
        """Log what the worker has written so far, the unfinished last line included."""
        budget = MAX_DRAIN_BYTES
        while budget > 0 and self._read_once():
            budget -= pipes.READ_BYTES
        self._emit_partial()

    def close(self) -> None:
        """Log what is left and stop reading."""
        self.drain()
        self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _read_once(self) -> bool:
        """Read what is there; True if more may follow at once."""
        if self._fd < 0:
            return False
        try:
            data = bytes(pipes.read(self._fd))
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._release()
            self._emit_partial()
            return False
        *lines, rest = data.split(b"\n")
        for piece in lines:
            self._keep(piece)
            self._emit_line()
        self._keep(rest)
        return len(data) == pipes.READ_BYTES

    def _keep(self, piece: bytes) -> None:
        room = MAX_LINE_BYTES - len(self._partial)
        if len(piece) > room:
            self._partial += piece[:room]
            self._dropped_bytes += len(piece) - room
        else:
            self._partial += piece

    def _emit_partial(self) -> None:
        if self._partial or self._dropped_bytes:
            self._emit_line()

    def _emit_line(self) -> None:
        text = self._partial.decode("utf-8", "replace").removesuffix("\r")
        if self._dropped_bytes:
            text += f" [line cut: {self._dropped_bytes} more bytes dropped]"
        self._partial.clear()
        self._dropped_bytes = 0
        self._log.write(logging.INFO, text, self._source.id, self._source.request_id,
                        self._stream)


def call_end(log: Log, call: Call, status: int, error_message: str | None, memory_mb: int,
             refusal_lines: RefusalLines | None) -> None:
    """A call's last lines: END, ERROR (when `error_message`) and REPORT; a call that never
    reached an instance gets its ERROR line alone (a refusal through `refusal_lines`)."""
    rid, instance = call.request_id, call.instance_id
    dispatched_at, finished_at = call.dispatched_at, call.finished_at
    if dispatched_at is None or finished_at is None or instance is None:
        if error_message is None:
            return
        line = error_line(rid, status, error_message)
        if status == 429 and refusal_lines is not None:
            refusal_lines.write(rid, line)
        else:
            log.write(logging.INFO if status == 499 else logging.WARNING, line, None, rid)
        return
    if error_message is not None:
        log.write(logging.INFO, end_line(rid), instance, rid)
        log.write(logging.ERROR, error_line(rid, status, error_message), instance, rid)
    if log.level > logging.INFO:
        return
    init_s = call.init_duration_s
    figures = (rid, (finished_at - dispatched_at + (init_s or 0.0)) * 1000, memory_mb,
               call.peak_kb, (dispatched_at - call.arrived_at) * 1000,
               init_s * 1000 if init_s is not None else None)
    if error_message is None:
        log.call_ended(instance, figures)
    else:
        log.write(logging.INFO, report_line(*figures), instance, rid)


def _start_text(stamp: str, instance: int, request_id: str, version: str) -> str:
    return f"{stamp} INFO    [{instance} {request_id}] {start_line(request_id, version)}\n"


def _end_text(stamp: str, instance: int, figures: ReportFigures) -> str:
    request_id = figures[0]
    prefix = f"{stamp} INFO    [{instance} {request_id}] "
    return f"{prefix}{end_line(request_id)}\n{prefix}{report_line(*figures)}\n"


def start_line(request_id: str, version: str) -> str:
    return f"START RequestID: {request_id} Version: {version}"


def end_line(request_id: str) -> str:
    return f"END RequestID: {request_id}"


def error_line(request_id: str, status: int, message: str) -> str:
    return f"ERROR RequestID: {request_id} Code: {status} Message: {message}"


def report_line(request_id: str, duration_ms: float, memory_mb: int, used_kb: int,
                queuing_ms: float, init_ms: float | None) -> str:
    """The platform's REPORT line; billed duration is rounded up to 100 ms."""
    billed_ms = 100 if duration_ms <= 100 else math.ceil(duration_ms / 100) * 100
    line = (
        f"REPORT RequestID: {request_id} Duration: {duration_ms:.3f} ms "
        f"Billed Duration: {billed_ms} ms Memory Size: {memory_mb} MB "
        f"Max Memory Used: {round(used_kb / 1024)} MB Queuing Duration: {queuing_ms:.3f} ms"
    )
    if init_ms is not None:
        line += f" Function Init Duration: {init_ms:.3f} ms"
    return line
