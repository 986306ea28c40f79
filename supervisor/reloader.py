"""--reload: a change to a .py file under the code root replaces every instance.

For the development loop: save a file, and the next call runs the new code. watchfiles watches
the code root (inotify, no polling) and batches the burst of events an editor's save makes; the
pool then replaces its instances strictly: the old ones take no new call, so the next call waits
for a fresh instance (or gets the new code's import error) instead of running the old code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from watchfiles import PythonFilter, awatch

from supervisor import logs

# Editors write a file in several steps: changes within this many ms make one reload.
DEBOUNCE_MS = 100


@contextlib.contextmanager
def reloading(code_root: Path, reload: Callable[[str], None], log: logs.Log) -> Iterator[None]:
    """Watch `code_root` while the block runs; call `reload(reason)` after each change."""
    stop = asyncio.Event()
    watcher = asyncio.get_running_loop().create_task(_watch(code_root, reload, log, stop))
    try:
        yield
    finally:
        stop.set()
        watcher.cancel()


async def _watch(code_root: Path, reload: Callable[[str], None], log: logs.Log,
                 stop: asyncio.Event) -> None:
    log.info(f"--reload: watching {code_root} for changes to .py files")
    async for changes in awatch(code_root, watch_filter=PythonFilter(), debounce=DEBOUNCE_MS,
                                stop_event=stop):
        names = sorted({Path(path).name for _, path in changes})
        reload(f"code changed ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
