"""The command-line contract (DESIGN.md "Contracts")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from acl_dist.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_all_commands():
    exe = Path(sys.executable).with_name("acl-dist")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("demo", "synth", "ingest", "run", "tune", "evaluate", "report"):
        assert f"    {cmd} " in out or f"    {cmd}\n" in out, cmd


def test_synth_then_evaluate(tmp_path, capsys):
    store = str(tmp_path / "store")
    code, out, _ = run_cli(capsys, "synth", "--out", store, "--classes", "3", "--videos", "9",
                           "--dim", "8", "--seed", "1")
    assert code == 0 and "wrote" in out and "round 0: uniform (mean) pooling" in out
    gt = json.loads((tmp_path / "store" / "gt.json").read_text())
    # Detections: every test GT segment once, plus a shifted duplicate with a lower score.
    results = {}
    for vid, e in gt["database"].items():
        if e["subset"] != "test":
            continue
        results[vid] = []
        for a in e["annotations"]:
            s, t = a["segment"]
            results[vid].append({"label": a["label"], "score": 0.9, "segment": [s, t]})
            results[vid].append({"label": a["label"], "score": 0.1,
                                 "segment": [s + (t - s) / 2, t + (t - s) / 2]})
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps({"version": "x", "external_data": {}, "results": results}))
    code, out, _ = run_cli(capsys, "evaluate", "--detections", str(dets), "--gt", store,
                           "--subset", "test", "--tiou", "thumos", "--json")
    assert code == 0
    res = json.loads(out)
    assert set(res) >= {"tiou", "map", "average"}
    assert res["tiou"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    # All GT found first (precision 1 up to recall 1) -> 100 at every threshold.
    assert res["map"] == pytest.approx([100.0] * 7) and res["average"] == pytest.approx(100.0)
    code, out, _ = run_cli(capsys, "evaluate", "--detections", str(dets), "--gt",
                           str(tmp_path / "store" / "gt.json"), "--subset", "test")
    assert code == 0 and "mAP%" in out and "0.50" in out


def test_errors_are_one_line_naming_the_problem(tmp_path, capsys):
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps({"results": {"vid_9": [{"label": "x", "segment": [0, 1]}]}}))
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"database": {"vid_9": {"subset": "test", "annotations": [
        {"label": "x", "segment": [0, 1]}]}}}))
    code, _, err = run_cli(capsys, "evaluate", "--detections", str(dets), "--gt", str(gt),
                           "--subset", "test")
    assert code == 1 and "vid_9: bad detection" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "evaluate", "--detections", str(tmp_path / "nope.json"),
                           "--gt", str(gt), "--subset", "test")
    assert code == 1 and "nope.json: no such file" in err
    code, _, err = run_cli(capsys, "ingest", "--layout", "npy-split", "--root",
                           str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert code == 1 and "no such directory" in err


def test_every_option_of_every_command_says_what_it_does():
    import argparse

    from acl_dist.cli import build_parser

    sub = next(a for a in build_parser()._actions
               if isinstance(a, argparse._SubParsersAction))
    silent = {name: [a.option_strings[0] for a in p._actions
                     if not a.help and not isinstance(a, argparse._HelpAction)]
              for name, p in sub.choices.items()}
    assert {name: opts for name, opts in silent.items() if opts} == {}
    assert set(sub.choices) >= {"demo", "synth", "ingest", "run", "predict", "tune",
                                "evaluate", "report"}
    # ... and its default: shown by the formatter, or said in words (what "unset" means)
    from acl_dist.cli import _DefaultsHelp

    no_default = {name: [a.option_strings[0] for a in p._actions
                         if a.option_strings and a.nargs != 0 and not a.required
                         and not any(w in _DefaultsHelp(name)._get_help_string(a)
                                     for w in ("default", "required"))]
                  for name, p in sub.choices.items()}
    assert {name: opts for name, opts in no_default.items() if opts} == {}
    text = sub.choices["tune"].format_help()
    assert "trials (with --search grid: repeats of the grid) (default: 8)" in " ".join(
        text.split())
    assert "--num-clusters C, --num-classes C" in sub.choices["run"].format_help()


def test_meter_counts_units_and_prints_lines_off_a_terminal(capsys):
    from acl_dist.progress import Meter

    meter = Meter("  round 1 attention pass", total=10, unit="video", quiet=False,
                  every_s=0.0)
    meter.add(4)
    meter.add(6)
    meter.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("  round 1 attention pass: 4/10 videos, 0 s (")
    assert lines[1].startswith("  round 1 attention pass: 10/10 videos")
    assert lines[2].startswith("  round 1 attention pass: 10 videos in ")
    quiet = Meter("x", quiet=True, every_s=0.0)
    quiet.add(3)
    quiet.close()
    assert capsys.readouterr().err == "" and quiet.count == 3
