"""Progress for long steps, readable in a terminal and in ``ray job logs``.

In a terminal this is a tqdm bar. When stderr is not a terminal (``ray job logs``, CI, a
file) a bar's carriage returns turn into noise, so a plain line is printed every
``every_s`` seconds and at the end. ``quiet=True`` or ``ACL_DIST_QUIET=1`` silences both.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def is_quiet(quiet: bool | None = None) -> bool:
    if quiet is not None:
        return quiet
    return os.environ.get("ACL_DIST_QUIET", "") not in ("", "0")


#: The terminal's width while :mod:`acl_dist.console` filters stderr (the filter's pipe
#: is no terminal itself), None when stderr is not a terminal; unset: ask stderr.
FILTERED_TERMINAL_COLUMNS: list[int | None] = []


def stderr_terminal() -> int | None:
    """The width of the terminal stderr shows on, or None when it is not a terminal."""
    if FILTERED_TERMINAL_COLUMNS:
        return FILTERED_TERMINAL_COLUMNS[-1]
    if not sys.stderr.isatty():
        return None
    import shutil

    return shutil.get_terminal_size().columns


def log(message: str, quiet: bool | None = None) -> None:
    """One progress/status line on stderr (not in quiet mode)."""
    if not is_quiet(quiet):
        print(message, file=sys.stderr, flush=True)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it",
             quiet: bool | None = None, every_s: float = 10.0) -> Iterator[T]:
    """Iterate ``items`` showing progress (see module doc), one unit per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    meter = Meter(desc, total, unit, quiet, every_s)
    for item in items:
        yield item
        meter.add(1)
    meter.close()


class Meter:
    """Progress counted in units of work (videos written, not batches): :meth:`add` after
    each piece, :meth:`close` at the end. A tqdm bar in a terminal; elsewhere a line every
    ``every_s`` seconds (done/total, elapsed, rate) and one at the end."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it",
                 quiet: bool | None = None, every_s: float = 10.0):
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.quiet = is_quiet(quiet)
        self.count = 0
        self.start = self.last = time.perf_counter()
        self.bar = None
        terminal = stderr_terminal()
        if not self.quiet and terminal is not None:
            from tqdm import tqdm

            self.bar = tqdm(desc=desc, total=total, unit=unit, file=sys.stderr,
                            ncols=terminal)

    def add(self, n: int) -> None:
        self.count += n
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            of = f"/{self.total}" if self.total else ""
            rate = self.count / max(now - self.start, 1e-9)
            print(f"{self.desc}: {self.count}{of} {self.unit}s, {now - self.start:.0f} s "
                  f"({rate:.0f} {self.unit}s/s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.close()
            return
        print(f"{self.desc}: {self.count} {self.unit}s in "
              f"{time.perf_counter() - self.start:.1f} s", file=sys.stderr, flush=True)


class StepLines:
    """When a training loop prints its progress line, whatever its number of steps: at
    its first step (a line early, however long a step takes or the round is), at every
    ``log_every``-th step (the steps its metrics, checkpoints and logs are kept at, which
    scripts and tests watching a run wait for), at its last, and whenever ``every_s``
    seconds have passed since the previous line (a long ``log_every`` never leaves the
    log quiet). Which steps get a line depends on the clock, so only the worker that
    prints asks (never a collective's decision)."""

    def __init__(self, steps: int, log_every: int = 0, every_s: float = 10.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.steps, self.log_every, self.every_s, self.clock = steps, log_every, every_s, clock
        self.last: float | None = None
        self.since = clock()
        self.videos = 0

    def step(self, step: int, videos: int) -> float | None:
        """Count a finished step of ``videos`` videos. When it gets a line: the videos per
        second since the previous line (or the start); else None."""
        self.videos += videos
        now = self.clock()
        kept = self.log_every > 0 and step % self.log_every == 0
        if self.last is not None and step < self.steps and not kept and \
                now - self.last < self.every_s:
            return None
        rate = self.videos / max(now - self.since, 1e-9)
        self.last = self.since = now
        self.videos = 0
        return rate
