"""The results of an ``acl-dist tune`` search: one row per trial (read back from Tune's
results and saved state), the best trial and its config, how well the label-free
objectives track validation mAP (rank correlations), and the files: ``trials.csv``,
``summary.json``, ``best_config.yaml``, ``report.html``."""

from __future__ import annotations

import math
import os
from typing import Any

from . import fsutil
from .config import RunConfig, TuneSettings, choices, to_yaml
from .tune_space import config_with

# metrics of a round report, in table order
REPORTED = ("val_map", "val_map50", "nmi", "silhouette", "stability")
OBJECTIVES = tuple(choices(TuneSettings, "objective"))


def label_use(mode: str, objective: str) -> str:
    """What labels a search used, said in its outputs (best_config.yaml, summary.json, the
    CLI): ``val_map`` ranks trials by validation videos scored against their labels, so the
    chosen config is label-supervised model selection even in unsupervised mode."""
    if mode == "weak":
        return ("labels used: weak mode trains on the store's video labels and selects by "
                "validation mAP")
    if objective == "val_map":
        return ("labels used for selection: trials are ranked by validation mAP, validation "
                "videos scored against their labels (clusters mapped to classes with the "
                "training videos' labels); no label reached training or clustering. For a "
                "label-free choice use --objective silhouette or stability")
    return (f"label-free: no label reached training, clustering or selection (objective "
            f"{objective}); NMI and val_map are reported beside it when the store has labels")


def saved_status(exp_path: str) -> dict[str, str]:
    """Trial id -> status in the experiment's saved state (``TERMINATED``, ``ERROR``, or
    ``PENDING`` for a trial an interrupted search left to ``--resume``). Read back from
    storage: after Ctrl-C the in-memory trials all read ``TERMINATED``."""
    from ray import tune

    return {t.trial_id: t.status for t in tune.ExperimentAnalysis(exp_path).trials}


def expected_trials(settings: dict[str, Any], space: dict[str, dict]) -> int:
    """Trials a search makes: ``num_samples``, times every grid's size for the variant
    generator (random/grid)."""
    n = settings["num_samples"]
    if settings["search"] in ("random", "grid"):
        for dim in space.values():
            (kind, values), = dim.items()
            if kind == "grid" or settings["search"] == "grid":
                n *= len(values)
    return n


def trial_rows(results, meta: dict[str, Any], status: dict[str, str]) -> list[dict[str, Any]]:
    """One row per trial: searched values, rounds run, whether ASHA stopped it, whether it
    is unfinished (an interrupted search), last round's metrics and every round's
    (``history``). ``status``: :func:`saved_status`."""
    rows = []
    for res in results:
        df = res.metrics_dataframe
        history = [] if df is None or df.empty else [
            {k: _num(rec.get(k)) for k in ("round", "objective", *REPORTED, "seconds")}
            for rec in df.to_dict("records")]
        last = history[-1] if history else {}
        trial_id = os.path.basename(res.path.rstrip("/"))
        done = status.get(trial_id) in ("TERMINATED", "ERROR")
        # a trial an interrupted search never started has no config yet (Tune: None)
        config = res.config or {}
        planned = config.get("rounds", meta["base"]["rounds"])  # rounds may be searched
        row = {"trial": trial_id,
               **{k: config.get(k) for k in meta["space"]},
               "rounds": int(last.get("round") or 0),
               "stopped_early": done and res.error is None
               and (last.get("round") or 0) < planned,
               "unfinished": not done,
               "error": str(res.error).splitlines()[0] if res.error else None,
               **{k: last.get(k) for k in ("objective", *REPORTED, "seconds")},
               "history": history}
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def _num(value: Any) -> Any:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return None if math.isnan(f) else f


def rank_correlations(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman correlation of each label-free score with validation mAP across trials:
    per round (``silhouette_round2``: the trials that reached round 2, compared at round 2;
    the comparison that matters when the label-free score replaces validation mAP) and
    over every report of every trial (``silhouette_all``: also rewards tracking progress
    across rounds). Only where at least 3 reports pair up."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {}
    rounds = sorted({int(rec["round"]) for row in rows for rec in row["history"]
                     if rec.get("round") is not None})
    for score in ("silhouette", "stability"):
        groups = {f"{score}_round{r}": [rec for row in rows for rec in row["history"]
                                        if rec.get("round") == r] for r in rounds}
        groups[f"{score}_all"] = [rec for row in rows for rec in row["history"]]
        for name, recs in groups.items():
            pairs = [(rec[score], rec["val_map"]) for rec in recs
                     if rec.get(score) is not None and rec.get("val_map") is not None]
            if len(pairs) >= 3:
                rho, p = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
                out[name] = {"spearman": _num(rho), "p": _num(p), "reports": len(pairs)}
    return out


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best trial by its last objective, among trials that ran every round (ASHA's
    survivors); trials stopped early only when none did."""
    ok = [r for r in rows if r["objective"] is not None and r["error"] is None
          and not r.get("unfinished")]
    full = [r for r in ok if not r["stopped_early"]]
    pool = full or ok
    return max(pool, key=lambda r: r["objective"]) if pool else None


def best_config(meta: dict[str, Any], row: dict[str, Any]) -> RunConfig:
    """The user's config with the best trial's values, and the trial's schedule (steps and
    batch) pinned so the rerun trains as the trial did; resources are sized anew."""
    values = {k: row[k] for k in meta["space"]}
    base = meta["base"]
    values["train.steps"] = base["train"]["steps"]
    values["train.batch_size"] = base["train"]["batch_size"]
    if "rounds" not in values:
        values["rounds"] = base["rounds"]
    return config_with(values, meta["user_config"])


def summarize(results, meta: dict[str, Any], status: dict[str, str]) -> dict[str, Any]:
    rows = trial_rows(results, meta, status)
    best = best_row(rows)
    return {"objective": meta["settings"]["objective"], "search": meta["settings"]["search"],
            "label_use": label_use(meta["base"]["mode"], meta["settings"]["objective"]),
            "space": meta["space"], "validation": meta["validation"],
            "concurrent": meta["concurrent"], "resources": meta["resources"],
            "max_rounds": meta["max_rounds"], "trials": rows,
            "best": best and {k: v for k, v in best.items() if k != "history"},
            "stopped_early": sum(r["stopped_early"] for r in rows),
            "unfinished": [r["trial"] for r in rows if r["unfinished"]],
            "not_started": max(0, expected_trials(meta["settings"], meta["space"]) - len(rows)),
            "errors": sum(r["error"] is not None for r in rows),
            "rank_correlation": rank_correlations(rows)}


def trials_table(summary: dict[str, Any]) -> str:
    """The trials as a text table (also the CLI's output)."""
    keys = list(summary["space"])
    short = {k: k.split(".")[-1] for k in keys}
    cols = ["trial", *keys, "rounds", "objective", "val_map", "val_map50", "nmi",
            "silhouette", "stability", "seconds"]
    head = [short.get(c, c) for c in cols]
    lines = []
    for row in summary["trials"]:
        cells = []
        for c in cols:
            v = row.get(c)
            if c == "rounds":
                v = f"{v}{' (stopped)' if row['stopped_early'] else ''}" + \
                    (" (error)" if row["error"] else "") + \
                    (" (unfinished)" if row.get("unfinished") else "")
            cells.append("-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v)))
        lines.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*head)] + [fmt.format(*r) for r in lines]
    if summary.get("interrupted"):
        out.append(f"interrupted: {len(summary['unfinished'])} trial(s) unfinished, "
                   f"{summary['not_started']} not started; continue with "
                   "acl-dist tune --resume DIR")
    best = summary["best"]
    if best:
        out.append(f"best: {best['trial']} ({summary['objective']} {best['objective']:.3f})")
    for name, rc in summary["rank_correlation"].items():
        score, where = name.split("_", 1)
        where = "every report" if where == "all" else where.replace("round", "round ")
        rho = "undefined" if rc["spearman"] is None else f"{rc['spearman']:+.2f}"
        out.append(f"spearman({score}, val_map) at {where}: {rho} over {rc['reports']} "
                   "reports")
    return "\n".join(out)


def write_results(out: str, summary: dict[str, Any], meta: dict[str, Any]) -> None:
    """``trials.csv``, ``summary.json``, ``best_config.yaml`` and ``report.html`` in ``out``."""
    import csv
    import io

    keys = list(meta["space"])
    buf = io.StringIO()
    writer = csv.writer(buf)
    cols = ["trial", *keys, "rounds", "stopped_early", "objective", *REPORTED, "seconds",
            "error"]
    writer.writerow(cols)
    for row in summary["trials"]:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in cols])
    fsutil.write_bytes_atomic(fsutil.join(out, "trials.csv"), buf.getvalue().encode())
    fsutil.write_json_atomic(fsutil.join(out, "summary.json"), summary)
    best = summary["best"]
    if best is not None:
        cfg = best_config(meta, best)
        header = (f"# acl-dist tune: best of {len(summary['trials'])} trials by "
                  f"{summary['objective']} = {best['objective']:.4f} (trial {best['trial']}, "
                  f"{best['rounds']} rounds)\n# {summary['label_use']}\n# searched: "
                  + ", ".join(f"{k}={best[k]}" for k in keys)
                  + "\n# run it: acl-dist run --store STORE --mode "
                  f"{cfg.mode} --out RUN --config best_config.yaml\n")
        fsutil.write_bytes_atomic(fsutil.join(out, "best_config.yaml"),
                                  (header + to_yaml(cfg)).encode())
    fsutil.write_bytes_atomic(fsutil.join(out, "report.html"),
                              tune_report_html(summary).encode())


def tune_report_html(summary: dict[str, Any]) -> str:
    """A self-contained page: the trials table, and each label-free score against
    validation mAP per trial (how well the label-free objective tracks the labelled one)."""
    import base64
    import html

    from .plots import figure_png, pyplot

    parts = ["<!doctype html><meta charset='utf-8'><title>acl-dist tune</title>",
             "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;"
             "text-align:right}table{border-collapse:collapse}tr:nth-child(even){background:"
             "#f3f3f3}</style>",
             f"<h1>acl-dist tune: {len(summary['trials'])} trials</h1>",
             f"<p>objective <b>{html.escape(summary['objective'])}</b> (higher is better), "
             f"search {html.escape(summary['search'])}, {summary['concurrent']} trial(s) at a "
             f"time ({html.escape(summary['resources'])}); validation: "
             f"{html.escape(str(summary['validation']))}. The test subset was never used.</p>",
             "<pre>" + html.escape(trials_table(summary)) + "</pre>"]
    try:
        plt = pyplot()
    except ImportError:  # a minimal Ray image without matplotlib: the table alone
        return "\n".join(parts + ["<p>(plots need matplotlib)</p>"])
    for score in ("silhouette", "stability"):
        pts = [(rec[score], rec["val_map"], int(rec["round"])) for row in summary["trials"]
               for rec in row["history"]
               if rec.get(score) is not None and rec.get("val_map") is not None]
        if len(pts) < 2:
            continue
        fig, ax = plt.subplots(figsize=(4.8, 3.4))
        for r in sorted({p[2] for p in pts}):
            sel = [(a, b) for a, b, q in pts if q == r]
            ax.scatter(*zip(*sel), label=f"round {r}")
        ax.set_xlabel(f"{score} (label-free)")
        ax.set_ylabel("validation mAP (avg over tIoU)")
        rc = summary["rank_correlation"].get(f"{score}_all")
        if rc and rc["spearman"] is not None:
            ax.set_title(f"Spearman {rc['spearman']:+.2f} over {rc['reports']} reports",
                         fontsize=9)
        ax.legend(fontsize=8)
        png = base64.b64encode(figure_png(fig)).decode()
        parts.append(f"<h2>{score} vs validation mAP, every trial and round</h2>"
                     f"<img src='data:image/png;base64,{png}'>")
    return "\n".join(parts)
