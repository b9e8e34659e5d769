"""Where a request's decoding runs: the shared worker threads, or one low-priority lane for large inputs.

On a machine with few cores, decoding one large upload (a 1,800 x 1,800 PNG takes ~0.1 s of a core; a
megabyte of text is tokenised in ~0.8 s when read whole) competes for the CPU with the forwards of every
small request, whose latency then doubles or triples. Large inputs are therefore decoded on one thread
whose scheduling priority is lowered (Linux `nice` 19 applies per thread): when the machine is idle it
runs at full speed; when small requests need the cores, the kernel gives them first. Only the decoding
moves: the forward of a large request runs back on the shared threads, since it holds the model's lock
and a low-priority holder would make the others wait for it (priority inversion). Large inputs then
queue behind each other, one at a time, which is what one sender of many large inputs should get.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: A file upload over this many bytes, or a text over this many characters, is decoded in the slow lane.
LARGE_BYTES = 1024 * 1024
LARGE_TEXT_CHARS = 64 * 1024
#: An image whose header claims more pixels than this (about a 2,000 x 2,000 canvas) is large too: a
#: small PNG can hold a large canvas, and decoding costs by the pixel.
LARGE_PIXELS = 4_000_000
LOW_PRIORITY = 19


def _lower_priority() -> None:
    """Lower this thread's priority (Linux: a thread's nice value is its own; elsewhere the call would
    name a process, so nothing is done there)."""
    if sys.platform.startswith("linux"):
        # Refused (a container's policy): the lane still takes large inputs one at a time.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOW_PRIORITY)


def claimed_pixels(data: bytes) -> int:
    """The canvas an image's header claims (0 when it is not an image PIL can size without decoding)."""
    import io

    from headstart.data.images import claimed_size

    size = claimed_size(io.BytesIO(data))
    return size[0] * size[1] if size else 0


def is_large(raw: Any, *, image: bool) -> bool:
    """Whether one input (upload bytes or a text) is decoded in the slow lane."""
    if isinstance(raw, str):
        return len(raw) > LARGE_TEXT_CHARS
    return len(raw) > LARGE_BYTES or (image and claimed_pixels(raw) > LARGE_PIXELS)


class SlowLane:
    """One low-priority worker thread, started on first use (see the module docstring)."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="headstart-large", initializer=_lower_priority
                )
            return self._pool

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.wrap_future(self._executor().submit(fn, *args))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
