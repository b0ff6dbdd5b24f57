"""``acl-dist`` command line. Thin: parse arguments, call the package, print results.

The command forms are a contract: users' scripts rely on them (README "Commands").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

from . import __version__
# light imports only: the parser is built on every call, --help included (the store's
# and the benchmark's modules pull in pyarrow and scipy, ~0.8 s)
from .config import FEATURE_DTYPES, SYNTH_PRESETS, RunConfig, TuneSettings, choices
from .errors import AclDistError, find_cause, printable


class _DefaultsHelp(argparse.HelpFormatter):
    """Every option's help ends with its default unless the text already says it (many
    say it in words: "default: the store's class count"); flags and unset options have
    none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or not action.option_strings or default is None or \
                default is False or default == [] or default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error convention (one line naming the option, exit 2) and
    the defaults in every option's help."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", _DefaultsHelp)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


QUIET_HELP = "only results and errors (no progress lines)"


def _number(kind: type, low: float | None = None, low_open: bool = False,
            high: float | None = None) -> Callable[[str], float]:
    """An argparse type: ``kind`` (int or float) within ``[low, high]`` (``low_open``:
    strictly above ``low``). Zero is a value, never "unset": a count that must be
    positive refuses it here, before any work starts."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if kind is float and value != value:  # NaN
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        if low is not None and (value <= low if low_open else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, "
                                             f"got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
        return value

    return parse


POSITIVE_INT = _number(int, 1)
NON_NEGATIVE_INT = _number(int, 0)
POSITIVE_FLOAT = _number(float, 0, low_open=True)

def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic benchmark (real timelines) as a store",
                       description="Synthetic two-stream features on the real THUMOS14 or "
                                   "ActivityNet-1.2 timelines, written as a feature store.")
    p.add_argument("--preset", choices=list(SYNTH_PRESETS), default="thumos14",
                   help="timelines and class set to imitate (default thumos14)")
    p.add_argument("--out", required=True, help="store directory or s3:// prefix")
    p.add_argument("--classes", type=_number(int, 2), help="keep the N most frequent classes (default: all)")
    p.add_argument("--videos", type=POSITIVE_INT,
                   help="at most N training videos, test scaled alike (default: all)")
    p.add_argument("--dim", type=POSITIVE_INT, default=128,
                   help="feature dim per stream (default 128)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0,
                   help="seed of the features, timelines and labels (default 0)")
    p.add_argument("--difficulty", type=POSITIVE_FLOAT, default=1.0,
                   help="scales scene, nuisance and noise against the action signal")
    p.add_argument("--scenes", type=POSITIVE_INT,
                   help="shared background scenes (default classes//5)")
    p.add_argument("--scene-scale", type=POSITIVE_FLOAT, default=1.0,
                   help="scales the shared scenes alone, on top of --difficulty (default 1)")
    p.add_argument("--phases", type=POSITIVE_INT, default=3,
                   help="phases each action unfolds in; >= 2: the first and last mix in "
                        "prototypes shared between classes (default 3; 1: the v1 benchmark)")
    p.add_argument("--phase-share", type=_number(float, 0.0, high=1.0), default=0.5,
                   help="the shared prototype's share of the first and last phases "
                        "(default 0.5)")
    p.add_argument("--receptive-field", type=POSITIVE_INT, default=5,
                   help="snippets each snippet's features see, odd, I3D-like (default 5; "
                        "1: the v1 benchmark)")
    p.add_argument("--dtype", choices=list(FEATURE_DTYPES), default="float16",
                   help="stored feature dtype (default float16)")
    p.add_argument("--npy-layout", metavar="DIR",
                   help="also write the per-video npy-split layout here, for ingest "
                        "(default: none)")
    p.add_argument("--no-report", action="store_true",
                   help="skip the round-0 vs action-pooled clustering report")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing acl-dist store at --out (nothing else)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import SynthConfig, synthesize

    cfg = SynthConfig(preset=args.preset, classes=args.classes, videos=args.videos, dim=args.dim,
                      difficulty=args.difficulty, scene_scale=args.scene_scale,
                      scenes=args.scenes, phases=args.phases, phase_share=args.phase_share,
                      receptive_field=args.receptive_field, seed=args.seed, dtype=args.dtype)
    summary = synthesize(cfg, args.out, npy_layout=args.npy_layout, overwrite=args.overwrite,
                         quiet=args.quiet, report=not args.no_report)
    subsets = ", ".join(f"{k}: {v['videos']}" for k, v in summary["subsets"].items())
    print(f"wrote {args.out}  ({summary['classes']} classes; videos {subsets}; "
          f"action coverage {100 * summary['action_coverage']:.1f}%)")
    if "round0" in summary:
        print(round0_table(summary["round0"]))
    return 0


def round0_table(r0: dict) -> str:
    rows = [("round 0: uniform (mean) pooling", r0["mean_pool"]),
            ("oracle: pooling on GT action snippets", r0["action_pool"])]
    lines = [f"clustering {r0['videos']} training videos into {r0['clusters']} clusters",
             f"{'descriptor':40s} {'NMI':>6s} {'ARI':>6s} {'purity':>7s}"]
    lines += [f"{name:40s} {m['nmi']:6.3f} {m['ari']:6.3f} {m['purity']:7.3f}" for name, m in rows]
    lines.append(f"gap co-attention has to close: NMI {r0['nmi_gap']:+.3f}")
    return "\n".join(lines)


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    from .ingest import LAYOUTS

    p = sub.add_parser("ingest", help="convert a feature layout into a store",
                       description="Streaming, validated, atomic conversion of precomputed "
                                   "features (FORMATS.md §1) into a feature store.")
    p.add_argument("--layout", required=True, choices=sorted(LAYOUTS),
                   help="how the features are laid out on disk (FORMATS.md §1)")
    p.add_argument("--root", required=True, help="the layout's root directory (or s3://)")
    p.add_argument("--gt", help="annotation JSON (ActivityNet v1.2/v1.3, THUMOS gt.json, "
                                  "BSN; default: none, an unannotated store)")
    p.add_argument("--gt-info", help="BSN video_info_new.csv (subsets for the BSN v1.3 "
                                       "form; default: none)")
    p.add_argument("--classes", dest="classes_file", help="class list file (one per line/CSV; "
                                                        "default: the annotation's classes)")
    p.add_argument("--out", required=True, help="store directory or s3:// prefix")
    p.add_argument("--allow-pickle", action="store_true",
                   help="let numpy unpickle object arrays (wtalc layout; trusted files only)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip bad videos (features, durations, ids) and segments of classes "
                        "missing from the class list, recording them in the manifest; other "
                        "segment problems never stop an ingest or edit gt.json")
    p.add_argument("--dtype", choices=list(FEATURE_DTYPES), default="float16",
                   help="stored feature dtype (default float16)")
    p.add_argument("--fps", type=POSITIVE_FLOAT, default=25.0,
                   help="fps of the feature grid")
    p.add_argument("--snippet-frames", type=POSITIVE_INT, default=16,
                   help="frames per snippet")
    p.add_argument("--feature-stride", type=POSITIVE_INT,
                   help="cmcs-npz: frames between stored vectors, subsampled to a snippet "
                        "(default: the layout's own)")
    p.add_argument("--max-trim", type=NON_NEGATIVE_INT, default=0,
                   help="tolerate RGB/flow length differences up to N snippets (trimmed)")
    p.add_argument("--shard-mb", type=POSITIVE_FLOAT, default=128.0,
                   help="MB of features per shard")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing acl-dist store at --out (nothing else)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    from .ingest import ingest

    s = ingest(args.layout, args.root, args.out, gt=args.gt, gt_info=args.gt_info,
               classes_file=args.classes_file, allow_pickle=args.allow_pickle,
               skip_bad=args.skip_bad, dtype=args.dtype, fps=args.fps,
               snippet_frames=args.snippet_frames, feature_stride=args.feature_stride,
               max_trim=args.max_trim, shard_mb=args.shard_mb, overwrite=args.overwrite,
               quiet=args.quiet)
    subsets = ", ".join(f"{k}: {v}" for k, v in s.subsets.items())
    mb = s.feature_bytes / 2**20
    print(f"wrote {s.store}: {s.videos} videos ({subsets}), {mb:.1f} MB of features in "
          f"{s.seconds:.1f} s")
    if s.skipped_videos:
        print(f"skipped {len(s.skipped_videos)} videos (listed in the manifest), e.g. "
              f"{s.skipped_videos[0][0]}: {s.skipped_videos[0][1]}")
    if s.dropped_segments:
        print(f"left {len(s.dropped_segments)} segments or labels out of the training "
              f"metadata (listed in the manifest; gt.json keeps the segments of listed "
              f"classes as published), e.g. {s.dropped_segments[0][0]}: "
              f"{s.dropped_segments[0][1]}")
    if s.clipped_segments:
        print(f"clipped {s.clipped_segments} segments that ended < 1 snippet past their video")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="detection mAP (official ActivityNet protocol)",
                       description="Detection mAP exactly as ActivityNet's eval_detection.py "
                                   "(all-point interpolated AP, score-ordered greedy matching).")
    p.add_argument("--detections", required=True, help="ActivityNet result JSON")
    p.add_argument("--gt", required=True, help="ground-truth JSON, or a feature store")
    p.add_argument("--subset", required=True, help="subset to evaluate (exact name)")
    p.add_argument("--tiou", help="anet (0.5:0.05:0.95, default), thumos (0.1:0.1:0.7), "
                                  "a comma list, or lo:hi:step")
    p.add_argument("--videos", help="evaluate only these videos: a list file, thumos210 / "
                                    "thumos212 (THUMOS14 test-set conventions) or all "
                                    "(default: as a run scores them: a real THUMOS14 store's "
                                    "test videos on the 210 list, else all)")
    p.add_argument("--ambiguous", help="drop predictions overlapping Ambiguous segments: a "
                                       "THUMOS Ambiguous_test.txt, or 'thumos' (default: none)")
    p.add_argument("--ignore-unknown-labels", action="store_true",
                   help="drop detections whose label has no ground truth in the subset "
                        "(the official code stops with KeyError)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import evaluate as ev
    from .annotations import load_ambiguous, load_video_list
    from .tiou import parse_tiou

    videos, said = None, None
    if args.videos and args.videos != "all":
        if args.videos in ("thumos210", "thumos212"):
            videos = ev.thumos_test_videos(args.videos[-3:])
        else:
            videos = set(load_video_list(args.videos))
    elif not args.videos:
        videos, said = _store_scored_videos(args.gt, args.subset)
    ambiguous = None
    if args.ambiguous:
        ambiguous = ev.thumos_ambiguous() if args.ambiguous == "thumos" else \
            load_ambiguous(args.ambiguous)
    gt = ev.load_ground_truth(args.gt, args.subset, videos=videos)
    result = ev.evaluate_detections(
        gt, ev.load_detections(args.detections), tiou_thresholds=parse_tiou(args.tiou),
        videos=videos, ambiguous=ambiguous,
        unknown_labels="ignore" if args.ignore_unknown_labels else "error")
    if args.json:
        out = result.as_dict()
        print(json.dumps({"tiou": out["tiou"], "map": out["map"], "average": out["average"],
                          "per_class": out["per_class"],
                          "outside_videos": result.outside_videos}))
    else:
        print(f"subset {args.subset}: {len(gt.videos)} videos, "
              f"{sum(gt.count(c) for c in gt.classes)} instances"
              + (f" ({said})" if said else ""))
        print(result.table())
    if result.outside_videos:
        print(f"note: {result.outside_videos} detection(s) on videos not in subset "
              f"{args.subset!r} were counted as false positives (as the official code does)",
              file=sys.stderr)
    return 0


def _store_scored_videos(gt: str, subset: str) -> tuple[set[str] | None, str | None]:
    """``evaluate --gt STORE`` scores the videos a run on that store scores
    (:func:`acl_dist.plan.scored_test_videos` with ``test_videos=auto``); a JSON file
    is scored whole."""
    from .config import RunConfig
    from .plan import scored_test_videos
    from .store import FeatureStore, not_a_store

    if not_a_store(gt) is not None:
        return None, None
    store = FeatureStore.open(gt)
    if subset not in store.subsets:
        return None, None      # load_ground_truth says so, naming the subset
    ids = {m.video_id for m in store.metadata(subset)}
    videos, said = scored_test_videos(RunConfig(test_subset=subset), store, ids)
    return videos, said if videos is not None else None


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the ACL rounds on Ray (unsupervised or weak)",
                       description="Clustering + co-attention localisation rounds on Ray, "
                                   "then detections and metrics in the run directory.")
    p.add_argument("--store", help="feature store (local or s3://; required for a new run)")
    p.add_argument("--out", help="run directory (local or s3://; required for a new run)")
    p.add_argument("--mode", choices=choices(RunConfig, "mode"),
                   help="unsupervised: no labels reach training or clustering; weak: the "
                        "store's video labels (required for a new run)")
    p.add_argument("--num-clusters", "--num-classes", dest="num_classes", type=int,
                   metavar="C", help="C: clusters to form (unsupervised) or the store's "
                                     "classes (weak; --num-classes reads better there); "
                                     "default: the store's class count")
    p.add_argument("--train-subset", help="subset to cluster and train on (default: the "
                                          "store's training subset)")
    p.add_argument("--test-subset", help="subset to localise and score (default: the "
                                         "store's test/validation subset)")
    p.add_argument("--rounds", type=int,
                   help="clustering + training rounds (unsupervised; default 3, the "
                        "paper: 4 on ActivityNet, 5 on THUMOS14)")
    p.add_argument("--config", help="YAML file or preset name (" + ", ".join(_presets()) +
                   "; default: the built-in defaults, docs/config.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set train.lr=3e-4 (repeatable; default: none)")
    p.add_argument("--label-map", choices=choices(RunConfig, "label_map"),
                   help="name detections.json's labels by this cluster->class mapping "
                        "(metrics use it too; default for metrics: hungarian)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN",
                   help="continue a run at its first unfinished step (RUN, default: --out)")
    p.add_argument("--max-failures", type=_number(int, -1), default=None,
                   help="Ray Train worker failures tolerated per round (restored from the "
                        "last checkpoint; -1: no limit; default 3 on a cluster, 0 locally)")
    p.add_argument("--plan", action="store_true",
                   help="print the run's plan (resolved config, workers, GPUs, where each "
                        "step runs) and exit without running or writing anything")
    p.add_argument("--json", action="store_true", help="with --plan: print it as JSON")
    p.add_argument("--wait", action="store_true",
                   help="with --plan: also ask the cluster's autoscaler for the plan's "
                        "resources and wait until they are up")
    p.add_argument("--scale-timeout", type=_number(float, 1), default=None, metavar="S",
                   help="on an autoscaling cluster, how long to wait for the plan's nodes "
                        "before failing (default 1200)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=cmd_run)


def _presets() -> list[str]:
    from .config import preset_names

    return preset_names()


def cmd_run(args: argparse.Namespace) -> int:
    # torch first: loaded late, after Ray, pyarrow and scikit-learn, its bundled MKL failed to
    # load in a `ray job submit` driver ("Intel oneMKL FATAL ERROR: Cannot load
    # libtorch_cpu.so").
    import torch  # noqa: F401

    from .config import load_config
    from .errors import ConfigError
    from .pipeline import run_acl

    out = args.resume if isinstance(args.resume, str) else args.out
    if not out:
        raise ConfigError("--out is required (or --resume RUN)")
    store = args.store
    if args.resume:
        # given means not None (and not an empty --set list): 0 is a value, and a
        # changed one, never "not given"
        changes = [flag for flag, value in (
            ("--config", args.config), ("--set", args.overrides), ("--mode", args.mode),
            ("--num-classes", args.num_classes), ("--train-subset", args.train_subset),
            ("--test-subset", args.test_subset), ("--rounds", args.rounds),
            ("--label-map", args.label_map)) if value is not None and value != []]
        if changes:
            raise ConfigError(f"--resume continues the run as it was configured; "
                              f"{', '.join(changes)} would change it (start a new run with "
                              "another --out instead)")
        cfg = None
    else:
        if not store or not args.mode:
            raise ConfigError("--store and --mode are required for a new run")
        cfg = load_config(args.config, args.overrides, mode=args.mode,
                          num_classes=args.num_classes, train_subset=args.train_subset,
                          test_subset=args.test_subset, rounds=args.rounds,
                          label_map=args.label_map)
    if args.plan:
        return _print_plan(store, out, cfg, args)
    if args.json or args.wait:
        raise ConfigError("--json and --wait go with --plan")
    metrics = run_acl(store, out, cfg, resume=bool(args.resume), quiet=args.quiet,
                      label_map_given=args.label_map is not None,
                      max_failures=args.max_failures, scale_timeout_s=args.scale_timeout)
    print(results_table(metrics))
    print(f"\nrun directory: {out}  (detections.json, metrics.json)")
    return 0


def _print_plan(store: str | None, out: str, cfg: Any, args: argparse.Namespace) -> int:
    """``run --plan``: the plan of a new run (or of ``--resume``'s run on this cluster),
    printed; with ``--wait`` the cluster is scaled to it first (the request is then
    withdrawn: the nodes stay up for the autoscaler's idle timeout). Writes nothing, and
    starts no local Ray instance (:func:`acl_dist.ray_start.planning_capacity`)."""
    from . import ray_start, resources
    from .pipeline import load_run_config, plan_new_run
    from .plan import describe_plan, run_plan

    quiet = args.quiet or args.json
    if cfg is None:
        store, cfg, _ = load_run_config(out, store)
        plan = run_plan(cfg, ray_start.planning_capacity(quiet))
    else:
        _, _, plan = plan_new_run(store, cfg, quiet)
    if args.wait and resources.on_a_cluster():
        with ray_start.capacity_held(plan["request"],
                                     args.scale_timeout or resources.SCALE_TIMEOUT_S, quiet):
            plan["scaled_to"] = ray_start.cluster_capacity(quiet).to_dict()
    print(json.dumps(plan, indent=1) if args.json else "\n".join(describe_plan(plan)))
    return 0


def results_table(metrics: dict) -> str:
    """The run's result as text: mAP per tIoU, then clustering and time per round."""
    lines = []
    if metrics.get("map"):
        head = " ".join(f"{t:>6.2f}" for t in metrics["tiou"])
        vals = " ".join(f"{m:6.2f}" for m in metrics["map"])
        mapping = f", clusters mapped by {metrics['label_map']}" if metrics.get("label_map") \
            else ""
        lines += [f"test mAP (%) on {metrics['test_subset']} ({metrics['mode']}{mapping})",
                  f"tIoU  {head}    avg", f"mAP   {vals} {metrics['average']:6.2f}", ""]
    lines.append(f"{'round':>5s} {'NMI':>6s} {'ARI':>6s} {'purity':>7s} {'test avg':>9s} "
                 f"{'seconds':>8s}")
    for r in metrics["rounds"]:
        def f(key: str, width: int) -> str:
            v = r.get(key)
            return f"{v:{width}.3f}" if isinstance(v, float) else f"{'-':>{width}s}"
        avg = r.get("test_average")
        lines.append(f"{r['round']:>5d} {f('nmi', 6)} {f('ari', 6)} {f('purity', 7)} "
                     f"{(f'{avg:9.2f}' if avg is not None else '        -')} "
                     f"{sum(r['seconds'].values()):8.1f}")
    lines.append(f"total {metrics['seconds_total']:.0f} s")
    return "\n".join(lines)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    from .detect import CLUSTERS

    p = sub.add_parser("predict", help="a finished run's final model over a store's videos",
                       description="Detections of a finished run's final model on the videos "
                                   "of any store with the model's feature streams (videos the "
                                   "run never saw), with the run's localisation settings, as "
                                   "ActivityNet result JSON. Score them with acl-dist evaluate "
                                   "when the store has annotations.")
    p.add_argument("--run", required=True, help="a finished run directory (local or s3://)")
    p.add_argument("--store", required=True, help="feature store of the videos (local or s3://)")
    p.add_argument("--subset", dest="subsets", action="append", metavar="S",
                   help="subset to predict (repeatable; default: every subset of the store)")
    p.add_argument("--out", required=True, help="detections JSON to write (local or s3://)")
    p.add_argument("--label-map", choices=[*choices(RunConfig, "label_map"), CLUSTERS],
                   help="name an unsupervised run's detections by classes through this "
                        "cluster->class mapping of the run, or by its clusters (default: the "
                        "run's label_map when it has a mapping, else clusters; a weak run's "
                        "are its classes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    import torch  # noqa: F401  (before Ray and pyarrow: see cmd_run)

    from .detect import predict

    s = predict(args.run, args.store, args.out, args.subsets, args.label_map,
                overwrite=args.overwrite, quiet=args.quiet)
    print(f"{s['detections']} detections of {s['videos']} videos ({s['labels']}) -> {s['out']}")
    print(f"score them: acl-dist evaluate --detections {s['out']} --gt {args.store} "
          f"--subset {s['subsets'][0]}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic THUMOS-like benchmark + unsupervised ACL, "
                                    "end to end on a local Ray instance",
                       description="Builds the default synthetic THUMOS-like benchmark, runs "
                                   "3 rounds of unsupervised ACL on it with the 'demo' preset "
                                   "(a few minutes on 2 CPU cores) and prints the results.")
    p.add_argument("--out", default="acl-dist-demo", help="directory for the store and run")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the store and run of an earlier demo in --out (nothing "
                        "else)")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import os
    import time

    from . import fsutil, locks
    from .artifacts import RunDir
    from .config import load_config
    from .pipeline import run_acl
    from .store import not_own_store
    from .synth import SynthConfig, synthesize

    started = time.perf_counter()
    store = os.path.join(args.out, "store")
    run = os.path.join(args.out, "run")
    with locks.exclusive(run, "demo", args.quiet):
        # the rule of every command that replaces a directory: only what acl-dist wrote,
        # only with --overwrite; both are checked before the first is replaced
        fsutil.check_output_dir(store, args.overwrite, not_own_store)
        replacing_run = fsutil.check_output_dir(run, args.overwrite, RunDir.not_a_run)
        print(f"[1/2] synthetic THUMOS-like benchmark -> {store}", flush=True)
        summary = synthesize(SynthConfig(), store, overwrite=args.overwrite, quiet=args.quiet)
        print(round0_table(summary["round0"]), flush=True)
        print(f"\n[2/2] unsupervised ACL, 3 rounds (preset 'demo') -> {run}", flush=True)
        if replacing_run:
            fsutil.remove_tree(run)
        cfg = load_config("demo", mode="unsupervised")
        metrics = run_acl(store, run, cfg, quiet=args.quiet)
    print()
    print(results_table(metrics))
    from .report import build_report

    report = build_report(run)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; run directory: {run}")
    print(f"report: {os.path.abspath(report)}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write RUN/report.html (self-contained) and its PNGs",
                       description="A report a person can open: mAP table, clustering per "
                                   "round, cluster x class confusion, per-cluster purity, and "
                                   "time-aligned strips of sampled test videos.")
    p.add_argument("run", help="run directory (local or s3://)")
    p.add_argument("--videos", type=NON_NEGATIVE_INT, default=6,
                   help="test videos to draw (default 6)")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="which videos are sampled")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    print(build_report(args.run, sample=args.videos, seed=args.seed))
    return 0


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="Ray Tune search over Z, K and the loss weights",
                       description="Each trial is a multi-round ACL run scored on a validation "
                                   "split (never the test subset); ASHA stops weak trials "
                                   "between rounds. Writes DIR/trials.csv, DIR/summary.json, "
                                   "DIR/best_config.yaml (for `acl-dist run --config`) and "
                                   "DIR/report.html.")
    p.add_argument("--store", help="feature store (local or s3://; required for a new search)")
    p.add_argument("--out", help="experiment directory (local or s3://; required for a new "
                                  "search)")
    p.add_argument("--mode", choices=choices(RunConfig, "mode"), default="unsupervised",
                   help="mode of every trial (default unsupervised; weak tunes with the "
                        "store's labels)")
    p.add_argument("--num-clusters", "--num-classes", dest="num_classes", type=int,
                   metavar="C", help="C: clusters (unsupervised) or classes (weak); default: "
                                     "the store's class count")
    p.add_argument("--rounds", type=int,
                   help="rounds per trial, ASHA's max_t (default: the base config's)")
    p.add_argument("--config", help="base YAML file or preset name (" + ", ".join(_presets())
                   + "; default: the built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override of the base config (repeatable; default: none)")
    p.add_argument("--space", help="search space YAML (default: Z, K, lambda_sep, lambda_trip; "
                                   "see acl_dist/configs/search/default.yaml)")
    p.add_argument("--search", choices=choices(TuneSettings, "search"),
                   default="random", help="searcher (default random; optuna and hyperopt "
                                          "need their packages)")
    p.add_argument("--num-samples", type=int, default=8,
                   help="trials (with --search grid: repeats of the grid)")
    p.add_argument("--objective", choices=choices(TuneSettings, "objective"),
                   default="val_map", help="val_map: validation mAP; silhouette / stability: "
                                           "label-free (default val_map)")
    p.add_argument("--max-concurrent", type=int,
                   help="trials at a time (default and upper bound: what the cluster holds)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="training videos held out for validation when the store has no "
                        "validation subset (default 0.2)")
    p.add_argument("--grace-period", type=int, default=1, help="rounds before ASHA may stop")
    p.add_argument("--reduction-factor", type=int, default=2,
                   help="ASHA keeps 1 in this many trials at each rung (default 2)")
    p.add_argument("--seed", type=int, default=0, help="searcher seed")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="DIR",
                   help="continue an interrupted search (Tuner.restore; DIR, default: "
                        "--out)")
    p.add_argument("--plan", action="store_true",
                   help="print the search's plan (resolved base config, trials at a time, "
                        "each trial's workers and device, label use) and exit without "
                        "starting a trial or writing anything")
    p.add_argument("--json", action="store_true", help="with --plan: print it as JSON")
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    import torch  # noqa: F401  (first, as in cmd_run)

    from .config import load_config
    from .errors import ConfigError
    from .tune import run_tune
    from .tune_results import trials_table
    from .tune_space import load_space

    out = args.resume if isinstance(args.resume, str) else args.out
    if not out:
        raise ConfigError("--out is required (or --resume DIR)")
    if args.json and not args.plan:
        raise ConfigError("--json goes with --plan")
    if args.resume:
        if args.plan:
            raise ConfigError("--plan shows a new search; a resumed one keeps its plan "
                              f"({out}/tune.json)")
        summary = run_tune(args.store, out, None, None, None, resume=True, quiet=args.quiet)
    else:
        if not args.store:
            raise ConfigError("--store is required for a new search")
        cfg = load_config(args.config, args.overrides, mode=args.mode,
                          num_classes=args.num_classes, rounds=args.rounds)
        settings = TuneSettings(search=args.search, num_samples=args.num_samples,
                                objective=args.objective, max_concurrent=args.max_concurrent,
                                grace_period=args.grace_period,
                                reduction_factor=args.reduction_factor,
                                val_fraction=args.val_fraction, seed=args.seed)
        if args.plan:
            from .tune import describe_tune_plan, plan_tune

            meta = plan_tune(args.store, out, cfg, load_space(args.space, cfg.mode), settings,
                             quiet=args.quiet or args.json)
            print(json.dumps(meta, indent=1) if args.json else
                  "\n".join(describe_tune_plan(meta)))
            return 0
        summary = run_tune(args.store, out, cfg, load_space(args.space, cfg.mode), settings,
                           quiet=args.quiet)
    print(trials_table(summary))
    if summary["interrupted"]:
        print(f"\nexperiment directory: {out}  (trials.csv, summary.json, report.html; "
              f"continue it with: acl-dist tune --resume {out})")
        return 130
    if summary["best"] is None:
        raise AclDistError(f"no trial reported a result (see {out}/trials.csv for their "
                           "errors); no best_config.yaml was written")
    print(f"\n{summary['label_use']}")
    print(f"experiment directory: {out}  (trials.csv, summary.json, best_config.yaml, "
          "report.html)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="acl-dist",
        description="Unsupervised temporal action localisation (ACL, CVPR 2020) on Ray.")
    parser.add_argument("--version", action="version", version=f"acl-dist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,synth,ingest,run,predict,tune,"
                                                        "evaluate,report}")
    sub.required = True
    _add_demo(sub)
    _add_synth(sub)
    _add_ingest(sub)
    _add_run(sub)
    _add_predict(sub)
    _add_tune(sub)
    _add_evaluate(sub)
    _add_report(sub)
    return parser


#: Commands that run Ray: their stderr goes through :mod:`acl_dist.console`'s filter, and
#: a local instance they start is shut down inside it.
RAY_COMMANDS = ("demo", "run", "predict", "tune")


def _run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    if args.command not in RAY_COMMANDS:
        return int(func(args) or 0)
    from .console import filtered_output

    # Ray's log deduplication folds our per-step lines from workers into "[repeated Nx
    # across cluster]" (read by Ray when it is first imported: the CLI has not yet)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    with filtered_output():
        ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
        try:
            return int(func(args) or 0)
        finally:
            ray = sys.modules.get("ray")
            if not ray_before and ray is not None and ray.is_initialized():
                ray.shutdown()    # inside the filter: its chatter is filtered too


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's cancel, ``kill``, a job stop) raised where the program is,
    as Ctrl-C is: the same cleanup runs (temporary data removed, locks released), and the
    exit status is 143, the shell's for a SIGTERM."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    import signal
    import threading

    from . import locks

    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    locks.command_name = args.command
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _run_command(func, args)
    except KeyboardInterrupt as stop:
        how = "terminated" if isinstance(stop, Terminated) else "interrupted"
        print(f"acl-dist {args.command}: {how}{_resume_hint(args)}", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    except Exception as err:
        line = _error_line(err)
        if line is None:   # not a bad input or a fault: a bug, keep its traceback
            raise
        print(f"acl-dist {args.command}: error: {printable(line)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


#: Where Ray Data's retry advice starts in an error it re-raises (ray.data._internal.util).
RAY_DATA_RETRY_SUFFIX = "\nFailed to "


def _error_line(err: BaseException) -> str | None:
    """The one line an ordinary failure gets: our errors (bad input, a store, a run file)
    and OSErrors (a full or read-only disk, a path through a file), also when they arrive
    wrapped by Ray from a task, actor or training worker (whose text is a remote
    traceback). None for anything else."""
    if not isinstance(err, (AclDistError, OSError)) and \
            not type(err).__module__.startswith("ray"):
        return None
    cause = getattr(err, "cause", None)   # a Ray task error carries the remote error
    found = find_cause(cause if isinstance(cause, BaseException) else err,
                       (AclDistError, OSError))
    if isinstance(found, AclDistError):
        # Ray Data appends its retry advice to an error's text after a newline ("Failed to
        # apply UDF transform after 1/1 attempts ..."): not the problem, and not one line
        text = str(found).split(RAY_DATA_RETRY_SUFFIX)[0]
        return text.split("\n")[0] if "Traceback" in text else text
    if isinstance(found, OSError):
        where = f"{found.filename}: " if getattr(found, "filename", None) else ""
        return f"{where}{found.strerror or found}"
    return None


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue an interrupted command, when it can be continued."""
    if args.command in ("run", "tune"):
        out = args.resume if isinstance(args.resume, str) else args.out
        if out:
            return f"; continue it with: acl-dist {args.command} --resume {out}"
    if args.command in ("ingest", "synth"):
        return f"; nothing was written to {args.out}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
