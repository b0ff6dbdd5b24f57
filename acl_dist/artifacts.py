"""The one reader and writer of every file of a run directory (and of Ray Train's
checkpoint directories): config and run info, the step ledger, clusters, round outputs,
checkpoints, per-round evaluations, detections and metrics; and the checks ``--resume``
makes before trusting a finished step. Other modules go through :class:`RunDir`; a test
checks that no other module names these files.

Run directory (local or ``s3://``)::

    RUN/config.yaml, RUN/run.json       the resolved config; the store and how the run began
    RUN/plan.json                       where each step runs, what the cluster is asked for
    RUN/state.json                      finished steps with their seconds (the ledger)
    RUN/round_<r>/descriptors.parquet   (r = 0, unsupervised) uniform descriptors
    RUN/round_<r>/clusters.json         pseudo-labels, clustering stats, class mappings
    RUN/round_<r>/model.pt              the round's checkpoint
    RUN/round_<r>/outputs.parquet       attention pass: descriptors, test CAS/attention/dets
    RUN/round_<r>/eval.json, val.json   the round's test / validation mAP
    RUN/detections.json, RUN/detections_<mapping>.json, RUN/metrics.json
    RUN/tensorboard/round_<r>/, RUN/tensorboard/rounds/   TensorBoard events (acl_dist.board)

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
import json
import os
import pickle
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

from . import fsutil
from .errors import ArtifactError, StoreError

STATE = "state.json"
RUN_INFO = "run.json"
CONFIG = "config.yaml"
PLAN = "plan.json"
METRICS = "metrics.json"
MODEL = "model.pt"                 # in round_<r>/ and in Ray Train's final checkpoint
TRAIN_STATE = "train_state.pt"     # in every Ray Train checkpoint
EVAL_FILES = {"test": "eval.json", "val": "val.json"}

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
        (load_train_state if f.endswith(TRAIN_STATE) else load_checkpoint)(url)
    return len(files)


def save_train_checkpoint(directory: str, state: dict[str, Any],
                          final: dict[str, Any] | None = None) -> None:
    """Fill a local directory that Ray Train turns into a checkpoint: the training state
    (model, optimiser, scheduler, step) and, at the round's end, the final checkpoint."""
    save_checkpoint(os.path.join(directory, TRAIN_STATE), state)
    if final is not None:
        save_checkpoint(os.path.join(directory, MODEL), final)


def load_train_checkpoint(directory: str, final: bool = False) -> dict[str, Any]:
    """The training state of a Ray Train checkpoint directory, or its final checkpoint."""
    if final:
        return load_checkpoint(os.path.join(directory, MODEL))
    return load_train_state(os.path.join(directory, TRAIN_STATE))


# --------------------------------------------------------------------------- other readers


def check_parquet(path: str) -> int:
    """Rows of a Parquet artifact, reading only its footer; :class:`ArtifactError` when
    missing or not a whole Parquet file (a truncated write has no footer)."""
    import pyarrow.parquet as pq

    return _parquet(path, lambda fh: pq.ParquetFile(fh).metadata.num_rows)


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


def _parquet(path: str, read: Any) -> Any:
    """``read(file)`` of a Parquet artifact, its errors as :class:`ArtifactError`."""
    import pyarrow as pa

    try:
        with fsutil.open_read(path) as fh:
            return read(fh)
    except StoreError as exc:
        raise ArtifactError(path, _problem(exc, path)) from None
    except (OSError, pa.ArrowException) as exc:
        raise ArtifactError(path, f"unreadable Parquet file ({exc}); rerun the step with "
                                  "acl-dist run --resume") from None


def _read_parquet(path: str, columns: list[str] | None):
    import pyarrow.parquet as pq

    return _parquet(path, lambda fh: pq.read_table(fh, columns=columns))


def outputs_schema(streams: Iterable[str]):
    """The schema of a round's ``outputs.parquet`` (and of round 0's descriptors, which
    fill only ``video_id`` and ``descriptor``): per video the next round's ``descriptor``
    (float32 bytes, empty for detected rows), the fused ``cas`` ``(T, C)`` float16 bytes,
    ``video_logits`` ``(C,)`` float32, ``detections`` JSON ``[[label, score, start, end]]``
    and ``attention_<stream>`` ``(T,)`` float16 per stream."""
    import pyarrow as pa

    return pa.schema([("video_id", pa.string()), ("subset", pa.string()),
                      ("descriptor", pa.binary()), ("cas", pa.binary()),
                      ("video_logits", pa.binary()), ("detections", pa.string()),
                      *[(f"attention_{s}", pa.binary()) for s in streams]])


def read_descriptors(path: str) -> tuple[list[str], Any]:
    """(video ids, ``(N, F)`` descriptors) of the rows of a step's output file that have
    one (training videos)."""
    import numpy as np

    table = _read_parquet(path, ["video_id", "descriptor"])
    ids, rows = [], []
    for vid, blob in zip(table.column("video_id").to_pylist(),
                         table.column("descriptor").to_pylist()):
        if blob:
            ids.append(vid)
            rows.append(np.frombuffer(blob, dtype=np.float32))
    return ids, np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def decode_localised_row(row: dict[str, Any]) -> tuple[Any, dict[str, Any], Any]:
    """A localised (test or validation) row of a round's outputs as arrays: the fused CAS
    ``(T, C)`` float32, each stream's class-agnostic attention ``{stream: (T,)}`` float32
    and the fused video logits ``(C,)`` (the row's format: :func:`outputs_schema`)."""
    import numpy as np

    logits = np.frombuffer(row["video_logits"], dtype=np.float32)
    cas = np.frombuffer(row["cas"], dtype=np.float16).astype(np.float32).reshape(
        -1, len(logits))
    attention = {k[len("attention_"):]: np.frombuffer(v, dtype=np.float16).astype(np.float32)
                 for k, v in row.items() if k.startswith("attention_") and v}
    return cas, attention, logits


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

    # -- config and run info --------------------------------------------------------

    def write_config(self, cfg: Any, info: dict[str, Any]) -> None:
        """``config.yaml`` (the resolved config) and ``run.json`` (``info``: the store and
        how the run began, with the config as a dict)."""
        from .config import to_dict, to_yaml

        fsutil.write_bytes_atomic(self.path(CONFIG), to_yaml(cfg).encode())
        fsutil.write_json_atomic(self.path(RUN_INFO), {**info, "config": to_dict(cfg)})

    def read_config(self) -> Any:
        from .config import RunConfig, from_dict, read_yaml

        data = read_yaml(self.path(CONFIG))
        # a run saved before localize.video_score / max_classes existed scored its
        # segments the paper's way, every class of the gate: resumed or predicted with, it
        # keeps doing so (not the later defaults)
        localize = data.get("localize")
        if isinstance(localize, dict):
            localize.setdefault("video_score", "added")
            localize.setdefault("max_classes", 0)
        return from_dict(RunConfig, data)

    def write_plan(self, plan: dict[str, Any]) -> None:
        """``plan.json`` (:func:`acl_dist.plan.run_plan`): written at the run's start, and
        again by ``--resume`` (the cluster it resumes on may differ)."""
        fsutil.write_json_atomic(self.path(PLAN), plan)

    def read_plan(self) -> dict[str, Any]:
        return check_json(self.path(PLAN), "train")

    def read_info(self) -> dict[str, Any]:
        return check_json(self.path(RUN_INFO), "store")

    def has_config(self) -> bool:
        return fsutil.exists(self.path(CONFIG))

    # -- step outputs ---------------------------------------------------------------

    def descriptors_path(self) -> str:
        """Round 0's uniform descriptors (unsupervised runs)."""
        return self.round(0, "descriptors.parquet")

    def outputs_path(self, r: int) -> str:
        return self.round(r, "outputs.parquet")

    def model_path(self, r: int) -> str:
        return self.round(r, MODEL)

    def clusters_path(self, r: int) -> str:
        return self.round(r, "clusters.json")

    def eval_path(self, r: int, split: str) -> str:
        return self.round(r, EVAL_FILES[split])

    def metrics_path(self) -> str:
        return self.path(METRICS)

    def detections_path(self, mapping: str | None = None) -> str:
        """``detections.json``, or ``detections_<mapping>.json`` (labels mapped to classes)."""
        return self.path(f"detections_{mapping}.json" if mapping else "detections.json")

    def tensorboard_dir(self, name: str) -> str:
        """``RUN/tensorboard/<name>/``: ``round_<r>`` (a round's training) or ``rounds``
        (one point per round); see :mod:`acl_dist.board`."""
        return self.path("tensorboard", name)

    def save_model(self, r: int, ckpt: dict[str, Any]) -> None:
        save_checkpoint(self.model_path(r), ckpt)

    def load_model(self, r: int) -> dict[str, Any]:
        return load_checkpoint(self.model_path(r))

    def write_clusters(self, r: int, clusters: dict[str, Any]) -> None:
        fsutil.write_json_atomic(self.clusters_path(r), clusters)

    def read_clusters(self, r: int) -> dict[str, Any] | None:
        """Round ``r``'s clustering (``labels``: video -> cluster, ``scores``, ``sizes``,
        ``mapping``, ...), or None when that clustering has not run."""
        path = self.clusters_path(r)
        return check_json(path, "labels") if fsutil.exists(path) else None

    def write_eval(self, r: int, split: str, result: dict[str, Any]) -> None:
        fsutil.write_json_atomic(self.eval_path(r, split), result)

    def read_eval(self, r: int, split: str) -> dict[str, Any] | None:
        """Round ``r``'s ``test`` or ``val`` evaluation, or None when not written."""
        path = self.eval_path(r, split)
        return check_json(path) if fsutil.exists(path) else None

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        fsutil.write_json_atomic(self.metrics_path(), metrics)

    def read_metrics(self) -> dict[str, Any]:
        path = self.metrics_path()
        if not fsutil.exists(path):
            raise ArtifactError(path, "missing: not a finished run (a run in progress or "
                                      "interrupted: acl-dist run --resume RUN)")
        return check_json(path, "rounds")

    def write_detections(self, results: dict[str, Any], mapping: str | None = None) -> None:
        fsutil.write_json_atomic(self.detections_path(mapping), results, indent=None)

    def read_detections(self, mapping: str | None = None) -> dict[str, Any] | None:
        """The run's ActivityNet result JSON (mapped by ``mapping`` when that file exists,
        else the plain one), or None when the run wrote none."""
        for path in ([self.detections_path(mapping)] if mapping else []) + \
                [self.detections_path()]:
            if fsutil.exists(path):
                return check_json(path, "results")
        return None

    def read_descriptors(self, r: int, videos: list[str] | None = None
                         ) -> tuple[list[str], Any]:
        """(video ids, ``(N, F)`` float32 descriptors) that round ``r`` clusters: round 0's
        uniform ones, else those of round ``r - 1``'s attention pass; with ``videos``,
        exactly those in that order (one missing is an error naming it)."""
        got, desc = read_descriptors(self.descriptors_path() if r == 0 else
                                     self.outputs_path(r - 1))
        if videos is None:
            return got, desc
        order = {v: i for i, v in enumerate(got)}
        missing = [v for v in videos if v not in order]
        if missing:
            raise ArtifactError(f"descriptors of round {r} miss {len(missing)} training "
                                f"videos (e.g. {missing[0]})")
        return list(videos), desc[[order[v] for v in videos]]

    def read_raw_detections(self, r: int) -> list[tuple[str, str, list]]:
        """Round ``r``'s detections as (video, subset, [(label index, score, start s,
        end s), ...]) for every row of its outputs (empty lists for described rows)."""
        table = _read_parquet(self.outputs_path(r), ["video_id", "subset", "detections"])
        return [(v, s, json.loads(d)) for v, s, d in zip(
            *(table.column(c).to_pylist() for c in ("video_id", "subset", "detections")))]

    def read_output_rows(self, r: int, videos: set[str]) -> dict[str, dict[str, Any]]:
        """Every column of round ``r``'s outputs for the rows of ``videos``."""
        table = _read_parquet(self.outputs_path(r), None)
        out = {}
        cols = table.column_names
        for i, vid in enumerate(table.column("video_id").to_pylist()):
            if vid in videos:
                out[vid] = {c: table.column(c)[i].as_py() for c in cols}
        return out

    # -- resume -------------------------------------------------------------------------

    def step_artifacts(self, step: str, val: bool, test: bool) -> list[str]:
        """The files a finished ``step`` wrote (``val``/``test``: whether the run scores a
        validation split / the test subset)."""
        if step == "finish":
            return [self.metrics_path()] + ([self.detections_path()] if test else [])
        tag, kind = step.split(".")
        r = int(tag.split("_")[1])
        if kind == "evaluate":
            return ([self.eval_path(r, "val")] if val else []) + \
                ([self.eval_path(r, "test")] if test else [])
        if kind == "descriptors":
            return [self.descriptors_path()]
        return [{"cluster": self.clusters_path, "train": self.model_path,
                 "attention": self.outputs_path}[kind](r)]

    def verify_steps(self, names: list[str], val: bool, test: bool,
                     quiet: bool = False) -> list[str]:
        """Before ``--resume`` trusts the ledger: read back each finished step's files (in
        the schedule's order ``names``). The first step with a file missing or unreadable
        is unmarked with every finished step after it (they were computed from it), and
        returned; a refused file (pickled objects) raises."""
        from .progress import log

        done = self.state()["steps"]
        for i, name in enumerate(names):
            if name not in done:
                continue
            for path in self.step_artifacts(name, val, test):
                try:
                    check_artifact(path)
                except ArtifactError as err:
                    if err.refused:
                        raise
                    rerun = [n for n in names[i:] if n in done]
                    log(f"--resume: {err}; rerunning {name}"
                        + (f" and the {len(rerun) - 1} finished step(s) after it"
                           if len(rerun) > 1 else ""), quiet)
                    self.forget(rerun)
                    return rerun
        return []

    # -- what a directory is ----------------------------------------------------------

    def is_run(self) -> bool:
        """Whether the directory holds (the start of) an acl-dist run."""
        return any(fsutil.exists(self.path(m)) for m in RUN_MARKERS)

    def has_finished_steps(self) -> bool:
        return bool(self.state()["steps"]) if fsutil.exists(self.path(STATE)) else False
