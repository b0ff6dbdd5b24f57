"""TensorBoard event files of a run (``RUN/tensorboard/``), written by tensorboardX: a
round's training events straight into a local run directory; on S3 (where a file cannot
be appended to), and for the per-round points, locally first and then copied whole.

* ``RUN/tensorboard/round_<r>/``: one round's training, from Ray Train's rank 0 (every
  loss term per network, ``train/loss``, ``train/lr``, ``train/videos_per_s``);
* ``RUN/tensorboard/rounds/``: one point per round: the clustering's NMI, ARI, purity
  (when the training videos have labels) and its label-free silhouette and stability,
  and the round's test and validation mAP (average and at tIoU 0.5). One file per step
  of the ledger, named by it, so a resumed run rewrites rather than repeats a point.

No Ray, no torch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from . import fsutil


PREFIX = "acl-tb-"       # + the writing process's pid + "-": see reap_abandoned


_reaped = False        # reap_abandoned ran in this process (once is enough)


def reap_abandoned(folder: str | None = None) -> list[str]:
    """Remove the temporary event directories of processes that no longer exist (a worker
    killed by SIGKILL runs no cleanup; its events could not be copied anyway). Returns the
    removed paths."""
    folder = folder or tempfile.gettempdir()
    removed = []
    for entry in os.listdir(folder):
        pid = entry[len(PREFIX):].split("-", 1)[0]
        if not entry.startswith(PREFIX) or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)
            removed.append(os.path.join(folder, entry))
        except PermissionError:     # alive, another user's
            pass
    return removed


# seconds between tensorboardX's flushes of an event file (its default: 120 s, all of a
# short round's events, lost with a killed worker)
FLUSH_S = 10


class EventFile:
    """Scalars written to one event file in ``target`` (a directory, local or ``s3://``),
    as ``name`` when given (TensorBoard reads any file whose name holds ``tfevents``).

    An unnamed file in a local directory is written there directly (flushed every
    ``FLUSH_S``): a training worker killed mid-round (SIGKILL runs no cleanup) leaves its
    events so far in the run, not a directory in /tmp; a round restarted from its last
    checkpoint then shows the steps since that checkpoint twice, one line per file.
    Otherwise the file is written in a temporary directory and copied whole by
    :meth:`close` (S3 cannot append; a named file replaces its earlier version at once);
    the directory goes with the object or at exit, and a killed process's with the first
    such EventFile of a later process on the machine."""

    def __init__(self, target: str, name: str | None = None):
        from tensorboardX import SummaryWriter

        self.target, self.name = target, name
        self._local: tempfile.TemporaryDirectory | None = None
        if name is None and not fsutil.is_remote(target):
            os.makedirs(target, exist_ok=True)
            self.local = target
        else:
            # removed by close(), or when this object is collected or the process exits
            # (a round cut short by a stopped worker or a Tune trial ended early); a
            # killed process's is removed by the next process's first EventFile
            global _reaped
            if not _reaped:
                reap_abandoned()
                _reaped = True
            self._local = tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-")
            self.local = self._local.name
        self.writer = SummaryWriter(self.local, flush_secs=FLUSH_S)

    def add(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        if self._local is not None:      # else written in place
            for name in os.listdir(self.local):
                with open(os.path.join(self.local, name), "rb") as fh:
                    fsutil.write_bytes_atomic(fsutil.join(self.target, self.name or name),
                                              fh.read())
            self._local.cleanup()
        self.writer = None               # only once copied: a failed copy can be retried


def round_scalars(clusters: dict[str, Any] | None, evals: dict[str, dict | None]
                  ) -> dict[str, float]:
    """The per-round points of ``RUN/tensorboard/rounds/`` from a round's ``clusters.json``
    and its ``eval.json`` / ``val.json`` (``evals``: split -> content or None)."""
    out: dict[str, float] = {}
    if clusters is not None:
        for key, value in (clusters.get("scores") or {}).items():
            if key in ("nmi", "ari", "purity"):
                out[f"clustering/{key}"] = float(value)
        for key in ("silhouette", "stability"):
            if clusters.get(key) is not None:
                out[f"clustering/{key}"] = float(clusters[key])
    for split, ev in evals.items():
        if ev is not None and "average" in ev:
            out[f"{split}/map_avg"] = float(ev["average"])
            if 0.5 in ev["tiou"]:
                out[f"{split}/map50"] = float(ev["map"][ev["tiou"].index(0.5)])
    return out


def write_points(target: str, name: str, points: dict[str, float], step: int) -> None:
    """``points`` at ``step`` as one event file ``target/name`` (replacing it)."""
    if not points:
        return
    events = EventFile(target, name)
    for tag, value in points.items():
        events.add(tag, value, step)
    events.close()
