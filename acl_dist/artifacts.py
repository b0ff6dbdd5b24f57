"""Run-directory artifacts that are loaded back: checkpoints, Ray Train states, the step
ledger, and the checks ``--resume`` makes before trusting a finished step.

Safety rule: nothing in a run directory, a store or a checkpoint is ever unpickled.
Checkpoints hold tensors and plain data only (dicts, lists, strings, numbers; the config
as a plain dict), so every load goes through ``torch.load(..., weights_only=True)``: a file
with any other pickled object (a planted payload) is *refused* with an
:class:`~acl_dist.errors.ArtifactError` naming it, before any of its code can run. A file
that is merely truncated or corrupt is *unreadable*: ``--resume`` reruns the step that
wrote it; other commands stop with one line naming it.

Imports neither Ray nor torch at module level (torch is imported by the loaders).
"""

from __future__ import annotations

import io
import pickle
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

from . import fsutil
from .errors import ArtifactError, StoreError

STATE = "state.json"
RUN_INFO = "run.json"
CONFIG = "config.yaml"

#: Files whose presence marks a directory as an acl-dist run (``--overwrite``, demo).
RUN_MARKERS = (RUN_INFO, CONFIG, STATE)


def label_names(mode: str, num_classes: int, store_classes: Iterable[str]) -> list[str]:
    """The names of the model's C outputs: the store's classes in weak mode, cluster names
    (``cluster_00`` ...) in unsupervised mode. Derived from the config and the store, so a
    reader (the report) never needs to open a checkpoint for them."""
    from .evaluate import cluster_name

    if mode == "weak":
        return list(store_classes)
    return [cluster_name(k) for k in range(num_classes)]


def _problem(exc: Exception, path: str) -> str:
    """A read error's text without the path (the ArtifactError adds it)."""
    text = str(exc)
    if "no such file" in text:
        return "missing"
    return text[len(path) + 2:] if text.startswith(f"{path}: ") else text


# --------------------------------------------------------------------------- checkpoints


def _torch_load(data: bytes, name: str) -> Any:
    """``torch.load(weights_only=True)`` of ``data`` (read from ``name``), errors as
    :class:`ArtifactError`: refused (pickled objects) or unreadable (truncated, corrupt)."""
    import torch

    if not data:
        raise ArtifactError(name, "empty file (an interrupted write?)")
    try:
        with warnings.catch_warnings():  # torch warns about the protocol of raw pickles
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text or \
                "GLOBAL" in text:
            # the first line of torch's message names the offending global
            detail = next((ln.strip() for ln in text.splitlines()
                           if "Unsupported global" in ln or "GLOBAL" in ln), "")
            raise ArtifactError(name, "refused: it holds pickled Python objects, not only "
                                      "weights and plain data (acl-dist loads checkpoints "
                                      "with weights_only=True and never runs code from a "
                                      f"file){'; ' + detail if detail else ''}",
                                refused=True) from None
        raise ArtifactError(name, f"unreadable checkpoint ({text.splitlines()[0][:200]})"
                            ) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, AttributeError) as exc:
        # first sentence of the first line: torch's zip errors run on for several lines
        first = (str(exc).splitlines() or [""])[0].split(". ")[0][:160]
        raise ArtifactError(name, f"unreadable checkpoint, truncated or corrupt "
                                  f"({type(exc).__name__}: {first})") from None


def save_checkpoint(path: str, obj: dict[str, Any]) -> None:
    """Write a checkpoint dict (tensors and plain data only) whole and atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    fsutil.write_bytes_atomic(path, buf.getvalue())


def load_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (``make_checkpoint``'s dict), local
    or ``s3://``. Raises :class:`ArtifactError` when missing, unreadable or refused."""
    try:
        with fsutil.open_read(path) as fh:
            data = fh.read()
    except StoreError as exc:
        raise ArtifactError(path, _problem(exc, path)) from None
    obj = _torch_load(data, path)
    if not isinstance(obj, dict) or "model" not in obj:
        raise ArtifactError(path, "not an acl-dist checkpoint (no 'model' entry)")
    return obj


def load_train_state(path: str) -> dict[str, Any]:
    """A Ray Train checkpoint's ``train_state.pt`` (model, optimiser, scheduler, step)."""
    obj = load_checkpoint(path)
    if "step" not in obj:
        raise ArtifactError(path, "not an acl-dist training state (no 'step' entry)")
    return obj


def verify_train_storage(storage: str, name: str) -> int:
    """Check every checkpoint that Ray Train may restore for run ``name`` under
    ``storage`` (a re-run of an interrupted round resumes from the latest one) before any
    worker loads it. Returns how many were checked; raises :class:`ArtifactError` naming
    the first refused or unreadable file."""
    root = fsutil.join(storage, name)
    fs, p = fsutil.get_fs(root)
    try:
        files = sorted(fs.glob(f"{p}/checkpoint_*/*.pt"))
    except FileNotFoundError:
        return 0
    except Exception as exc:
        raise ArtifactError(root, f"cannot list Ray Train checkpoints ({exc})") from None
    for f in files:
        url = fsutil.join(storage, name, f[len(p):].lstrip("/"))
        obj = load_checkpoint(url)
        if f.endswith("train_state.pt") and "step" not in obj:
            raise ArtifactError(url, "not an acl-dist training state (no 'step' entry)")
    return len(files)


# --------------------------------------------------------------------------- other readers


def check_parquet(path: str) -> int:
    """Rows of a Parquet artifact, reading only its footer; :class:`ArtifactError` when
    missing or not a whole Parquet file (a truncated write has no footer)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fsutil.open_read(path) as fh:
            return pq.ParquetFile(fh).metadata.num_rows
    except StoreError as exc:
        raise ArtifactError(path, _problem(exc, path)) from None
    except (OSError, pa.ArrowException) as exc:
        raise ArtifactError(path, f"unreadable Parquet file ({exc})") from None


def check_json(path: str, key: str | None = None) -> Any:
    """A JSON artifact (an object holding ``key`` when given); :class:`ArtifactError`
    when missing or unreadable."""
    try:
        data = fsutil.read_json(path)
    except StoreError as exc:
        raise ArtifactError(path, _problem(exc, path)) from None
    if not isinstance(data, dict) or (key is not None and key not in data):
        raise ArtifactError(path, f"unreadable: expected a JSON object"
                                  f"{f' with {key!r}' if key else ''}")
    return data


def check_artifact(path: str) -> None:
    """Check one artifact by its kind (``.pt``, ``.parquet``, ``.json``)."""
    if path.endswith(".pt"):
        load_checkpoint(path)
    elif path.endswith(".parquet"):
        check_parquet(path)
    elif path.endswith(".json"):
        check_json(path)
    elif not fsutil.exists(path):
        raise ArtifactError(path, "missing")


# --------------------------------------------------------------------------- step ledger


@dataclass
class RunDir:
    """Paths and the step ledger (``state.json``) of a run directory."""

    root: str

    def path(self, *parts: str) -> str:
        return fsutil.join(self.root, *parts)

    def round(self, r: int, name: str) -> str:
        return self.path(f"round_{r}", name)

    def state(self) -> dict[str, Any]:
        p = self.path(STATE)
        if not fsutil.exists(p):
            return {"steps": {}}
        return check_json(p, "steps")

    def done(self, step: str) -> bool:
        return step in self.state()["steps"]

    def mark(self, step: str, seconds: float, **info: Any) -> None:
        state = self.state()
        state["steps"][step] = {"seconds": round(seconds, 2), **info}
        fsutil.write_json_atomic(self.path(STATE), state)

    def forget(self, steps: Iterable[str]) -> None:
        """Unmark ``steps`` (their artifacts are rewritten when they run again)."""
        state = self.state()
        for step in steps:
            state["steps"].pop(step, None)
        fsutil.write_json_atomic(self.path(STATE), state)

    def is_run(self) -> bool:
        """Whether the directory holds (the start of) an acl-dist run."""
        return any(fsutil.exists(self.path(m)) for m in RUN_MARKERS)

    def has_finished_steps(self) -> bool:
        return bool(self.state()["steps"]) if fsutil.exists(self.path(STATE)) else False
