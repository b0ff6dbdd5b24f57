"""``acl-dist report RUN``: a self-contained HTML report (and its PNGs) of a run directory.

Panels: the mAP table per tIoU (with the cluster -> class mapping that produced it); NMI /
ARI / purity per round; the cluster x class confusion matrix of the training videos after
mapping; per-cluster purity and size; and, for a sample of test videos, time-aligned strips
of ground truth, detections, class-agnostic attention and the CAS of the detected classes.
Images are PNGs written to ``RUN/report_files/`` and embedded in ``RUN/report.html`` as
data URIs, so the page opens from disk with no server and no network.

Every value the page shows from a file (the run's metrics, plan, config, clusters, the
store's classes and video ids, the paths) is HTML-escaped, attributes included
(:func:`esc`): a run directory or store is data, and its text never becomes markup or
script in the page. The files are read through :class:`~acl_dist.artifacts.RunDir`, which
checks each against its schema first.
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import numpy as np

from . import fsutil
from .artifacts import RunDir, decode_localised_row, label_names as run_label_names
from .errors import ArtifactError
from .plots import figure_png, pyplot
from .evaluate import cluster_class_mapping, cluster_name, contingency
from .store import FeatureStore

REPORT = "report.html"
FILES = "report_files"


def esc(value: Any) -> str:
    """``value`` as HTML text, safe in an element and in a quoted attribute (``&``, ``<``,
    ``>``, ``"`` and ``'`` escaped)."""
    return html.escape(str(value), quote=True)


def plot_rounds(rounds: list[dict]) -> bytes | None:
    """NMI / ARI / purity per round (line plot)."""
    rows = [r for r in rounds if "nmi" in r]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    xs = [r["round"] for r in rows]
    for key, style in (("nmi", "o-"), ("ari", "s--"), ("purity", "^:")):
        ax.plot(xs, [r[key] for r in rows], style, label=key.upper() if key != "purity"
                else "purity")
    ax.set_xlabel("round (clustering at the start of the round)")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("clustering of the training videos vs their classes")
    return figure_png(fig)


def plot_confusion(cluster_ids: list[int], truth: list[str],
                   mapping: dict[int, list[tuple[str, float]]]) -> tuple[bytes, list[dict]]:
    """Cluster x class counts, clusters ordered by their mapped class; and per-cluster
    stats (size, purity, mapped class)."""
    m, clusters, classes = contingency(cluster_ids, truth)
    mapped = {k: (v[0][0] if v else None) for k, v in mapping.items()}
    order = sorted(range(len(clusters)), key=lambda i: (
        classes.index(mapped[clusters[i]]) if mapped.get(clusters[i]) in classes else 1e9,
        -m[i].max()))
    m = m[order]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(0.32 * len(classes) + 2.5, 0.26 * len(clusters) + 1.5))
    ax.imshow(m, aspect="auto", cmap="Blues")
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(clusters)))
    ax.set_yticklabels([f"{cluster_name(clusters[i])} -> {mapped.get(clusters[i]) or '-'}"
                        for i in order], fontsize=7)
    for (r, c), v in np.ndenumerate(m):
        if v:
            ax.text(c, r, str(v), ha="center", va="center", fontsize=6,
                    color="white" if v > m.max() / 2 else "black")
    ax.set_xlabel("class (training labels)")
    ax.set_title("training videos per cluster and class")
    stats = [{"cluster": cluster_name(clusters[i]), "size": int(m[j].sum()),
              "purity": float(m[j].max() / max(m[j].sum(), 1)),
              "majority": classes[int(m[j].argmax())], "mapped": mapped.get(clusters[i])}
             for j, i in enumerate(order)]
    return figure_png(fig), stats


def plot_cluster_stats(stats: list[dict]) -> bytes:
    plt = pyplot()
    fig, ax1 = plt.subplots(figsize=(max(5.0, 0.28 * len(stats) + 1), 3.0))
    xs = np.arange(len(stats))
    ax1.bar(xs, [s["size"] for s in stats], color="#9ecae1", label="size")
    ax1.set_ylabel("videos")
    ax2 = ax1.twinx()
    ax2.plot(xs, [s["purity"] for s in stats], "o", color="#d6604d", label="purity")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("purity")
    ax1.set_xticks(xs)
    ax1.set_xticklabels([s["cluster"] for s in stats], rotation=90, fontsize=7)
    ax1.set_title("cluster sizes (bars) and purity (dots)")
    return figure_png(fig)


def plot_video_strip(video: str, duration: float, seconds_per_snippet: float,
                     gt: list[tuple[str, float, float]], dets: list[tuple[str, float, float, float]],
                     attention: dict[str, np.ndarray], cas: np.ndarray,
                     cas_labels: list[str]) -> bytes:
    """Ground truth, detections, class-agnostic attention and CAS over time for one video."""
    plt = pyplot()
    fig, axes = plt.subplots(4, 1, figsize=(9, 4.6), sharex=True,
                             gridspec_kw={"height_ratios": [0.6, 1.0, 1.0, 1.3]})
    t_axis = (np.arange(cas.shape[0]) + 0.5) * seconds_per_snippet
    labels = sorted({g[0] for g in gt} | {d[0] for d in dets})
    colours = {lb: plt.cm.tab10(i % 10) for i, lb in enumerate(labels)}
    for label, s, e in gt:
        axes[0].axvspan(s, e, color=colours[label], alpha=0.8)
    axes[0].set_yticks([])
    axes[0].set_ylabel("GT", rotation=0, ha="right", va="center")
    top = sorted(dets, key=lambda d: -d[1])[:12]
    for row, (label, score, s, e) in enumerate(top):
        axes[1].plot([s, e], [row, row], lw=4, color=colours[label], solid_capstyle="butt")
        axes[1].text(e, row, f" {score:.2f}", va="center", fontsize=6)
    axes[1].set_ylim(len(top) - 0.5, -0.5)
    axes[1].set_yticks([])
    axes[1].set_ylabel("detections\n(top 12)", rotation=0, ha="right", va="center")
    for name, att in attention.items():
        axes[2].plot(t_axis[: len(att)], att * len(att), lw=1, label=name)
    axes[2].set_ylabel("attention S\n(x T)", rotation=0, ha="right", va="center")
    axes[2].legend(fontsize=6, loc="upper right")
    for j, label in enumerate(cas_labels):
        cls = label.split(" -> ")[-1]
        axes[3].plot(t_axis, cas[:, j], lw=1, color=colours.get(cls, "grey"), label=label)
    axes[3].set_ylabel("CAS", rotation=0, ha="right", va="center")
    if cas_labels:
        axes[3].legend(fontsize=6, loc="upper right")
    axes[3].set_xlabel("seconds")
    axes[3].set_xlim(0, duration)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[lb]) for lb in labels]
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.99),
               ncol=min(6, max(1, len(labels))), fontsize=7, frameon=False)
    fig.suptitle(video, y=1.06, fontsize=9)
    return figure_png(fig)


Section = tuple[str, dict[str, bytes]]   # HTML, and the PNGs it names


def _map_section(metrics: dict[str, Any]) -> Section:
    """The mAP table per tIoU (and per class), with the mapping that produced it."""
    if not metrics.get("map"):
        return "", {}
    head = "".join(f"<th>{t:.2f}</th>" for t in metrics["tiou"])
    vals = "".join(f"<td>{m:.2f}</td>" for m in metrics["map"])
    mapping = metrics.get("label_map")
    how = (f"clusters mapped to classes by <b>{esc(mapping)}</b> (training labels only)"
           if mapping else "class labels (weak mode)")
    per_class = "".join(
        f"<tr><td>{esc(c)}</td>" + "".join(f"<td>{v:.1f}</td>" for v in aps) +
        "</tr>" for c, aps in sorted(metrics.get("per_class", {}).items()))
    scored = (f" Scored against <code>{esc(metrics['annotation'])}</code> on "
              f"{esc(metrics['test_videos'])}." if metrics.get("annotation") and
              metrics.get("test_videos") else "")
    return (f"<h2>Detection mAP on <code>{esc(metrics.get('test_subset', '?'))}</code></h2>"
            f"<p>{esc(metrics.get('mode', '?'))} run; {how}.{scored}</p>"
            f"<table class='num'><tr><th>tIoU</th>{head}<th>avg</th></tr>"
            f"<tr><th>mAP %</th>{vals}<td><b>{metrics['average']:.2f}</b></td></tr></table>"
            f"<details><summary>AP per class</summary><table class='num'><tr><th>class</th>"
            f"{head}</tr>{per_class}</table></details>"), {}


def _rounds_section(metrics: dict[str, Any]) -> Section:
    """Clustering quality, test mAP and seconds per round (table and plot)."""
    def cell(value: Any, fmt: str) -> str:
        return f"<td>{value:{fmt}}</td>" if isinstance(value, (int, float)) else "<td>-</td>"

    rows = "".join(
        f"<tr><td>{esc(r['round'])}</td>{cell(r.get('nmi'), '.3f')}{cell(r.get('ari'), '.3f')}"
        f"{cell(r.get('purity'), '.3f')}{cell(r.get('test_average'), '.2f')}"
        f"{cell(sum(r['seconds'].values()), '.1f')}</tr>" for r in metrics["rounds"])
    png = plot_rounds(metrics["rounds"])
    return ("<h2>Rounds</h2><table class='num'><tr><th>round</th><th>NMI</th><th>ARI</th>"
            f"<th>purity</th><th>test avg mAP</th><th>seconds</th></tr>{rows}</table>"
            + ("<img src='rounds.png' alt='clustering per round'>" if png else ""),
            {"rounds.png": png} if png else {})


def _plan_section(rundir: RunDir) -> Section:
    """Where the run ran: its plan (``plan.json``) as printed at its start, and the
    resolved config it ran with."""
    from .config import to_yaml
    from .plan import describe_plan

    plan = rundir.read_plan()
    if plan is None:            # runs from before plan.json
        return "", {}
    lines = "\n".join(describe_plan(plan))
    return (f"<h2>Plan</h2><pre>{esc(lines)}</pre><details><summary>resolved "
            f"config</summary><pre>{esc(to_yaml(rundir.read_config()))}</pre>"
            "</details>"), {}


def _clusters_section(cfg: Any, store: FeatureStore, clusters: dict[str, Any] | None,
                      r: int) -> Section:
    """Round ``r``'s cluster x class confusion and per-cluster purity (unsupervised runs
    whose training videos have labels)."""
    if clusters is None:
        return "", {}
    meta = [m for m in store.metadata(cfg.train_subset) if m.video_id in clusters["labels"]]
    truth = [m.primary_label for m in meta]
    if not all(t is not None for t in truth):
        return "", {}
    ids = [clusters["labels"][m.video_id] for m in meta]
    conf, stats = plot_confusion(ids, truth, cluster_class_mapping(ids, truth, cfg.label_map))
    table = "".join(f"<tr><td>{esc(s['cluster'])}</td><td>{s['size']}</td>"
                    f"<td>{s['purity']:.2f}</td><td>{esc(s['majority'])}</td>"
                    f"<td>{esc(s['mapped'] or '-')}</td></tr>" for s in stats)
    return (f"<h2>Clusters of round {r}</h2><p>Rows are clusters labelled with the class "
            f"they map to ({esc(cfg.label_map)}); columns the training videos' classes.</p>"
            "<img src='confusion.png' alt='cluster x class confusion'>"
            "<img src='clusters.png' alt='cluster sizes and purity'>"
            "<details><summary>per-cluster table</summary><table class='num'><tr>"
            "<th>cluster</th><th>videos</th><th>purity</th><th>majority class</th>"
            f"<th>mapped to</th></tr>{table}</table></details>",
            {"confusion.png": conf, "clusters.png": plot_cluster_stats(stats)})


def _strips_section(rundir: RunDir, cfg: Any, store: FeatureStore,
                    clusters: dict[str, Any] | None, sample: int, seed: int) -> Section:
    """Time-aligned strips of ``sample`` annotated test videos (drawn with ``seed``)."""
    gt = store.ground_truth()["database"]
    test_meta = {m.video_id: m for m in store.metadata(cfg.test_subset)}
    dets = (rundir.read_detections(cfg.label_map) or {"results": {}})["results"]
    annotated = sorted(v for v in test_meta if gt.get(v, {}).get("annotations"))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(annotated, size=min(sample, len(annotated)), replace=False)
                    ) if annotated else []
    outputs = rundir.read_output_rows(cfg.rounds - 1, set(chosen))
    names = run_label_names(cfg.mode, cfg.num_classes, store.classes)
    if clusters is not None:
        maps = clusters.get("mapping", {}).get(cfg.label_map, {})
        names = [f"{n} -> {maps[n][0][0]}" if maps.get(n) else n for n in names]
    strips, images = [], {}
    for vid in chosen:
        m, row = test_meta[vid], outputs.get(vid)
        if row is None or not row["cas"]:
            continue
        cas, att, shown = _decoded_row(rundir.outputs_path(cfg.rounds - 1), vid, row,
                                       len(names))
        v_dets = [(d["label"], d["score"], d["segment"][0], d["segment"][1])
                  for d in dets.get(vid, [])]
        g = [(a["label"], float(a["segment"][0]), float(a["segment"][1]))
             for a in gt[vid]["annotations"]]
        name = f"video_{len(strips)}.png"
        images[name] = plot_video_strip(vid, m.duration, m.grid.seconds_per_snippet, g, v_dets,
                                        att, cas[:, shown], [names[i] for i in shown])
        strips.append(f"<figure><img src='{name}' alt='{esc(vid)}'>"
                      f"<figcaption>{esc(vid)}</figcaption></figure>")
    if not strips:
        return "", {}
    return (f"<h2>Test videos ({len(strips)} sampled)</h2><p>Top to bottom: ground "
            "truth; the video's highest-scoring detections (label colour, score); "
            "each stream's class-agnostic attention S (times T, so 1 = uniform); "
            "the fused CAS of the classes (clusters) the model detects most.</p>"
            + "".join(strips), images)


def _decoded_row(path: str, vid: str, row: dict[str, Any], outputs: int
                 ) -> tuple[np.ndarray, dict[str, np.ndarray], list[int]]:
    """A localised row of ``path`` (round outputs) as (CAS, attention, the outputs of its
    first detections); one :class:`ArtifactError` naming the file and the video when
    the row does not decode or names an output the model lacks."""
    try:
        cas, att, _ = decode_localised_row(row)
        shown = sorted({int(x[0]) for x in json.loads(row["detections"])[:5]})
        if cas.shape[1] != outputs or any(not 0 <= i < outputs for i in shown):
            raise ValueError(f"expected {outputs} outputs")
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ArtifactError(path, f"video {vid!r}: not a localised row of the run's model "
                                  f"({type(exc).__name__}: {str(exc)[:80]!r})") from None
    return cas, att, shown


def build_report(run: str, sample: int = 6, seed: int = 0) -> str:
    """Write ``RUN/report.html`` (and ``RUN/report_files/*.png``); returns the HTML path."""
    rundir = RunDir(run)
    metrics = rundir.read_metrics(require=("rounds", "store"))
    cfg = rundir.read_config()
    store = FeatureStore.open(metrics["store"])
    if rundir.has_info():   # the store metrics.json names is the run's (its classes)
        rundir.check_store_classes(metrics["store"], store.classes)
    last = cfg.rounds - 1
    clusters = rundir.read_clusters(last) if cfg.mode == "unsupervised" else None
    parts = [_map_section(metrics), _rounds_section(metrics), _plan_section(rundir),
             _clusters_section(cfg, store, clusters, last),
             _strips_section(rundir, cfg, store, clusters, sample, seed)]
    images = {name: png for _, pngs in parts for name, png in pngs.items()}
    files_dir = fsutil.join(run, FILES)
    for name, data in images.items():
        fsutil.write_bytes_atomic(fsutil.join(files_dir, name), data)
    body = "\n".join(section for section, _ in parts if section)
    for name, data in images.items():
        uri = "data:image/png;base64," + base64.b64encode(data).decode()
        body = body.replace(f"src='{name}'", f"src='{uri}'")
    page = PAGE.format(title=esc(f"acl-dist run {run}"), run=esc(run),
                       store=esc(metrics["store"]), body=body,
                       seconds=metrics.get("seconds_total", 0))
    path = fsutil.join(run, REPORT)
    fsutil.write_bytes_atomic(path, page.encode("utf-8"))
    return path


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222; }}
table.num {{ border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }}
table.num th, table.num td {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
img {{ max-width: 100%; display: block; margin: 0.6em 0; }}
figure {{ margin: 1em 0; }} figcaption {{ font-size: 0.8em; color: #555; }}
code {{ background: #f3f3f3; padding: 0 3px; }}
</style></head>
<body>
<h1>acl-dist run report</h1>
<p>Run <code>{run}</code> on store <code>{store}</code>; {seconds:.0f} s of steps.</p>
{body}
<script>
// Marks the page once every image has decoded (used by the headless-browser test).
window.addEventListener("load", () => {{
  const imgs = Array.from(document.images);
  const ok = imgs.every(i => i.complete && i.naturalWidth > 0);
  document.body.setAttribute("data-images", ok ? "ok:" + imgs.length : "broken");
}});
</script>
</body></html>
"""
