"""What one round's Ray Train start costs: a ``TorchTrainer.fit`` of an empty loop (each
worker reports once), on a local instance started with Ray's defaults vs by acl-dist's
``init_ray``, beside the same number of workers started as plain Ray actors.

A run pays this once per round (one ``TorchTrainer`` per round: the round's clustering and
attention pass sit between trainings, and a trainer's worker group cannot outlive its
``fit``). Each variant needs its own Ray instance (the settings reach Ray's processes at
start-up), so each runs in a child process, one after the other, in this invocation.

    python bench/train_start.py [--workers 2] [--fits 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {"ray-defaults": "ray.init(address='local') with the dashboard, Ray's defaults",
            "acl-dist": "acl_dist.ray_start.init_ray (State API address, 0.5 s health check)"}


def child(variant: str, workers: int, fits: int) -> dict[str, list[float]]:
    """Runs in a child process: ``fits`` trivial fits and ``fits`` plain actor starts."""
    import tempfile

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    os.environ["RAY_TRAIN_V2_ENABLED"] = "1"
    if variant == "acl-dist":
        from acl_dist.ray_start import init_ray

        init_ray(num_cpus=4, quiet=True)
    else:
        ray.init(address="local", num_cpus=4, include_dashboard=True,
                 dashboard_host="127.0.0.1", logging_level="WARNING")

    def loop(config: dict) -> None:
        import ray.train

        ray.train.report({"done": 1})

    @ray.remote(num_cpus=0.5)
    class Plain:
        def ready(self) -> bool:
            import torch  # noqa: F401  (the workers import torch too)

            return True

    out: dict[str, list[float]] = {"fit": [], "actors": []}
    storage = tempfile.mkdtemp(prefix="train-start-")
    for i in range(fits):
        t = time.perf_counter()
        TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=workers,
                                                        resources_per_worker={"CPU": 0.5}),
                     run_config=RunConfig(name=f"fit{i}", storage_path=storage)).fit()
        out["fit"].append(time.perf_counter() - t)
        t = time.perf_counter()
        actors = [Plain.remote() for _ in range(workers)]
        ray.get([a.ready.remote() for a in actors])
        out["actors"].append(time.perf_counter() - t)
        for a in actors:
            ray.kill(a)
    ray.shutdown()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fits", type=int, default=3)
    ap.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.workers, args.fits)), flush=True)
        return
    stale = "/tmp/ray/ray_current_cluster"
    print(f"machine: {os.cpu_count()} CPUs; {stale}: "
          f"{open(stale).read().strip() if os.path.exists(stale) else 'absent'} "
          "(Ray's address discovery prefers it)")
    rows = {}
    for variant in VARIANTS:
        proc = subprocess.run([sys.executable, __file__, "--child", variant, "--workers",
                               str(args.workers), "--fits", str(args.fits)],
                              capture_output=True, text=True, timeout=900)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
        rows[variant] = json.loads(line[0][len("RESULT "):])
    base = statistics.median(rows["ray-defaults"]["fit"])
    print(f"\n{args.workers} workers x 0.5 CPU, {args.fits} fits each (median s)\n")
    print(f"{'variant':14} {'fit':>7} {'vs defaults':>12} {'plain actors':>13}  setting")
    for variant, times in rows.items():
        fit = statistics.median(times["fit"])
        print(f"{variant:14} {fit:7.1f} {fit / base:11.2f}x "
              f"{statistics.median(times['actors']):12.1f}  {VARIANTS[variant]}")


if __name__ == "__main__":
    main()
