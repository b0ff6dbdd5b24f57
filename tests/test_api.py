"""The public Python API: the names, a light import, and docs/api.md's script run as
written (a weak-mode run through Ray on a small store)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import acl_dist

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_import_is_light_and_every_public_name_resolves():
    out = subprocess.run([sys.executable, "-c", "import sys, acl_dist; "
                          "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    for name in acl_dist.__all__:
        value = getattr(acl_dist, name)
        assert name == "__version__" or value.__doc__, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        acl_dist.nope  # noqa: B018
    # the names are verbs, never shadowed by a submodule of the same name once imported
    import importlib

    importlib.import_module("acl_dist.ingest")
    importlib.import_module("acl_dist.plan")

    assert callable(acl_dist.ingest_features) and callable(acl_dist.plan_run)


@pytest.mark.ray
def test_the_documented_script_runs(ray_session, tmp_path, monkeypatch, capsys):
    """docs/api.md's first script, executed as written in a fresh directory: weak mode on
    the store's video labels, detections named by its classes."""
    script = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)[1]
    monkeypatch.chdir(tmp_path)
    exec(compile(script, str(DOC), "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert "plan: 1 worker(s) on CPUs" in out and "test mAP (%) by tIoU:" in out
    assert re.search(r"tIoU\s+0\.30\s+0\.50\s+0\.70\s+avg", out)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["mode"] == "weak" and metrics["label_map"] is None
    assert [r["round"] for r in metrics["rounds"]] == [0] and metrics["average"] > 0
    steps = json.loads((tmp_path / "run" / "state.json").read_text())["steps"]
    assert list(steps) == ["round_0.train", "round_0.attention", "round_0.evaluate",
                           "finish"]
    classes = json.loads((tmp_path / "store" / "manifest.json").read_text())["classes"]
    labels = {d.label for d in acl_dist.load_detections(str(tmp_path / "run" /
                                                            "detections.json"))}
    assert labels and labels <= set(classes)
    assert (tmp_path / "run" / "report.html").exists()
    n_new = acl_dist.FeatureStore.open(str(tmp_path / "new_store")).num_videos("test")
    assert "predicted: " in out and f"of {n_new} videos, labels: classes" in out
    assert "new videos: mAP@0.5 " in out
    new = json.loads((tmp_path / "new_dets.json").read_text())
    assert len(new["results"]) == n_new and "weak" in new["external_data"]["details"]
