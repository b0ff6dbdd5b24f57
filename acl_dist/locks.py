"""One writer at a time per output: an exclusive lock on a run directory, an experiment
directory, a store being written or a detections file.

Two ``acl-dist run`` into one ``--out`` would otherwise both finish and leave a mix of
the two (one run's config beside the other's losses). Every command that writes a named
output holds :func:`exclusive` on it for as long as it writes; a second writer is refused
with one line naming the holder (command, process, host, start time).

How: ``flock`` on a lock file beside the output, ``.NAME.acl-dist-lock`` (beside it, not
in it, because stores are renamed into place and runs may not exist yet). The kernel drops
the lock when its process dies however it dies, so a lock is never stuck; a lock file left
by a killed process is taken over with a line saying whose it was. The file is removed on
release; the lock is re-entrant within one process (``demo`` holds its run and store while
the run and synth steps take them again).

Object stores have no advisory locks: on ``s3://`` outputs the lock is not taken, and
docs/cluster.md says to give each writer its own prefix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from typing import Iterator

from .errors import AclDistError

LOCK_SUFFIX = ".acl-dist-lock"

#: Outputs this process holds: path -> (depth, file descriptor).
_held: dict[str, list[int]] = {}

#: What a lock says holds it when the taker does not name itself: the CLI sets its
#: command here, so a store written by ``ingest`` reads "acl-dist ingest (pid ...)".
command_name = "(python)"


class BusyError(AclDistError):
    """Another acl-dist process is writing the same output."""


def _is_url(path: str) -> bool:
    # fsutil.is_remote's rule, here so that fsutil (whose writers lock) is not imported
    return "://" in path and not path.startswith("file://")


def lock_path(target: str) -> str:
    """The lock file of ``target`` (a local path): ``PARENT/.NAME.acl-dist-lock``."""
    target = os.path.abspath(target.removeprefix("file://")).rstrip(os.sep)
    parent, name = os.path.split(target)
    return os.path.join(parent, f".{name}{LOCK_SUFFIX}")


def _holder(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(4096).decode("utf-8", "replace") or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    when = holder.get("since")
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(when)) \
        if isinstance(when, (int, float)) else ""
    return (f"acl-dist {holder.get('command', '?')} (pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')}{since})")


def _alive(holder: dict) -> bool:
    """Whether a holder that no longer holds the lock could still be running: only a
    process of this host can be checked."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def exclusive(target: str | None, command: str | None = None,
              quiet: bool = False) -> Iterator[None]:
    """Hold the exclusive lock of output ``target`` for the block, or raise
    :class:`BusyError` naming its holder. ``None`` and ``s3://`` targets are not locked.
    ``command``: what the lock says holds it (default :data:`command_name`)."""
    if target is None or _is_url(target):
        yield
        return
    path = lock_path(target)
    if path in _held:
        _held[path][0] += 1
        try:
            yield
        finally:
            _held[path][0] -= 1
        return
    fd = _acquire(path, target)
    if fd is None:      # no lock to be had here: said so, the write goes on
        yield
        return
    stale = _holder(path)
    if stale and not quiet:
        gone = "" if _alive(stale) else ", whose process is gone"
        print(f"note: {target}: taking over the lock left by {_describe(stale)}{gone}",
              file=sys.stderr)
    record = {"command": command or command_name, "pid": os.getpid(),
              "host": socket.gethostname(), "since": round(time.time(), 1)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    _held[path] = [1, fd]
    try:
        yield
    finally:
        del _held[path]
        with contextlib.suppress(OSError):
            os.unlink(path)      # before unlocking: a waiting opener re-checks the inode
        os.close(fd)


def _acquire(path: str, target: str) -> int | None:
    """An open descriptor of ``path`` holding its flock, or :class:`BusyError`; None where
    the filesystem has no locks (NFS without a lock daemon) or the parent cannot be made
    (the writer itself then reports it, naming it)."""
    import fcntl

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError:
        return None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise BusyError(f"{target.rstrip('/')} is being written by "
                                f"{_describe(_holder(path))}; wait for it to finish or stop "
                                "it (one writer at a time)") from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                print(f"note: {target}: this filesystem has no file locks; not guarded "
                      "against a second writer", file=sys.stderr)
                return None
            raise
        # the holder may have released (removed the file) between our open and flock:
        # the lock counts only on the file that is at the path now
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
