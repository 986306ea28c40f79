"""The progress line: which step of how many, the time so far, and what is running now."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Rewrites one line on a terminal; writes one line per update anywhere else."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.step = 0
        self._stream = stream
        self._tty = stream.isatty()
        self._started = time.monotonic()

    def begin(self, text: str) -> None:
        """Start the next step."""
        self.step += 1
        self.show(text)

    def show(self, text: str) -> None:
        """Say what the current step is doing."""
        elapsed = int(time.monotonic() - self._started)
        line = f"[{self.step:>3}/{self.total} {elapsed // 60:02d}:{elapsed % 60:02d}] {text}"
        if self._tty:
            self._stream.write(f"\r\033[K{line}")
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        """End the line on a terminal."""
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
