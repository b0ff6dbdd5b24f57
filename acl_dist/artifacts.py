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

Every JSON file is checked against its schema (:data:`SCHEMAS`) whenever it is read back:
one of the wrong shape, with a value of the wrong type, a missing key or a non-finite
number is *refused* too, with one :class:`~acl_dist.errors.ArtifactError` naming the file
and the key, before anything is computed from it or written over it (``--resume`` reads
every finished step's files, and its ledger, before it reruns or rewrites anything).

Imports neither Ray nor torch at module level (torch is imported by the loaders).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import posixpath
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

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
CLUSTERS = "clusters.json"           # in round_<r>/
DETECTIONS = "detections.json"     # and detections_<mapping>.json

#: Files whose presence marks a directory as an acl-dist run (``--overwrite``, demo).
RUN_MARKERS = (RUN_INFO, CONFIG, STATE)

#: The entries a run directory's top level holds when acl-dist alone wrote it: the files
#: above, round and Ray Train folders, TensorBoard events, the report (acl_dist.report)
#: and an interrupted atomic write's leftovers.
_RUN_ENTRY = re.compile(r"(config\.yaml|run\.json|plan\.json|state\.json|metrics\.json"
                        r"|detections(_\w+)?\.json|round_\d+|ray_train|tensorboard"
                        r"|report\.html|report_files|\..+\.tmp-\w+(\.old)?)")


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
    """Check one artifact by its kind (``.pt``, ``.parquet``, ``.json``); a run file's JSON
    against its schema, with the keys every reader of it requires, so a finished step
    whose file lost one is refused before anything reruns."""
    if path.endswith(".pt"):
        load_checkpoint(path)
    elif path.endswith(".parquet"):
        check_parquet(path)
    elif path.endswith(".json"):
        if schema_name(path) is None:
            check_json(path)
        else:
            read_run_json(path)
    elif not fsutil.exists(path):
        raise ArtifactError(path, "missing")


# --------------------------------------------------------------------------- run-file schemas
# Every JSON file of a run directory is checked against its schema whenever it is read
# back: a wrong shape or type, a missing key or a non-finite number is one ArtifactError
# naming the file and the key (``RUN/state.json: steps.round_0.train.seconds: expected a
# number, got 'a'``), raised before a caller uses the content, so nothing is computed from,
# or written over, a damaged or planted file. Keys a schema does not name are kept and not
# checked, so a file written by another version of acl-dist still reads; the schemas
# describe what the writers of this module have always written (the format is unchanged).
#
# ``required`` keys are those every reader of a file needs; ``--resume``'s read-back of a
# finished step (:func:`check_artifact`) requires them too, and a reader may require more
# (``require``).


class _Bad(Exception):
    """A schema violation: where in the file (a key path) and what is wrong there."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}" if where else problem)


Check = Callable[[Any, str], None]
_PLAIN_KEY = re.compile(r"[\w.\-/]{1,80}", re.ASCII)


def _shown(value: Any) -> str:
    """A value as an error message shows it: short, on one line, inert (``repr`` escapes
    newlines and other separators)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _few(names: Sequence[Any]) -> str:
    """The first names of a list, for a one-line message."""
    more = f" (+{len(names) - 4} more)" if len(names) > 4 else ""
    return ", ".join(_shown(n) for n in names[:4]) + more


def _key(where: str, key: Any) -> str:
    """``where`` extended by an object's key: dotted when the key is plain, quoted
    otherwise (a key holding a newline or markup stays on the message's one line)."""
    text = key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else _shown(key)
    return f"{where}.{text}" if where else text


def _number(minimum: float | None = None) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(where, f"expected a number, got {_shown(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise _Bad(where, f"expected a finite number, got {_shown(value)}")
        if minimum is not None and value < minimum:
            raise _Bad(where, f"expected a number >= {minimum:g}, got {_shown(value)}")
    return check


def _integer(minimum: int | None = None) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(where, f"expected an integer, got {_shown(value)}")
        if minimum is not None and value < minimum:
            raise _Bad(where, f"expected an integer >= {minimum}, got {_shown(value)}")
    return check


def _string(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise _Bad(where, f"expected a string, got {_shown(value)}")


def _name(value: Any, where: str) -> None:
    _string(value, where)
    if not value:
        raise _Bad(where, "expected a non-empty string, got ''")


def _boolean(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise _Bad(where, f"expected true or false, got {_shown(value)}")


def _anything(value: Any, where: str) -> None:
    pass


def _optional(check: Check) -> Check:
    def optional(value: Any, where: str) -> None:
        if value is not None:
            check(value, where)
    return optional


def _list(item: Check, unique: bool = False) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise _Bad(where, f"expected a list, got {_shown(value)}")
        for i, x in enumerate(value):
            item(x, f"{where}[{i}]")
        if unique and len(set(value)) != len(value):
            seen: set = set()
            twice = next(x for x in value if x in seen or seen.add(x))
            raise _Bad(where, f"{_shown(twice)} is listed twice")
    return check


def _pair(first: Check, second: Check) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list) or len(value) != 2:
            raise _Bad(where, f"expected a list of two, got {_shown(value)}"
                              + (f" of {len(value)}" if isinstance(value, list) else ""))
        first(value[0], f"{where}[0]")
        second(value[1], f"{where}[1]")
    return check


def _map(item: Check, keys: re.Pattern | None = None, what: str = "") -> Check:
    """An object of any keys (matching ``keys`` when given: ``what`` they must be) whose
    values pass ``item``."""
    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _Bad(where, f"expected an object, got {_shown(value)}")
        for k, x in value.items():
            if keys is not None and not keys.fullmatch(k):
                raise _Bad(_key(where, k), f"not {what}")
            item(x, _key(where, k))
    return check


@dataclass(frozen=True)
class _Record:
    """An object with named keys: ``fields`` (key -> check, when present), ``required``
    keys and cross-key ``rules``; other keys pass unchecked."""

    fields: dict[str, Check]
    required: tuple[str, ...] = ()
    rules: tuple[Callable[[dict, str], None], ...] = ()

    def __call__(self, value: Any, where: str, required: Iterable[str] | None = None
                 ) -> None:
        if not isinstance(value, dict):
            raise _Bad(where, f"expected {'an' if where else 'a JSON'} object, got "
                              f"{_shown(value)}")
        for k in self.required if required is None else required:
            if k not in value:
                raise _Bad(_key(where, k), "missing")
        for k, check in self.fields.items():
            if k in value:
                check(value[k], _key(where, k))
        for rule in self.rules:
            rule(value, where)


def _per_tiou(value: dict, where: str) -> None:
    """mAP per tIoU: ``map`` and each ``per_class`` list hold one value per ``tiou``, and
    a run with a mAP has its ``average``."""
    n = len(value["tiou"]) if isinstance(value.get("tiou"), list) else None
    lists = ([("map", value["map"])] if "map" in value else []) + [
        (_key("per_class", c), aps) for c, aps in (value.get("per_class") or {}).items()]
    for key, values in lists:
        if n is None:
            raise _Bad(_key(where, "tiou"), f"missing ({key} holds a value per tIoU)")
        if len(values) != n:
            raise _Bad(_key(where, key), f"expected {n} value(s), one per tIoU, got "
                                          f"{len(values)}")
    if value.get("average") is not None and "map" not in value:
        raise _Bad(_key(where, "map"), "missing (an average goes with it)")
    if value.get("map") and value.get("average") is None:
        raise _Bad(_key(where, "average"), "missing (the mAP has one)")


def _together(*keys: str) -> Callable[[dict, str], None]:
    """Keys written together (a clustering's scores): all or none."""
    def rule(value: dict, where: str) -> None:
        present = [k for k in keys if k in value]
        if present and len(present) != len(keys):
            missing = next(k for k in keys if k not in value)
            raise _Bad(_key(where, missing), f"missing (it goes with {present[0]})")
    return rule


_STEP_NAME = re.compile(r"round_\d{1,6}\.(descriptors|cluster|train|attention|evaluate)"
                        r"|finish", re.ASCII)
_CLUSTER_NAME = re.compile(r"cluster_\d{1,6}", re.ASCII)
_SCORES = _Record({"nmi": _number(), "ari": _number(), "purity": _number(),
                   "clusters": _integer(0), "classes": _integer(0), "videos": _integer(0)},
                  ("nmi", "ari", "purity"))
_MAP_PER_TIOU = {"tiou": _list(_number(0)), "map": _list(_number()),
                 "per_class": _map(_list(_number()))}
_DETECTION = _Record({"label": _string, "score": _number(), "segment": _pair(
    _number(), _number())}, ("label", "score", "segment"))

#: The schema of each JSON file of a run directory, by name (``detections_<mapping>.json``
#: has ``detections.json``'s). Callers read them through :class:`RunDir`.
SCHEMAS: dict[str, _Record] = {
    # the step ledger: finished step -> its seconds and what the step reported
    STATE: _Record({"steps": _map(_Record({"seconds": _number(0)}, ("seconds",)),
                                  _STEP_NAME, "a step acl-dist runs (round_<r>.<step> or "
                                              "finish)")}, ("steps",)),
    # acl_dist.plan.run_plan (describe_plan prints it in the report)
    PLAN: _Record({
        "capacity": _Record({"summary": _string, "cpus": _number(0), "gpus": _number(0),
                             "max_cpus": _number(0), "max_gpus": _number(0),
                             "on_cluster": _boolean, "node_types": _list(_anything)},
                            ("summary",)),
        "train": _Record({"workers": _integer(1), "use_gpu": _boolean,
                          "resources_per_worker": _map(_number(0)),
                          "placement_strategy": _string, "early_start": _boolean},
                         ("workers", "use_gpu", "resources_per_worker",
                          "placement_strategy")),
        "cluster": _Record({"backend": _string, "gpu": _boolean}, ("backend", "gpu")),
        "attention": _Record({"actors": _integer(1), "gpu": _boolean}, ("actors", "gpu")),
        "request": _list(_map(_number(0))), "config": _Record({})},
        ("capacity", "train", "cluster", "attention")),
    # the store and how the run began (a Tune trial's names its trial, not the classes)
    RUN_INFO: _Record({"store": _name, "classes": _list(_name, unique=True),
                       "label_map_given": _boolean, "config": _Record({}),
                       "trial": _string}, ("store",)),
    # acl_dist.results.clusters_record
    CLUSTERS: _Record({
        "round": _integer(0), "backend": _string, "backend_reason": _string,
        "graph": _string, "sigma": _optional(_number()), "seconds": _number(0),
        "phases": _map(_number(0)), "sizes": _list(_integer(0)),
        "labels": _map(_integer(0)), "scores": _SCORES,
        "mapping": _map(_map(_list(_pair(_name, _number(0))), _CLUSTER_NAME,
                             "a cluster name (cluster_<k>)")),
        "stability": _number(), "silhouette": _number()}, ("labels",)),
    # acl_dist.results.RunResults.evaluate_round (no mAP where nothing is annotated)
    EVAL_FILES["test"]: _Record({
        "round": _integer(0), "detections": _integer(0), "label_map": _optional(_string),
        "videos": _optional(_string), "validation": _optional(_string),
        "annotation": _optional(_string), "average": _number(), **_MAP_PER_TIOU},
        (), (_per_tiou,)),
    # acl_dist.results.RunResults.metrics: the metrics contract
    METRICS: _Record({
        "mode": _string, "label_map": _optional(_string), "annotation": _optional(_string),
        "test_videos": _optional(_string), "average": _optional(_number()),
        "train_subset": _string, "test_subset": _string, "num_classes": _integer(0),
        "validation": _optional(_string), "seconds_total": _number(0), "store": _name,
        "rounds": _list(_Record({
            "round": _integer(0), "seconds": _map(_number(0)),
            **{k: _number() for k in ("nmi", "ari", "purity", "silhouette", "stability",
                                      "test_average", "val_average")},
            **{k: _integer(0) for k in ("clusters", "classes", "videos")},
            "cluster_backend": _string, "cluster_sizes": _list(_integer(0)),
            "test_map": _list(_number()), "val_map": _list(_number()),
            "clustering_only": _boolean}, ("round", "seconds"),
            (_together("nmi", "ari", "purity"),))),
        **_MAP_PER_TIOU}, ("rounds",), (_per_tiou,)),
    # ActivityNet result JSON (acl_dist.evaluate.detections_to_json)
    DETECTIONS: _Record({"version": _string, "external_data": _Record({}),
                         "results": _map(_list(_DETECTION))}, ("results",)),
}
SCHEMAS[EVAL_FILES["val"]] = SCHEMAS[EVAL_FILES["test"]]


def schema_name(path: str) -> str | None:
    """The :data:`SCHEMAS` entry of a run file's path (None: a file without one)."""
    name = posixpath.basename(path)
    if name.startswith("detections_") and name.endswith(".json"):
        return DETECTIONS
    return name if name in SCHEMAS else None


def validate(name: str, data: Any, path: str | None = None,
             require: Iterable[str] | None = None) -> Any:
    """``data``, the content of run file ``name``, checked against its schema; returned
    unchanged. ``require``: the top-level keys that must be there (default: those every
    reader of the file needs; ``()``: only the shape of what is there). Raises one
    :class:`ArtifactError` naming ``path`` (or ``name``) and the key; ``refused`` is set:
    a well-formed file of the wrong shape is no interrupted write, and is never replaced
    by a rerun."""
    try:
        SCHEMAS[name](data, "", None if require is None else tuple(require))
    except _Bad as bad:
        raise ArtifactError(path or name, str(bad), refused=True) from None
    return data


def read_run_json(path: str, require: Iterable[str] | None = None) -> Any:
    """A run file (one of :data:`SCHEMAS`), read and validated; :class:`ArtifactError`
    when missing, unreadable or of the wrong shape."""
    try:
        data = fsutil.read_json(path)
    except StoreError as exc:
        raise ArtifactError(path, _problem(exc, path)) from None
    name = schema_name(path)
    return data if name is None else validate(name, data, path, require)


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
        """The ledger, ``{"steps": {step: {"seconds": s, ...}}}``, validated (a ledger of
        the wrong shape stops every command before it skips, reruns or overwrites a step);
        empty when no step has finished."""
        p = self.path(STATE)
        if not fsutil.exists(p):
            return {"steps": {}}
        return read_run_json(p)

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

    def read_plan(self) -> dict[str, Any] | None:
        """``plan.json``, or None for a run from before plans were saved."""
        path = self.path(PLAN)
        return read_run_json(path) if fsutil.exists(path) else None

    def read_info(self) -> dict[str, Any]:
        """``run.json``: ``store``, and (runs of ``acl-dist run``) the store's ``classes``,
        ``label_map_given`` and the ``config``."""
        return read_run_json(self.path(RUN_INFO))

    def has_info(self) -> bool:
        return fsutil.exists(self.path(RUN_INFO))

    def check_store_classes(self, store: str, classes: Sequence[str],
                            info: dict[str, Any] | None = None) -> None:
        """The store opened for this run (``store``, whose classes are ``classes``) has
        the classes ``run.json`` saved, in their order (a weak model's outputs are them,
        by index; an unsupervised run's mappings name them): otherwise it is not the store
        the run was made on, and one :class:`ArtifactError` naming ``run.json`` says so
        before anything runs. A run whose ``run.json`` lists no classes is not checked."""
        saved = (self.read_info() if info is None else info).get("classes")
        if saved is not None and list(saved) != list(classes):
            differ = "in another order" if sorted(saved) == sorted(classes) else \
                f"{_few(list(classes))}"
            raise ArtifactError(self.path(RUN_INFO), f"classes: the run was made on a store "
                                f"with the classes {_few(saved)}; {store} has {differ}: "
                                "not the run's store")

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
        return self.round(r, CLUSTERS)

    def eval_path(self, r: int, split: str) -> str:
        return self.round(r, EVAL_FILES[split])

    def metrics_path(self) -> str:
        return self.path(METRICS)

    def detections_path(self, mapping: str | None = None) -> str:
        """``detections.json``, or ``detections_<mapping>.json`` (labels mapped to classes)."""
        return self.path(f"detections_{mapping}.json" if mapping else DETECTIONS)

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

    def read_clusters(self, r: int, require: Iterable[str] | None = None
                      ) -> dict[str, Any] | None:
        """Round ``r``'s clustering (``labels``: video -> cluster, ``scores``, ``sizes``,
        ``mapping``, ...), or None when that clustering has not run. ``require``: the keys
        the caller uses (default ``labels``)."""
        path = self.clusters_path(r)
        return read_run_json(path, require) if fsutil.exists(path) else None

    def write_eval(self, r: int, split: str, result: dict[str, Any]) -> None:
        fsutil.write_json_atomic(self.eval_path(r, split), result)

    def read_eval(self, r: int, split: str) -> dict[str, Any] | None:
        """Round ``r``'s ``test`` or ``val`` evaluation, or None when not written."""
        path = self.eval_path(r, split)
        return read_run_json(path) if fsutil.exists(path) else None

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        fsutil.write_json_atomic(self.metrics_path(), metrics)

    def read_metrics(self, require: Iterable[str] | None = None) -> dict[str, Any]:
        """``metrics.json`` (the metrics contract); ``require``: the keys the caller uses
        (default ``rounds``)."""
        path = self.metrics_path()
        if not fsutil.exists(path):
            raise ArtifactError(path, "missing: not a finished run (a run in progress or "
                                      "interrupted: acl-dist run --resume RUN)")
        return read_run_json(path, require)

    def write_detections(self, results: dict[str, Any], mapping: str | None = None) -> None:
        fsutil.write_json_atomic(self.detections_path(mapping), results, indent=None)

    def read_detections(self, mapping: str | None = None) -> dict[str, Any] | None:
        """The run's ActivityNet result JSON (mapped by ``mapping`` when that file exists,
        else the plain one), or None when the run wrote none."""
        for path in ([self.detections_path(mapping)] if mapping else []) + \
                [self.detections_path()]:
            if fsutil.exists(path):
                return read_run_json(path)
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
        returned. A refused file (pickled objects, or JSON of the wrong shape) raises, and
        every finished step's files are read before any step is unmarked: a refused file
        anywhere stops the resume before the ledger changes or a step reruns."""
        from .progress import log

        done = self.state()["steps"]
        first: tuple[int, ArtifactError] | None = None
        for i, name in enumerate(names):
            if name not in done:
                continue
            for path in self.step_artifacts(name, val, test):
                try:
                    check_artifact(path)
                except ArtifactError as err:
                    if err.refused:
                        raise
                    first = first or (i, err)
        if first is None:
            return []
        i, err = first
        rerun = [n for n in names[i:] if n in done]
        log(f"--resume: {err}; rerunning {names[i]}"
            + (f" and the {len(rerun) - 1} finished step(s) after it"
               if len(rerun) > 1 else ""), quiet)
        self.forget(rerun)
        return rerun

    # -- what a directory is ----------------------------------------------------------

    def is_run(self) -> bool:
        """Whether the directory holds (the start of) an acl-dist run."""
        return any(fsutil.exists(self.path(m)) for m in RUN_MARKERS)

    @staticmethod
    def not_a_run(path: str) -> str | None:
        """None when ``path`` is an acl-dist run holding only what a run writes (so
        ``--overwrite`` may replace it); otherwise what it is, for the refusal message.
        A run directory with a file of the user's in it is not ours to delete."""
        if not RunDir(path).is_run():
            return f"not an acl-dist run (none of {', '.join(RUN_MARKERS)})"
        fs, p = fsutil.get_fs(path)
        names = sorted(posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False))
        foreign = [n for n in names if not _RUN_ENTRY.fullmatch(n)]
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            return (f"an acl-dist run holding files it did not write ({', '.join(foreign[:3])}"
                    f"{more})")
        return None

    def has_finished_steps(self) -> bool:
        return bool(self.state()["steps"]) if fsutil.exists(self.path(STATE)) else False
