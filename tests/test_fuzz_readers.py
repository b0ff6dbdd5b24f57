"""Every reader of a user's file, fed random bytes and random JSON / YAML shapes through
the CLI: the command either succeeds or fails with exit 1 and one line, never a
traceback (an exception other than acl-dist's own escapes ``main`` and fails the test).

Run-directory files have their own property test (tests/test_run_files.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acl_dist.cli import main
from acl_dist.synth import SynthConfig, synthesize

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
#: For the readers behind an ingest, a pass over the whole layout per example.
FUZZ_INGEST = settings(FUZZ, max_examples=15)

scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | \
    st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                      st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)


def shaped(*keys: str) -> st.SearchStrategy:
    """Objects with the keys a reader looks for, holding anything (the likely damage)."""
    return st.fixed_dictionaries({k: values for k in keys}) | \
        st.fixed_dictionaries({keys[0]: st.dictionaries(st.text(max_size=6), values,
                                                        max_size=3)})


def documents(*keys: str) -> st.SearchStrategy:
    """File contents: random bytes, random JSON, JSON shaped like the real file."""
    return st.binary(max_size=120) | (values | shaped(*keys)).map(
        lambda v: json.dumps(v).encode())


def run_cli(capsys, argv: list) -> None:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:     # argparse: a bad option
        code = exc.code
    _out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    if code == 0:
        return
    assert code == 1, err
    assert len(lines) == 1 and re.match(r"acl-dist \w+: error: ", lines[0]), err


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    store = root / "store"
    layout = root / "layout"
    synthesize(SynthConfig(classes=3, videos=4, dim=8, seed=2), str(store),
               npy_layout=str(layout), quiet=True, report=False)
    return store, layout


@FUZZ
@given(data=documents("results", "version", "external_data"))
def test_evaluate_detections(small, tmp_path, capsys, data):
    store, _ = small
    path = tmp_path / "dets.json"
    path.write_bytes(data)
    run_cli(capsys, ["evaluate", "--detections", path, "--gt", store, "--subset", "test"])


@FUZZ
@given(data=documents("database", "version"))
def test_evaluate_ground_truth(tmp_path, capsys, data):
    dets = tmp_path / "dets.json"
    dets.write_text('{"results": {}}')
    gt = tmp_path / "gt.json"
    gt.write_bytes(data)
    run_cli(capsys, ["evaluate", "--detections", dets, "--gt", gt, "--subset", "test"])


MANIFEST_KEYS = ("streams", "dtype", "fps", "snippet_frames", "classes", "subsets", "shards",
                 "gt", "files")
mutations = st.tuples(st.sampled_from(MANIFEST_KEYS), values) | \
    st.tuples(st.just("shards"), st.lists(st.dictionaries(
        st.sampled_from(["subset", "path", "rows", "bytes", "feature_bytes"]), values,
        max_size=5), min_size=1, max_size=2))


@FUZZ
@given(data=documents("format", "format_version", "streams", "subsets", "shards", "classes",
                      "gt") | mutations)
def test_store_manifest(small, tmp_path, capsys, data):
    """Random manifests, and the store's real one with one key replaced by anything."""
    store, _ = small
    copy = tmp_path / "store"
    if not copy.exists():
        import shutil

        shutil.copytree(store, copy)
    if isinstance(data, tuple):
        manifest = json.loads((Path(store) / "manifest.json").read_text())
        manifest[data[0]] = data[1]
        data = json.dumps(manifest).encode()
    (copy / "manifest.json").write_bytes(data)
    dets = tmp_path / "dets.json"
    dets.write_text('{"results": {}}')
    run_cli(capsys, ["evaluate", "--detections", dets, "--gt", copy, "--subset", "test"])
    run_cli(capsys, ["ingest", "--layout", "npy-split", "--root", tmp_path / "nowhere",
                     "--out", copy, "--overwrite", "--quiet"])


yaml_text = st.binary(max_size=120) | values.map(lambda v: json.dumps(v).encode()) | \
    st.text(alphabet="ab:-[]{}&*!# \n'\"0.1", max_size=60).map(str.encode)


@FUZZ
@given(data=yaml_text)
def test_run_config_file(tmp_path, capsys, data):
    """A config that parses goes on to the store, which is missing: one line either way."""
    config = tmp_path / "c.yaml"
    config.write_bytes(data)
    run_cli(capsys, ["run", "--store", tmp_path / "no-store", "--out", tmp_path / "r",
                     "--mode", "weak", "--config", config, "--quiet"])
    assert not (tmp_path / "r" / "config.yaml").exists()


@FUZZ
@given(data=yaml_text)
def test_tune_search_space(tmp_path, capsys, data):
    space = tmp_path / "space.yaml"
    space.write_bytes(data)
    run_cli(capsys, ["tune", "--store", tmp_path / "no-store", "--out", tmp_path / "t",
                     "--space", space, "--plan", "--quiet"])


@FUZZ_INGEST
@given(data=documents("database", "version"))
def test_ingest_annotations(small, tmp_path, capsys, data):
    _, layout = small
    gt = tmp_path / "gt.json"
    gt.write_bytes(data)
    out = tmp_path / "s"
    run_cli(capsys, ["ingest", "--layout", "npy-split", "--root", layout, "--gt", gt,
                     "--out", out, "--quiet", "--overwrite"])


@FUZZ_INGEST
@given(data=st.binary(max_size=80) | st.text(max_size=40).map(str.encode))
def test_ingest_class_list(small, tmp_path, capsys, data):
    _, layout = small
    classes = tmp_path / "classes.txt"
    classes.write_bytes(data)
    run_cli(capsys, ["ingest", "--layout", "npy-split", "--root", layout, "--classes",
                     classes, "--out", tmp_path / "s", "--quiet", "--overwrite"])


def test_the_fuzzed_readers_are_reached(small, tmp_path, capsys):
    """The control: well-formed files pass each reader (exit 0 or a later, named step), so
    the property tests above exercise the parsing, not an early refusal."""
    store, layout = small
    dets = tmp_path / "dets.json"
    dets.write_text('{"results": {}}')
    assert main(["evaluate", "--detections", str(dets), "--gt", str(store), "--subset",
                 "test"]) == 0
    assert main(["evaluate", "--detections", str(dets), "--gt", str(Path(store) / "gt.json"),
                 "--subset", "test"]) == 0
    assert main(["ingest", "--layout", "npy-split", "--root", str(layout), "--out",
                 str(tmp_path / "s"), "--quiet"]) == 0
    capsys.readouterr()
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: 0.001\n")
    assert main(["run", "--store", str(tmp_path / "no-store"), "--out", str(tmp_path / "r"),
                 "--mode", "weak", "--config", str(config), "--quiet"]) == 1
    assert "no feature store at" in capsys.readouterr().err
