"""What a person sees while a Ray command runs: acl-dist's lines and real problems, not
Ray's routine chatter (which stays in Ray's log files, ``/tmp/ray/session_latest/logs``).

Measured on a 4-trial ``acl-dist tune`` of the tiny benchmark: 56 lines on stderr, 15 of
them ours. The rest were lines that every run prints and no user can act on:

* Ray's notice that token authentication is on (docs/cluster.md says how it is used);
* ``core_worker.cc: Actor ... has constructor arguments in the object store and
  max_restarts > 0``, printed for every Ray Data actor pool and Ray Train's preemption
  watcher (ray-project/ray#57733, open: "confusing ... with minimal Ray Data use");
* Ray Data's "Progress bars disabled" (we turn them off: our own progress lines replace
  them) and "Dataset ... execution finished in" (our line says the same per pass);
* Tune's "experiment state snapshotting has been triggered multiple times" (three lines per
  trial report; switched off through Tune's own variable in :mod:`acl_dist.tune`);
* on S3, botocore's "Found credentials in environment variables" and "Found endpoint for
  s3 via" from every S3 client of every worker (two per trial round in a Tune job);
* a Ray worker's "Exception ignored in ... SystemExit: 1" traceback when Ray stops it with
  SIGTERM (a finished Tune trial's actor): a block of lines, see :data:`NOISE_BLOCKS`.

On stdout, Tune's experiment banner, its "View detailed results" and TensorBoard hints
(into Ray's temp dir; switched off with Tune's legacy reporter at verbosity 0) and the
raylet's "N PYTHON worker processes have been started" (fractional CPUs for training
workers are acl-dist's design on small machines, RAY_NOTES.md §4).

Many of these come from Ray's worker processes, which write to the terminal they
inherited from the local instance's raylet, not through Python logging. So the filter sits
on file descriptors 1 and 2 themselves: :func:`filtered_output` replaces each with a pipe
before Ray starts (the local instance's processes inherit the pipes) and a thread copies
every line to the real stream except those matching :data:`NOISE`. Everything else passes untouched,
a progress bar's carriage-return redraws included. ``ACL_DIST_RAY_OUTPUT=all`` turns the
filter off. Imports neither Ray nor torch.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from typing import Any, Iterator

#: Lines dropped from stderr (module doc), each with why.
NOISE: tuple[tuple[re.Pattern[bytes], str], ...] = (
    (re.compile(rb"Token authentication is enabled for this Ray cluster"),
     "Ray's notice that a local instance uses the token in ~/.ray/auth_token"),
    (re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments "
                rb"in the object store and max_restarts > 0"),
     "ray-project/ray#57733: printed for every Ray Data actor pool and Train watcher"),
    (re.compile(rb"Progress bars disabled\. To enable, set"),
     "acl-dist turns Ray Data's bars off on purpose; its own progress lines replace them"),
    (re.compile(rb"Dataset \S+ execution finished in [\d.]+ seconds"),
     "the pass's own progress line says the same"),
    (re.compile(rb"Dataset \S+ execution failed$"),
     "the error line that follows names what failed and why"),
    (re.compile(rb"^(\x1b\[[\d;]*m)?(\([^)]*\) ?)?(\x1b\[[\d;]*m)?\s*Found (credentials in "
                rb"environment variables|endpoint for s3 via: )"),
     "botocore's INFO lines, one per S3 client of every Ray worker: nothing to act on"),
    (re.compile(rb"\(raylet[^)]*\)\S* WARNING: \d+ PYTHON worker processes have been "
                rb"started"),
     "fractional CPUs per training worker are by design on small machines"),
)

#: What Ray may put before a worker's line: a colour code, ``(pid=...)``, a reset.
RAY_PREFIX = rb"^(\x1b\[[\d;]*m)?(\([^)]*\) ?)?(\x1b\[[\d;]*m)? ?"

#: Tracebacks dropped from stderr: (its first line, a line it must hold, its exception
#: line), why. Held from the first line while the lines look like a traceback (its header,
#: indented or blank lines) and decided at the first other line: the exception line named
#: here with the inner line seen drops the block; any other line shows it whole, in order
#: (an unrelated line arriving mid-block included: nothing is ever dropped but the block).
NOISE_BLOCKS: tuple[tuple[re.Pattern[bytes], re.Pattern[bytes], re.Pattern[bytes], str],
                    ...] = (
    (re.compile(RAY_PREFIX + rb"Exception ignored in: <function WeakSet\.__init__\."
                rb"<locals>\._remove"),
     re.compile(rb"in sigterm_handler$"), re.compile(RAY_PREFIX + rb"SystemExit: 1$"),
     "a Ray worker stopped by SIGTERM (a finished Tune trial's actor) while Python ran a "
     "weakref callback: Python prints the SystemExit that Ray's handler raised as an "
     "'ignored' traceback (seen once per few trials); nothing failed"),
)
MAX_BLOCK_LINES = 40
_TRACEBACK_BODY = re.compile(RAY_PREFIX + rb"(Traceback \(most recent call last\):$|\s|$)")

#: ``ACL_DIST_RAY_OUTPUT=all``: show Ray's output unfiltered.
ENV = "ACL_DIST_RAY_OUTPUT"


def is_noise(line: bytes) -> bool:
    """Whether one line of stderr (without its newline) is Ray chatter to drop."""
    return any(pattern.search(line) for pattern, _ in NOISE)


class LineFilter:
    """Lines in, the lines to show out: drops :data:`NOISE` lines and :data:`NOISE_BLOCKS`
    (module constant's doc: a block is held only while it looks like a traceback)."""

    def __init__(self) -> None:
        self.held: list[bytes] = []
        self.block: tuple[re.Pattern[bytes], re.Pattern[bytes], re.Pattern[bytes],
                          str] | None = None

    def feed(self, line: bytes) -> list[bytes]:
        """The lines (without newlines) to show now that ``line`` has come."""
        starts = next((b for b in NOISE_BLOCKS if b[0].search(line)), None)
        shown: list[bytes] = []
        if self.block is not None:
            _, inside, last, _ = self.block
            if last.search(line) and any(inside.search(h) for h in self.held):
                self.held, self.block = [], None          # the noise, decided: dropped
                return []
            if starts is None and _TRACEBACK_BODY.search(line) and \
                    len(self.held) < MAX_BLOCK_LINES:
                self.held.append(line)
                return []
            shown = self.flush()       # not the noise: shown whole, then this line anew
        if starts is not None:
            self.block, self.held = starts, [line]
            return shown
        return shown + ([] if is_noise(line) else [line])

    def flush(self) -> list[bytes]:
        """The held lines, to show (the stream ended or paused, or the block was not the
        noise)."""
        held, self.held, self.block = self.held, [], None
        return [h for h in held if not is_noise(h)]


class _Copier(threading.Thread):
    """Copies a pipe to the real stream line by line, dropping noise. A chunk that ends
    without a newline but holds a carriage return (a bar redrawing itself) passes at once.
    Never raises: on a write error (a closed terminal) it keeps draining the pipe, so no
    writer ever blocks on a full pipe."""

    def __init__(self, read_fd: int, target_fd: int):
        super().__init__(name="acl-dist-output-filter", daemon=True)
        self.read_fd, self.target_fd = read_fd, target_fd
        # written into the pipe when the block ends: once the copier reads it, all this
        # process wrote before has been copied (a pipe keeps order)
        self.marker = b"\0acl-dist-drained-" + os.urandom(8).hex().encode() + b"\0"
        self.drained = threading.Event()
        self.filter = LineFilter()

    def run(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except OSError:
                return
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            kept: list[bytes] = []
            drained = False
            for line in lines:
                if line == self.marker:     # all written before it is shown, held included
                    kept += self.filter.flush()
                    drained = True
                else:
                    kept += self.filter.feed(line)
            out = b"".join(k + b"\n" for k in kept)
            if b"\r" in pending:
                out += pending
                pending = b""
            self._write(out)
            if drained:
                self.drained.set()
        self._write(b"".join(h + b"\n" for h in self.filter.flush()) + pending)
        for fd in (self.read_fd, self.target_fd):   # every writer has gone
            with contextlib.suppress(OSError):
                os.close(fd)

    def _write(self, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(self.target_fd, data):]
            except OSError:
                return


@contextlib.contextmanager
def filtered_output() -> Iterator[None]:
    """File descriptors 1 and 2 through the noise filter for the block (module doc); a
    no-op when ``ACL_DIST_RAY_OUTPUT=all`` is set or a descriptor cannot be replaced.
    Processes started inside the block inherit the filtered streams."""
    if os.environ.get(ENV, "") == "all":
        yield
        return
    from .progress import FILTERED_TERMINAL_COLUMNS, stderr_terminal

    FILTERED_TERMINAL_COLUMNS.append(stderr_terminal())   # progress bars stay bars
    try:
        with contextlib.ExitStack() as stack:
            for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
                stack.enter_context(_filtered_fd(fd, stream))
            yield
    finally:
        FILTERED_TERMINAL_COLUMNS.pop()


@contextlib.contextmanager
def _filtered_fd(fd: int, stream: Any) -> Iterator[None]:
    try:
        stream.flush()
        saved = os.dup(fd)
        read_fd, write_fd = os.pipe()
    except (OSError, ValueError, AttributeError):
        yield
        return
    copier = _Copier(read_fd, saved)
    copier.start()
    os.dup2(write_fd, fd)
    os.close(write_fd)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            stream.flush()
        with contextlib.suppress(OSError):
            os.write(fd, copier.marker + b"\n")
            copier.drained.wait(timeout=5.0)    # what we wrote is out before we go on
        # our writes go straight out again; the pipe's write end now lives only in
        # processes started inside the block (a local Ray instance): the copier drains
        # them until they exit, gets its EOF when none is left, and closes its ends
        os.dup2(saved, fd)
