"""Damaged or hostile run directories: every JSON file acl-dist reads back from a run
(state, plan, run, clusters, eval/val, metrics, detections) is checked against its schema
when read, so a wrong shape, type, missing key or non-finite number is one line naming the
file and the key, before anything is recomputed or overwritten; a run resumed, reported or
predicted against a store that is not its own is refused before Ray starts; and report.html
shows every value from a file as text, never as markup.

The schema tests need no Ray: hand-written documents (shaped as the writers write them, so
a good one passing is the control) and random JSON fed to every reader. The CLI cases copy
the session's finished unsupervised run (``conftest.unsupervised_run``) per case.
"""

from __future__ import annotations

import copy
import html
import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acl_dist import artifacts
from acl_dist.artifacts import (CLUSTERS, DETECTIONS, EVAL_FILES, METRICS, PLAN, RUN_INFO,
                                SCHEMAS, STATE, RunDir, validate)
from acl_dist.cli import main
from acl_dist.errors import ArtifactError

# --------------------------------------------------------------------------- good documents
# As the writers write them (acl_dist.pipeline, acl_dist.plan.run_plan,
# acl_dist.results): each must pass, the control of every bad case below.

TIOU = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]

GOOD: dict[str, Any] = {
    STATE: {"steps": {
        "round_0.descriptors": {"seconds": 3.03, "videos": 24},
        "round_0.cluster": {"seconds": 6.2, "backend": "sklearn"},
        "round_0.train": {"seconds": 11.97, "steps": 6, "final_loss": 4.69,
                          "started_early": True},
        "round_0.attention": {"seconds": 2.87, "videos": 47},
        "round_0.evaluate": {"seconds": 0.03},
        "round_1.cluster": {"seconds": 0, "backend": "sklearn"},
        "finish": {"seconds": 0.03}}},
    PLAN: {"capacity": {"cpus": 4.0, "gpus": 0.0, "max_cpus": 4.0, "max_gpus": 0.0,
                        "on_cluster": False, "node_types": [],
                        "summary": "local Ray instance on 2 cores (4 CPUs, 0 GPUs up)"},
           "train": {"workers": 2, "use_gpu": False, "resources_per_worker": {"CPU": 0.5},
                     "placement_strategy": "PACK", "early_start": True},
           "cluster": {"backend": "auto", "gpu": False},
           "attention": {"actors": 1, "gpu": False},
           "request": [{"CPU": 0.5}, {"CPU": 0.5}],
           "config": {"mode": "unsupervised", "num_classes": 4}},
    RUN_INFO: {"store": "/data/store", "classes": ["BaseballPitch", "Billiards"],
               "label_map_given": False, "config": {"mode": "unsupervised"}},
    CLUSTERS: {"round": 1, "backend": "sklearn", "backend_reason": "auto: no GPU",
               "graph": "dense", "sigma": 1.6, "seconds": 5.9,
               "phases": {"graph": 0.001, "kmeans": 0.052}, "sizes": [2, 1],
               "labels": {"video_validation_0000907": 1, "video_validation_0000171": 0,
                          "video_validation_0000901": 0},
               "scores": {"nmi": 0.17, "ari": 0.018, "purity": 0.5, "clusters": 2,
                          "classes": 2, "videos": 3},
               "mapping": {"hungarian": {"cluster_00": [["BaseballPitch", 1.0]],
                                         "cluster_01": [["Billiards", 1.0]]},
                           "soft": {"cluster_00": [["BaseballPitch", 1.0],
                                                   ["Billiards", 0.5]],
                                    "cluster_01": []}},
               "stability": 0.23, "silhouette": -0.08},
    EVAL_FILES["test"]: {"round": 0, "detections": 2991, "label_map": "hungarian",
                         "videos": "all 23 videos of subset 'test'",
                         "annotation": "/data/store/gt.json", "tiou": TIOU,
                         "map": [3.7, 2.1, 0.9, 0.4, 0.2, 0.05, 0.0], "average": 1.04,
                         "per_class": {"Billiards": [6.9, 5.0, 2.2, 0.8, 0.1, 0.0, 0.0]}},
    EVAL_FILES["val"]: {"round": 0, "detections": 12, "label_map": None,
                        "validation": "20% of the training videos held out (seed 0)",
                        "annotation": "/data/store/gt.json", "tiou": [0.5], "map": [10.0],
                        "average": 10.0, "per_class": {"a": [10.0]}},
    METRICS: {"mode": "unsupervised", "label_map": "hungarian",
              "annotation": "/data/store/gt.json",
              "test_videos": "all 23 videos of subset 'test'", "tiou": TIOU,
              "map": [7.3, 3.3, 2.4, 1.6, 1.3, 0.8, 0.4], "average": 2.46,
              "per_class": {"Billiards": [8.6, 5.2, 4.1, 3.3, 2.5, 1.6, 0.8]},
              "train_subset": "validation", "test_subset": "test", "num_classes": 4,
              "rounds": [
                  {"round": 0, "nmi": 0.26, "ari": 0.06, "purity": 0.46, "clusters": 4,
                   "classes": 4, "videos": 24, "cluster_backend": "sklearn",
                   "silhouette": 0.05, "cluster_sizes": [6, 8, 6, 4],
                   "test_map": [3.7, 2.1, 0.9, 0.4, 0.2, 0.05, 0.0], "test_average": 1.04,
                   "seconds": {"descriptors": 3.03, "cluster": 6.2, "train": 11.97}},
                  {"round": 1, "clustering_only": True, "seconds": {"cluster": 0.02}}],
              "validation": None, "seconds_total": 52.4, "store": "/data/store"},
    DETECTIONS: {"version": "VERSION 1.3",
                 "external_data": {"used": False, "details": "acl-dist unsupervised"},
                 "results": {"video_test_0000004": [
                     {"label": "cluster_01", "score": 0.91, "segment": [1.5, 7.25]}],
                     "video_test_0000006": []}},
}

#: What other versions and writers leave, which must still read: a Tune trial's run.json,
#: a weak run's metrics without annotations, a clustering written with its labels only,
#: an evaluation of a subset without annotations, and keys a schema does not name.
ALSO_GOOD = [
    (RUN_INFO, {"store": "s3://bucket/store", "trial": "abc_00001"}),
    (METRICS, {"mode": "weak", "label_map": None, "annotation": None, "test_videos": None,
               "tiou": [], "map": [], "average": None, "per_class": {},
               "rounds": [{"round": 0, "seconds": {"train": 1}}], "store": "/s"}),
    (METRICS, {"rounds": []}),
    (CLUSTERS, {"labels": {"v1": 0, "v2": 3}}),
    (EVAL_FILES["test"], {"round": 0, "detections": 0, "label_map": None,
                          "videos": "all 3 videos of subset 'test'", "annotation": "/gt"}),
    (EVAL_FILES["test"], {}),
    (STATE, {"steps": {}, "added_later": [1, 2]}),
    (PLAN, {**GOOD[PLAN], "scaled_to": {"cpus": 8}}),
    (DETECTIONS, {"results": {}}),
]


def test_every_run_file_has_a_schema():
    assert set(SCHEMAS) == {STATE, PLAN, RUN_INFO, CLUSTERS, *EVAL_FILES.values(),
                            METRICS, DETECTIONS} == set(GOOD)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_documents_pass(name):
    doc = copy.deepcopy(GOOD[name])
    assert validate(name, doc) == GOOD[name]


@pytest.mark.parametrize("name,doc", ALSO_GOOD, ids=[f"{n}-{i}" for i, (n, _) in
                                                     enumerate(ALSO_GOOD)])
def test_older_and_partial_documents_pass(name, doc):
    assert validate(name, doc) is doc


# --------------------------------------------------------------------------- bad documents


def damaged(name: str, change: Callable[[Any], Any]) -> Any:
    """A deep copy of ``GOOD[name]`` changed by ``change`` (which edits it in place, or
    returns a replacement)."""
    doc = copy.deepcopy(GOOD[name])
    out = change(doc)
    return doc if out is None else out


def put(path: str, value: Any) -> Callable[[Any], None]:
    """Set the value at a path of keys and list indexes (``"steps/round_0.train/seconds"``);
    ``DELETE`` removes it."""
    def change(doc: Any) -> None:
        *parents, last = path.split("/")
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return change


DELETE = object()
NAN, INF = float("nan"), float("inf")

# (file, change, regex of the message after "<file>: ")
BAD = [
    (STATE, lambda d: [], r"^expected a JSON object, got a list$"),
    (STATE, lambda d: "steps", r"^expected a JSON object, got 'steps'$"),
    (STATE, put("steps", DELETE), r"^steps: missing$"),
    (STATE, put("steps", [1, 2]), r"^steps: expected an object, got a list$"),
    (STATE, put("steps/round_0.train", "x"), r"^steps\.round_0\.train: expected an object, "
                                             r"got 'x'$"),
    (STATE, put("steps/round_0.train/seconds", "a"),
     r"^steps\.round_0\.train\.seconds: expected a number, got 'a'$"),
    (STATE, put("steps/round_0.train/seconds", NAN),
     r"^steps\.round_0\.train\.seconds: expected a finite number, got nan$"),
    (STATE, put("steps/round_0.train/seconds", True),
     r"^steps\.round_0\.train\.seconds: expected a number, got true$"),
    (STATE, put("steps/round_0.train/seconds", -1),
     r"^steps\.round_0\.train\.seconds: expected a number >= 0, got -1$"),
    (STATE, put("steps/round_0.train/seconds", DELETE),
     r"^steps\.round_0\.train\.seconds: missing$"),
    (STATE, put("steps/round_0.fly", {"seconds": 1}),
     r"^steps\.round_0\.fly: not a step acl-dist runs"),
    (STATE, put("steps/x\ny", {"seconds": 1}), r"^steps\.'x\\ny': not a step"),
    (PLAN, lambda d: None, None),       # the control, inline
    (PLAN, put("capacity", DELETE), r"^capacity: missing$"),
    (PLAN, put("capacity/summary", 3), r"^capacity\.summary: expected a string, got 3$"),
    (PLAN, put("train/workers", "two"), r"^train\.workers: expected an integer, got 'two'$"),
    (PLAN, put("train/workers", 0), r"^train\.workers: expected an integer >= 1, got 0$"),
    (PLAN, put("train/resources_per_worker/CPU", INF),
     r"^train\.resources_per_worker\.CPU: expected a finite number, got inf$"),
    (PLAN, put("attention/gpu", "no"), r"^attention\.gpu: expected true or false, got 'no'$"),
    (PLAN, put("request", {"CPU": 1}), r"^request: expected a list, got an object$"),
    (PLAN, put("request/1/CPU", "all"), r"^request\[1\]\.CPU: expected a number, got 'all'$"),
    (RUN_INFO, put("store", DELETE), r"^store: missing$"),
    (RUN_INFO, put("store", 5), r"^store: expected a string, got 5$"),
    (RUN_INFO, put("store", ""), r"^store: expected a non-empty string, got ''$"),
    (RUN_INFO, put("classes", "abc"), r"^classes: expected a list, got 'abc'$"),
    (RUN_INFO, put("classes/1", ["x"]), r"^classes\[1\]: expected a string, got a list$"),
    (RUN_INFO, put("classes/1", "BaseballPitch"), r"^classes: 'BaseballPitch' is listed "
                                                  r"twice$"),
    (RUN_INFO, put("label_map_given", "yes"), r"^label_map_given: expected true or false"),
    (RUN_INFO, put("config", []), r"^config: expected an object, got a list$"),
    (CLUSTERS, put("labels", DELETE), r"^labels: missing$"),
    (CLUSTERS, put("labels", [1, 2]), r"^labels: expected an object, got a list$"),
    (CLUSTERS, put("labels/video_validation_0000907", "x"),
     r"^labels\.video_validation_0000907: expected an integer, got 'x'$"),
    (CLUSTERS, put("labels/video_validation_0000907", -1),
     r"^labels\.video_validation_0000907: expected an integer >= 0, got -1$"),
    (CLUSTERS, put("labels/video_validation_0000907", 1.5),
     r"^labels\.video_validation_0000907: expected an integer, got 1\.5$"),
    (CLUSTERS, put("scores/ari", DELETE), r"^scores\.ari: missing$"),
    (CLUSTERS, put("scores/nmi", None), r"^scores\.nmi: expected a number, got null$"),
    (CLUSTERS, put("sizes/0", "two"), r"^sizes\[0\]: expected an integer, got 'two'$"),
    (CLUSTERS, put("sigma", "wide"), r"^sigma: expected a number, got 'wide'$"),
    (CLUSTERS, put("mapping/hungarian/oops", []),
     r"^mapping\.hungarian\.oops: not a cluster name \(cluster_<k>\)$"),
    (CLUSTERS, put("mapping/hungarian/cluster_00", [["a"]]),
     r"^mapping\.hungarian\.cluster_00\[0\]: expected a list of two, got a list of 1$"),
    (CLUSTERS, put("mapping/soft/cluster_00/1", ["Billiards", "half"]),
     r"^mapping\.soft\.cluster_00\[1\]\[1\]: expected a number, got 'half'$"),
    (CLUSTERS, put("silhouette", NAN), r"^silhouette: expected a finite number, got nan$"),
    (EVAL_FILES["test"], put("map", "high"), r"^map: expected a list, got 'high'$"),
    (EVAL_FILES["test"], put("map", [1.0, 2.0]),
     r"^map: expected 7 value\(s\), one per tIoU, got 2$"),
    (EVAL_FILES["test"], put("tiou", DELETE), r"^tiou: missing \(map holds a value per "
                                              r"tIoU\)$"),
    (EVAL_FILES["test"], put("map", DELETE), r"^map: missing \(an average goes with it\)$"),
    (EVAL_FILES["test"], put("average", INF), r"^average: expected a finite number, got inf"),
    (EVAL_FILES["test"], put("per_class/Billiards", [1.0]),
     r"^per_class\.Billiards: expected 7 value\(s\), one per tIoU, got 1$"),
    (EVAL_FILES["test"], put("detections", "many"),
     r"^detections: expected an integer, got 'many'$"),
    (EVAL_FILES["val"], put("validation", 3), r"^validation: expected a string, got 3$"),
    (EVAL_FILES["val"], put("label_map", ["a"]), r"^label_map: expected a string, got a list"),
    (METRICS, lambda d: [], r"^expected a JSON object, got a list$"),
    (METRICS, put("rounds", DELETE), r"^rounds: missing$"),
    (METRICS, put("rounds", {}), r"^rounds: expected a list, got an object$"),
    (METRICS, put("rounds/0/round", "zero"), r"^rounds\[0\]\.round: expected an integer, "
                                             r"got 'zero'$"),
    (METRICS, put("rounds/0/seconds", DELETE), r"^rounds\[0\]\.seconds: missing$"),
    (METRICS, put("rounds/0/seconds/train", "x"),
     r"^rounds\[0\]\.seconds\.train: expected a number, got 'x'$"),
    (METRICS, put("rounds/0/ari", DELETE), r"^rounds\[0\]\.ari: missing \(it goes with "
                                           r"nmi\)$"),
    (METRICS, put("rounds/0/test_map/2", NAN),
     r"^rounds\[0\]\.test_map\[2\]: expected a finite number, got nan$"),
    (METRICS, put("average", None), r"^average: missing \(the mAP has one\)$"),
    (METRICS, put("average", "2.4"), r"^average: expected a number, got '2\.4'$"),
    (METRICS, put("mode", 1), r"^mode: expected a string, got 1$"),
    (METRICS, put("store", {"path": "/s"}), r"^store: expected a string, got an object$"),
    (METRICS, put("per_class/<b>", "x"), r"^per_class\.'<b>': expected a list, got 'x'$"),
    (METRICS, put("tiou/0", -0.5), r"^tiou\[0\]: expected a number >= 0, got -0\.5$"),
    (DETECTIONS, put("results", DELETE), r"^results: missing$"),
    (DETECTIONS, put("results", []), r"^results: expected an object, got a list$"),
    (DETECTIONS, put("results/video_test_0000006", {}),
     r"^results\.video_test_0000006: expected a list, got an object$"),
    (DETECTIONS, put("results/video_test_0000004/0/segment", [1.0]),
     r"^results\.video_test_0000004\[0\]\.segment: expected a list of two"),
    (DETECTIONS, put("results/video_test_0000004/0/score", NAN),
     r"^results\.video_test_0000004\[0\]\.score: expected a finite number, got nan$"),
    (DETECTIONS, put("results/video_test_0000004/0/label", DELETE),
     r"^results\.video_test_0000004\[0\]\.label: missing$"),
]


@pytest.mark.parametrize("name,change,pattern", BAD,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD)])
def test_bad_documents_are_one_error_naming_the_file_and_key(name, change, pattern):
    doc = damaged(name, change)
    if pattern is None:          # the unchanged document: the control of the table
        assert validate(name, doc, path=f"RUN/{name}") == GOOD[name]
        return
    with pytest.raises(ArtifactError) as err:
        validate(name, doc, path=f"RUN/{name}")
    text = str(err.value)
    assert text.startswith(f"RUN/{name}: ") and len(text.splitlines()) == 1, text
    problem = text[len(f"RUN/{name}: "):]
    assert re.search(pattern, problem), f"{pattern!r} not in {problem!r}"
    assert err.value.path == f"RUN/{name}" and err.value.refused


def test_the_table_covers_every_file():
    assert {n for n, _, _ in BAD} == set(SCHEMAS) and len(BAD) >= 60


def test_shape_only_leaves_the_readers_required_keys_to_them():
    """``require=()`` (what --resume's read-back checks): a file may lack a top-level key,
    but what it holds has its shape; the default requires the readers' keys."""
    assert validate(CLUSTERS, {"rounds": [], "step": "x"}, require=()) is not None
    with pytest.raises(ArtifactError, match=r"labels: missing"):
        validate(CLUSTERS, {"rounds": [], "step": "x"})
    with pytest.raises(ArtifactError, match=r"labels\.v: expected an integer"):
        validate(CLUSTERS, {"labels": {"v": "x"}}, require=())
    with pytest.raises(ArtifactError, match=r"^M: store: missing$"):
        validate(METRICS, {"rounds": []}, path="M", require=("rounds", "store"))


# --------------------------------------------------------------------------- the readers


def write(root: Path, rel: str, data: Any) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


#: file (relative to the run) -> (its schema, how RunDir reads it)
READERS: dict[str, tuple[str, Callable[[RunDir], Any]]] = {
    STATE: (STATE, lambda d: d.state()),
    PLAN: (PLAN, lambda d: d.read_plan()),
    RUN_INFO: (RUN_INFO, lambda d: d.read_info()),
    f"round_0/{CLUSTERS}": (CLUSTERS, lambda d: d.read_clusters(0)),
    f"round_0/{EVAL_FILES['test']}": (EVAL_FILES["test"], lambda d: d.read_eval(0, "test")),
    f"round_0/{EVAL_FILES['val']}": (EVAL_FILES["val"], lambda d: d.read_eval(0, "val")),
    METRICS: (METRICS, lambda d: d.read_metrics()),
    DETECTIONS: (DETECTIONS, lambda d: d.read_detections()),
    "detections_hungarian.json": (DETECTIONS, lambda d: d.read_detections("hungarian")),
}


@pytest.mark.parametrize("rel", sorted(READERS))
def test_every_reader_validates(rel, tmp_path):
    """Each RunDir reader returns a good file's content as written and refuses a bad one
    with the file and key named."""
    name, read = READERS[rel]
    run = RunDir(str(tmp_path))
    write(tmp_path, rel, GOOD[name])
    assert read(run) == GOOD[name]
    bad = next(change for n, change, p in BAD if n == name and p is not None)
    write(tmp_path, rel, damaged(name, bad))
    with pytest.raises(ArtifactError) as err:
        read(run)
    assert str(err.value).startswith(f"{tmp_path / rel}: ")


def test_the_written_format_is_unchanged(tmp_path):
    """The writers write what they always wrote (indented JSON, the caller's dict), and
    the ledger's records read back as marked."""
    run = RunDir(str(tmp_path))
    run.write_clusters(0, GOOD[CLUSTERS])
    assert (tmp_path / "round_0" / CLUSTERS).read_text() == \
        json.dumps(GOOD[CLUSTERS], indent=1) + "\n"
    run.write_metrics(GOOD[METRICS])
    assert run.read_metrics() == GOOD[METRICS]
    run.mark("round_0.descriptors", 3.031, videos=24)
    run.mark("round_0.cluster", 6.2, backend="sklearn")
    assert json.loads((tmp_path / STATE).read_text()) == {"steps": {
        "round_0.descriptors": {"seconds": 3.03, "videos": 24},
        "round_0.cluster": {"seconds": 6.2, "backend": "sklearn"}}}
    run.forget(["round_0.cluster"])
    assert list(run.state()["steps"]) == ["round_0.descriptors"]
    assert run.read_plan() is None          # a run from before plan.json
    run.write_plan(GOOD[PLAN])
    assert run.read_plan() == GOOD[PLAN]


def test_a_bad_ledger_stops_mark_and_forget_before_they_write(tmp_path):
    run = RunDir(str(tmp_path))
    path = write(tmp_path, STATE, {"steps": {"round_0.train": {"seconds": "a"}}})
    before = path.read_bytes()
    for act in (lambda: run.mark("round_0.cluster", 1.0), lambda: run.forget(["finish"]),
                lambda: run.done("finish"), run.has_finished_steps):
        with pytest.raises(ArtifactError, match=r"state\.json: steps\.round_0\.train\."
                                                r"seconds: expected a number, got 'a'"):
            act()
    assert path.read_bytes() == before


def test_resume_read_back_refuses_a_misshapen_file_before_unmarking_anything(tmp_path):
    """A misshapen finished file is refused even after a lost one (which alone would be
    rerun): the ledger is left as it was, nothing reruns. Without it, the lost file is
    rerun (the control)."""
    run = RunDir(str(tmp_path))
    names = ["round_0.descriptors", "round_0.cluster", "round_0.train"]
    for name in names:
        run.mark(name, 1.0)
    write(tmp_path, f"round_0/{CLUSTERS}", {"labels": [1, 2]})   # descriptors: lost
    state = (tmp_path / STATE).read_bytes()
    with pytest.raises(ArtifactError, match=r"round_0/clusters\.json: labels: expected an "
                                            r"object, got a list") as err:
        run.verify_steps(names, val=False, test=False, quiet=True)
    assert err.value.refused and (tmp_path / STATE).read_bytes() == state
    write(tmp_path, f"round_0/{CLUSTERS}", {"labels": {"v": 0}})
    (tmp_path / "round_0" / "model.pt").write_bytes(b"")
    assert run.verify_steps(names, val=False, test=False, quiet=True) == names
    assert run.state()["steps"] == {}


# --------------------------------------------------------------------------- random shapes

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 63) |
    st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) |
    st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)


@st.composite
def mutated(draw, name: str) -> Any:
    """``GOOD[name]`` with one to three values somewhere in it replaced by random JSON or
    removed: shapes near the real ones, which reach the schema's inner checks."""
    doc = copy.deepcopy(GOOD[name])
    for _ in range(draw(st.integers(1, 3))):
        parent, key, node = None, None, doc
        # down from the top, one level at least, deeper with even odds
        while isinstance(node, (dict, list)) and node and (parent is None or
                                                           draw(st.booleans())):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, draw(st.sampled_from(keys))
            node = node[key]
        if parent is None:
            return draw(JSON)
        if isinstance(parent, dict) and draw(st.integers(0, 3)) == 0:
            del parent[key]
        else:
            parent[key] = draw(JSON)
    return doc


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), rel=st.sampled_from(sorted(READERS)))
def test_any_json_is_a_record_or_one_artifact_error(data, rel):
    """Random JSON, and random damage to good documents, fed to every RunDir reader (and
    to --resume's read-back): the content as written, or an ArtifactError naming the file,
    never another exception."""
    name, read = READERS[rel]
    doc = data.draw(st.one_of(JSON, mutated(name)))
    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d), rel, doc)
        for reader in (read, lambda run: artifacts.check_artifact(str(path))):
            try:
                got = reader(RunDir(d))
            except ArtifactError as err:
                assert str(err).startswith(f"{path}: ") and len(str(err).splitlines()) == 1
                continue
            if reader is read:
                assert isinstance(got, dict)
                assert json.dumps(got, sort_keys=True) == json.dumps(doc, sort_keys=True)
                assert not _non_finite_where_checked(name, got)
                _consume(name, got)


def _consume(name: str, doc: dict) -> None:
    """What the readers' callers compute from an accepted document runs on it: the plan
    as printed, the per-round TensorBoard points, the report's mAP and rounds tables."""
    from acl_dist import report
    from acl_dist.board import round_scalars
    from acl_dist.plan import describe_plan

    if name == PLAN:
        describe_plan(doc)
    elif name == CLUSTERS:
        round_scalars(doc, {})
    elif name in EVAL_FILES.values():
        round_scalars(None, {"test": doc})
    elif name == METRICS:
        report._map_section(doc)
        report._rounds_section(doc)


def _non_finite_where_checked(name: str, doc: dict) -> bool:
    """Whether an accepted document holds a non-finite number where its readers compute
    with one (the ledger's seconds, mAPs): the schema must have refused those."""
    values: list = []
    if name == STATE:
        values = [v.get("seconds") for v in doc["steps"].values()]
    elif name in (METRICS, *EVAL_FILES.values()):
        values = [doc.get("average"), *doc.get("map", []), *doc.get("tiou", [])]
    return any(isinstance(v, float) and not math.isfinite(v) for v in values)


# --------------------------------------------------------------------------- the CLI cases


def cli(capsys, argv: list) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str, pattern: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run directory: its bytes and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    """Stores a run was not made on: other classes; the same classes with other feature
    dims; the same classes and dims with other videos."""
    from acl_dist.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("other-stores")
    out = {}
    for name, cfg in {"classes": SynthConfig(classes=3, videos=6, dim=8, seed=1),
                      "dims": SynthConfig(classes=4, videos=24, dim=8, seed=3),
                      "videos": SynthConfig(classes=4, videos=12, dim=16, seed=5)}.items():
        out[name] = str(root / name)
        synthesize(cfg, out[name], quiet=True, report=False)
    return out


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    out = change(data)
    path.write_text(json.dumps(data if out is None else out))


def text(path: Path, content: str) -> Callable[[Path], None]:
    return lambda run: (run / path).write_text(content)


def at(rel: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    return lambda run: edit_json(run / rel, change)


def store_of(which: str) -> Callable[[Path, dict], None]:
    def damage(run: Path, stores: dict) -> None:
        edit_json(run / RUN_INFO, put("store", stores[which]))
    return damage


def model_label_names(run: Path) -> None:
    import torch

    path = run / "round_1" / "model.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["label_names"] = ckpt["label_names"][:2]
    torch.save(ckpt, path)


def resume(run: Path, stores: dict) -> list:
    return ["run", "--resume", run, "--quiet"]


def report(run: Path, stores: dict) -> list:
    return ["report", run]


def predict(run: Path, stores: dict) -> list:
    return ["predict", "--run", run, "--store", stores["run"], "--out",
            run.parent / "dets.json", "--quiet"]


def new_run(run: Path, stores: dict) -> list:
    return ["run", "--store", stores["run"], "--out", run, "--mode", "unsupervised",
            "--num-classes", "4", "--config", "tiny", "--quiet"]


# (id, damage(run) or damage(run, stores), command, regex of the one line)
CASES = [
    ("state_steps_a_list", at(STATE, put("steps", [1, 2])), resume,
     r"state\.json: steps: expected an object, got a list$"),
    ("state_step_a_string", at(STATE, put("steps/round_0.train", "x")), resume,
     r"state\.json: steps\.round_0\.train: expected an object, got 'x'$"),
    ("state_a_list", text(Path(STATE), "[]"), resume,
     r"state\.json: expected a JSON object, got a list$"),
    ("state_seconds_a_string", at(STATE, put("steps/round_0.train/seconds", "a")), resume,
     r"state\.json: steps\.round_0\.train\.seconds: expected a number, got 'a'$"),
    ("state_seconds_nan", at(STATE, put("steps/round_1.train/seconds", NAN)), resume,
     r"state\.json: steps\.round_1\.train\.seconds: expected a finite number, got nan$"),
    ("state_unknown_step", at(STATE, put("steps/round_0.fly", {"seconds": 1})), resume,
     r"state\.json: steps\.round_0\.fly: not a step acl-dist runs"),
    ("state_bad_blocks_a_new_run", at(STATE, put("steps", [])), new_run,
     r"state\.json: steps: expected an object, got a list$"),
    ("plan_a_list", text(Path(PLAN), "[]"), report,
     r"plan\.json: expected a JSON object, got a list$"),
    ("plan_workers_a_string", at(PLAN, put("train/workers", "two")), report,
     r"plan\.json: train\.workers: expected an integer, got 'two'$"),
    ("plan_no_capacity", at(PLAN, put("capacity", DELETE)), report,
     r"plan\.json: capacity: missing$"),
    ("run_store_a_number", at(RUN_INFO, put("store", 5)), resume,
     r"run\.json: store: expected a string, got 5$"),
    ("run_no_store", at(RUN_INFO, put("store", DELETE)), resume, r"run\.json: store: missing$"),
    ("run_classes_a_string", at(RUN_INFO, put("classes", "abc")), resume,
     r"run\.json: classes: expected a list, got 'abc'$"),
    ("run_store_with_other_classes", store_of("classes"), resume,
     r"run\.json: classes: the run was made on a store with the classes 'BaseballPitch', "
     r".*; \S+/classes has .*: not the run's store$"),
    ("run_store_with_other_dims", store_of("dims"), resume,
     r"run\.json: store: \S+/dims is not the store this run was made on: its features "
     r"\{'rgb': 8, 'flow': 8\} are not those round_1's model was trained on "
     r"\{'rgb': 16, 'flow': 16\}$"),
    ("run_store_with_other_videos", store_of("videos"), resume,
     r"run\.json: store: \S+/videos is not the store this run was made on: round 0's "
     r"clustering labels 24 videos, \d+ of them not among its \d+ training videos"),
    ("run_classes_not_the_mappings", at(RUN_INFO, put("classes", ["a", "b"])), predict,
     r"run\.json: classes: 2 classes that are not the run's \(round 1's mapping names "
     r"classes not among them\)$"),
    ("run_classes_not_the_report_stores", at(RUN_INFO, put("classes", ["a", "b"])), report,
     r"run\.json: classes: the run was made on a store with the classes 'a', 'b'; "
     r"\S+ has 'BaseballPitch', .*: not the run's store$"),
    ("clusters_labels_a_list", at(f"round_1/{CLUSTERS}", put("labels", [1, 2])), resume,
     r"round_1/clusters\.json: labels: expected an object, got a list$"),
    ("clusters_label_a_string", at(f"round_0/{CLUSTERS}", lambda d: d["labels"].update(
        {next(iter(d["labels"])): "x"})), resume,
     r"round_0/clusters\.json: labels\.video_\w+: expected an integer, got 'x'$"),
    ("clusters_label_out_of_range", at(f"round_0/{CLUSTERS}", lambda d: d["labels"].update(
        {next(iter(d["labels"])): 9})), resume,
     r"round_0/clusters\.json: labels: video 'video_\w+' is in cluster 9, not below "
     r"num_classes 4$"),
    ("clusters_a_list", text(Path("round_2") / CLUSTERS, "[]"), resume,
     r"round_2/clusters\.json: expected a JSON object, got a list$"),
    ("clusters_mapping_key", at(f"round_1/{CLUSTERS}", put("mapping/hungarian/oops", [])),
     report, r"round_1/clusters\.json: mapping\.hungarian\.oops: not a cluster name"),
    ("clusters_mapping_for_predict", at(f"round_1/{CLUSTERS}",
                                        put("mapping/hungarian/cluster_00", "a")), predict,
     r"round_1/clusters\.json: mapping\.hungarian\.cluster_00: expected a list, got 'a'$"),
    ("clusters_no_labels_for_report", text(Path("round_1") / CLUSTERS, "{}"), report,
     r"round_1/clusters\.json: labels: missing$"),
    ("clusters_no_labels_on_resume", text(Path("round_1") / CLUSTERS, "{}"), resume,
     r"round_1/clusters\.json: labels: missing$"),
    ("eval_map_a_string", at(f"round_0/{EVAL_FILES['test']}", put("map", "high")), resume,
     r"round_0/eval\.json: map: expected a list, got 'high'$"),
    ("eval_map_per_tiou", at(f"round_1/{EVAL_FILES['test']}", put("map", [1.0, 2.0])),
     resume, r"round_1/eval\.json: map: expected 7 value\(s\), one per tIoU, got 2$"),
    ("eval_average_nan", at(f"round_0/{EVAL_FILES['test']}", put("average", NAN)), resume,
     r"round_0/eval\.json: average: expected a finite number, got nan$"),
    ("metrics_rounds_an_object", at(METRICS, put("rounds", {})), report,
     r"metrics\.json: rounds: expected a list, got an object$"),
    ("metrics_no_store", at(METRICS, put("store", DELETE)), report,
     r"metrics\.json: store: missing$"),
    ("metrics_round_seconds", at(METRICS, put("rounds/0/seconds/train", "x")), report,
     r"metrics\.json: rounds\[0\]\.seconds\.train: expected a number, got 'x'$"),
    ("metrics_average_missing", at(METRICS, put("average", None)), report,
     r"metrics\.json: average: missing \(the mAP has one\)$"),
    ("metrics_on_resume", at(METRICS, put("rounds/0/round", "zero")), resume,
     r"metrics\.json: rounds\[0\]\.round: expected an integer, got 'zero'$"),
    ("metrics_for_predict", at(METRICS, put("rounds", 1)), predict,
     r"metrics\.json: rounds: expected a list, got 1$"),
    ("detections_results_a_list", at("detections_hungarian.json", put("results", [])),
     report, r"detections_hungarian\.json: results: expected an object, got a list$"),
    ("detections_on_resume", at(DETECTIONS, lambda d: d["results"].update({"v": [{}]})),
     resume, r"detections\.json: results\.v\[0\]\.label: missing$"),
    ("model_label_names", model_label_names, predict,
     r"round_1/model\.pt: label_names: expected the names of its 4 outputs"),
]


@pytest.fixture
def finished_run(unsupervised_run, tmp_path) -> Path:
    run, code, out = unsupervised_run
    assert code == 0, out
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


@pytest.mark.ray
@pytest.mark.parametrize("damage,command,pattern",
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_a_damaged_run_is_one_line_and_left_as_it_was(damage, command, pattern, finished_run,
                                                      stores, tiny_store, capsys,
                                                      monkeypatch):
    """Exit 1, one line naming the file and key, no traceback; not a file of the run
    changed (bytes and times), none added; Ray never reached (before it starts)."""
    from acl_dist import ray_start

    run = finished_run
    everywhere = {**stores, "run": tiny_store[0]}
    if damage.__code__.co_argcount == 2:
        damage(run, everywhere)
    else:
        damage(run)
    before = snapshot(run)

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was reached: the damage must be found before")
    for name in ("init_ray", "cluster_capacity", "planning_capacity"):
        monkeypatch.setattr(ray_start, name, no_ray, raising=False)
    code, _out, err = cli(capsys, command(run, everywhere))
    assert code == 1, err
    one_line(err, pattern)
    assert snapshot(run) == before
    assert not (run.parent / "dets.json").exists()


def test_the_case_table_is_complete():
    """Every file and every command that reads a run has cases."""
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids)) >= 35
    for prefix in ("state", "plan", "run", "clusters", "eval", "metrics", "detections"):
        assert any(i.startswith(prefix) for i in ids), prefix
    assert {c[2] for c in CASES} == {resume, report, predict, new_run}


@pytest.mark.ray
def test_the_damage_is_what_stops_them(finished_run, capsys):
    """The control of the table: the undamaged copy resumes (nothing to do) and reports."""
    before = snapshot(finished_run)
    code, _out, err = cli(capsys, ["run", "--resume", finished_run, "--quiet"])
    assert code == 0, err
    after = snapshot(finished_run)
    assert {k: v for k, v in after.items() if k in before and not k.startswith(
        ("tensorboard", PLAN))} == {k: v for k, v in before.items() if not k.startswith(
            ("tensorboard", PLAN))}
    code, _out, err = cli(capsys, ["report", finished_run])
    assert code == 0, err


# --------------------------------------------------------------------------- the report

MARKUP = ["<script>alert(1)</script>", "\"><img src=x onerror=alert(2)>", "a & b",
          "'><svg onload=alert(3)>"]


def renamed_store(store: str, out: str, names: dict[str, str]) -> str:
    """A copy of ``store`` whose classes are renamed by ``names`` (the same videos,
    features and segments)."""
    from acl_dist.annotations import Segment
    from acl_dist.store import FeatureStore, StoreWriter

    fs = FeatureStore.open(store)
    with StoreWriter(out, fs.streams, [names[c] for c in fs.classes], dtype=fs.dtype,
                     source=fs.manifest.get("source")) as w:
        for rec in fs.iter_videos():
            rec.labels = [names[c] for c in rec.labels]
            rec.segments = [Segment(names[g.label], g.start, g.end) for g in rec.segments]
            w.add(rec)
    return out


@pytest.mark.ray
def test_report_shows_every_value_from_a_file_as_text(unsupervised_run, tiny_store,
                                                      tmp_path, capsys):
    """Markup planted in every string of metrics.json, in the classes of the store it
    names (the per-class, cluster and mapping tables), in the plan and in the run's and
    store's paths: none of it reaches report.html as markup; each value the page shows
    appears there escaped (the control)."""
    from acl_dist.store import FeatureStore

    src, code, out = unsupervised_run
    assert code == 0, out
    # the run's and the store's directories are named with markup too (no "/" in a name)
    run = tmp_path / "run &<u>\"'"
    shutil.copytree(src, run)
    classes = FeatureStore.open(tiny_store[0]).classes
    names = {c: f"{c}{MARKUP[i % len(MARKUP)]}" for i, c in enumerate(classes)}
    store = renamed_store(tiny_store[0], str(tmp_path / "store <i>&amp;'"), names)
    shown: list[str] = [str(run), store, *names.values()]     # text of the page
    hidden: list[str] = []                                     # read, not shown

    def plant(tag: str, where: list[str]) -> str:
        value = f"{tag}{MARKUP[len(shown + hidden) % len(MARKUP)]}"
        where.append(value)
        return value

    metrics = json.loads((run / METRICS).read_text())
    for key in ("mode", "label_map", "annotation", "test_videos", "test_subset"):
        metrics[key] = plant(key, shown)
    for key in ("train_subset", "validation"):
        metrics[key] = plant(key, hidden)
    metrics["store"] = store
    metrics["per_class"] = {plant(f"class{i}", shown): aps for i, aps in enumerate(
        metrics["per_class"].values())}
    for r in metrics["rounds"]:
        if "cluster_backend" in r:
            r["cluster_backend"] = plant("backend", hidden)
        r["seconds"] = {plant("step", hidden): v for v in r["seconds"].values()}
    (run / METRICS).write_text(json.dumps(metrics))
    edit_json(run / RUN_INFO, put("classes", list(names.values())))
    edit_json(run / PLAN, put("capacity/summary", plant("summary", shown)))

    code, _out, err = cli(capsys, ["report", run])
    assert code == 0, err
    page = (run / "report.html").read_text()
    assert len(shown) >= 15 and all(any(m in v for m in MARKUP) for v in shown[2:] + hidden)
    for value in shown + hidden:
        if any(tag in value for tag in ("<", ">", '"', "'")):
            assert value not in page, value
    for value in shown:
        assert html.escape(value, quote=True) in page, value
    assert page.count("<script") == 1               # the page's own
    for tag in ("<img src=x", "<svg", "<u>", "<i>", "onerror=alert(2)>"):
        assert tag not in page, tag
    assert f"<code>{html.escape(metrics['test_subset'], quote=True)}</code>" in page
