"""Shared fixtures: a tiny synthetic store and a real S3 endpoint (moto server on 127.0.0.1).

Expensive resources are session-scoped: one moto server per test session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("ACL_DIST_QUIET", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 with the standard AWS variables pointing at it.

    Yields the endpoint URL. The bucket ``acl-test`` exists.
    """
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        pytest.fail(f"moto_server not found next to {sys.executable}: install the 'test' extra")
    port = _free_port()
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_REGION": "us-east-1"})
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.2)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("acl-test")
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A small synthetic THUMOS-like store (4 classes, ~24 training videos, dim 16)."""
    from acl_dist.synth import SynthConfig, synthesize

    out = str(tmp_path_factory.mktemp("tiny") / "store")
    summary = synthesize(SynthConfig(classes=4, videos=24, dim=16, seed=3), out, quiet=True)
    return out, summary


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (RAY_NOTES.md §8): 4 logical CPUs
    on this 2-core machine so Ray Data keeps CPUs beside two training workers."""
    from acl_dist.ray_start import init_ray

    import ray

    if os.environ.get("RAY_ADDRESS"):
        pytest.fail("RAY_ADDRESS is set: the tests start their own local Ray instance")
    init_ray(num_cpus=4, quiet=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def unsupervised_run(ray_session, tiny_store, tmp_path_factory):
    """A 2-round unsupervised run on the tiny benchmark with 2 Ray Train workers (CLI, in
    this process's local Ray instance). Session-scoped: the pipeline tests inspect it and
    the two-node job is compared with it."""
    from acl_dist.cli import main

    store, _ = tiny_store
    run = tmp_path_factory.mktemp("unsup") / "run"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["run", "--store", store, "--out", str(run), "--mode", "unsupervised",
                     "--num-classes", "4", "--config", "tiny", "--set", "train.workers=2",
                     "--set", "train.cpus_per_worker=0.5", "--quiet"])
    return run, code, buf.getvalue()


@pytest.fixture
def fake_cuml(monkeypatch):
    """A stand-in ``cuml`` module (cuML cannot be installed without a GPU) whose
    SpectralClustering records its arguments and input: returns that record."""
    import types

    import numpy as np

    calls: dict = {}

    class FakeSpectral:   # the signature of cuML >= 25.10's estimator (what is checked)
        def __init__(self, n_clusters=8, *, n_components=None, random_state=None,
                     n_neighbors=10, n_init=10, eigen_tol="auto",
                     affinity="nearest_neighbors", verbose=False, output_type=None):
            calls["init"] = {"n_clusters": n_clusters, "random_state": random_state,
                             "n_init": n_init, "affinity": affinity}

        def fit_predict(self, affinity):
            calls["affinity"] = affinity
            return np.zeros(affinity.shape[0], dtype=np.int32)

    fake = types.ModuleType("cuml")
    fake.__version__ = "25.10.00"
    fake.cluster = types.SimpleNamespace(SpectralClustering=FakeSpectral)
    monkeypatch.setitem(sys.modules, "cuml", fake)
    monkeypatch.setitem(sys.modules, "cuml.cluster", fake.cluster)
    return calls


#: Fixtures that start or use the session's Ray instance: a test naming one is a Ray test.
RAY_FIXTURES = {"ray_session", "unsupervised_run"}


def pytest_collection_modifyitems(config, items):
    """A test that asks for the session's Ray instance must carry the ``ray`` marker, so
    ``-m "not ray"`` really runs without Ray."""
    unmarked = [item.nodeid for item in items
                if RAY_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("ray") is None]
    if unmarked:
        raise pytest.UsageError("tests using the session's Ray instance without the 'ray' "
                                f"marker: {', '.join(unmarked)}")


class RayStartedByUnmarkedTest(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _ray_only_in_ray_tests(request, monkeypatch):
    """A test without the ``ray`` marker that reaches a Ray start fails, naming itself:
    the marker is what lets the suite be split and Ray kept to one instance per session
    (the guard patches acl-dist's one start function and ``ray.init``)."""
    if request.node.get_closest_marker("ray") is not None:
        yield
        return

    def refuse(*args, **kwargs):
        raise RayStartedByUnmarkedTest(f"{request.node.nodeid} starts Ray but is not marked "
                                       "'ray'")

    from acl_dist import ray_start

    monkeypatch.setattr(ray_start, "init_ray", refuse)
    if "ray" in sys.modules:
        monkeypatch.setattr(sys.modules["ray"], "init", refuse)
    yield
