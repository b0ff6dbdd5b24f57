"""One method at every worker count: a step on N workers computes the loss and the
gradients of the global batch exactly as one worker does on the same batch.

The multi-worker cases run N local processes in a ``gloo`` group (no Ray) with DDP as
Ray Train wraps the model, each holding an arbitrary disjoint shard of the videos; one
runs through Ray Train itself with fractional CPUs. The control: the old per-worker
batches (each worker sampling Z / N clusters from its own shard), under which L_trip is
0 on every worker at N = 4, Z = 4.
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from acl_dist.collectives import WorkerGroup
from acl_dist.config import load_config
from acl_dist.errors import ConfigError
from acl_dist.global_batch import bucket_rows, split_batch, video_table
from acl_dist.graphed_step import FeatureBank, GraphedStep
from acl_dist.model import StreamModels
from acl_dist.train import GlobalBatchStep, VideoItem, batch_stream, crop_windows

DIMS = {"rgb": 12, "flow": 8}
CLASSES = 5
STEPS = 3
#: The default network and losses, and the paper's (sum reductions, late fusion, kernels
#: 3, the non-local block, draws with replacement, whole videos).
CONFIGS = {"default": ["train.batch_size=16", "train.max_len=24"],
           "paper": ["train.batch_size=16"]}


def _items() -> list[VideoItem]:
    rng = np.random.default_rng(4)
    return [VideoItem(f"v{i:02d}", {s: rng.standard_normal((10 + (7 * i) % 31, d))
                                    .astype(np.float32) for s, d in DIMS.items()},
                      [i % CLASSES]) for i in range(40)]


def _shard(items: list[VideoItem], rank: int, world: int) -> list[VideoItem]:
    """An arbitrary disjoint shard (as Ray Data's split gives: not by id order)."""
    order = np.random.default_rng(world).permutation(len(items))
    return [items[i] for i in order[rank::world]]


def _steps(config: str, items: list[VideoItem], group: WorkerGroup,
           wrap=None, dropout: float | None = None) -> list[dict]:
    """``STEPS`` SGD updates on the global batches; per step the loss terms and every
    parameter's gradient (after DDP's mean)."""
    cfg = load_config(None if config == "default" else config, CONFIGS[config]
                      + ([f"model.dropout={dropout}"] if dropout is not None else []))
    torch.manual_seed(0)
    core = StreamModels(DIMS, CLASSES, cfg.model)
    model = wrap(core) if wrap else core
    optim = torch.optim.SGD(core.parameters(), lr=0.05)
    held = group.exchange([(it.video_id, it.num_snippets, it.labels) for it in items])
    refs = video_table(held)
    step = GlobalBatchStep(model, core, optim, {it.video_id: it for it in items}, group, cfg,
                           CLASSES, DIMS, torch.device("cpu"))
    stream = iter(batch_stream(refs, cfg))
    rng = np.random.default_rng(1)
    out = []
    for i in range(STEPS):
        batch = next(stream)
        starts, lengths = crop_windows(batch.items, cfg.train.max_len, rng)
        torch.manual_seed(100 + i)   # the dropout masks: the same draws on every worker
        loss, terms = step.loss(batch, starts, lengths)
        optim.zero_grad()
        loss.backward()
        out.append({"terms": {k: float(v) for k, v in terms.items()},
                    "grads": {n: p.grad.clone() for n, p in core.named_parameters()},
                    "rows": len(split_batch([r.owner for r in batch.items],
                                            group.world_size).rows[group.rank])})
        optim.step()
    return out


class _DetachedGather(WorkerGroup):
    """The control: a gather that keeps only this worker's own rows' gradients (the
    other workers' rows arrive as constants), as a plain all-gather would."""

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        parts = [torch.empty_like(rows) for _ in range(self.world_size)]
        dist.all_gather(parts, rows.detach().contiguous())
        parts[self.rank] = rows
        return torch.cat(parts)


class _RecordingSGD(torch.optim.SGD):
    """SGD that keeps each update's gradients (the graphed step updates inside)."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def _graphed_steps(items: list[VideoItem], group: WorkerGroup) -> list[dict]:
    """:func:`_steps` through the CUDA-graph step's code (run without capture on the CPU),
    without dropout (a graphed step drops inside its graph, per worker)."""
    cfg = load_config(None, CONFIGS["default"] + ["model.dropout=0"])
    torch.manual_seed(0)
    core = StreamModels(DIMS, CLASSES, cfg.model)
    optim = _RecordingSGD(core.parameters(), lr=0.05)
    graphed = GraphedStep(core, optim, FeatureBank(items, "cpu"), cfg.loss, CLASSES,
                          cfg.train.videos_per_cluster, cfg.train.clusters_per_batch,
                          capture=False, max_len=cfg.train.max_len,
                          group=group if group.world_size > 1 else None)
    refs = video_table(group.exchange([(it.video_id, it.num_snippets, it.labels)
                                       for it in items]))
    step = GlobalBatchStep(core, core, optim, {it.video_id: it for it in items}, group, cfg,
                           CLASSES, DIMS, torch.device("cpu"), graphed)
    stream = iter(batch_stream(refs, cfg))
    rng = np.random.default_rng(1)
    out = []
    for _ in range(STEPS):
        batch = next(stream)
        terms = step.step(batch, *crop_windows(batch.items, cfg.train.max_len, rng))
        out.append({"terms": {k: float(v) for k, v in terms.items()},
                    "grads": dict(zip([n for n, _ in core.named_parameters()],
                                      optim.seen[-1]))})
    return out


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    group = WorkerGroup.current()
    shard = _shard(_items(), rank, world)
    results = {c: _steps(c, shard, group, DistributedDataParallel) for c in CONFIGS}
    results["control"] = _steps("default", shard, _DetachedGather(rank, world),
                                DistributedDataParallel)
    results["graphed"] = _graphed_steps(shard, group)
    torch.save(results, os.path.join(out, f"{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _errors(got: dict, want: dict) -> dict[str, float]:
    """Each parameter's gradient error relative to its norm. Some gradients are 0 in
    exact arithmetic (the class-agnostic head's bias and the non-local block's key bias:
    a softmax cancels each; the non-local block before its zero-initialised output moves):
    below 1e-6 of the whole gradient on both sides (float noise, seen at 1e-8), left out."""
    total = float(torch.cat([g.flatten() for g in want.values()]).norm())
    out = {}
    for n, g in want.items():
        if float(g.norm()) < 1e-6 * total:
            assert float(got[n].norm()) < 1e-6 * total, n
            continue
        out[n] = float((got[n] - g).norm() / g.norm())
    return out


def _assert_same(got: list[dict], want: list[dict]) -> None:
    """Loss terms and every gradient within 1e-5 of the one-worker values, relative."""
    for g, w in zip(got, want):
        assert g["terms"].keys() == w["terms"].keys()
        for name, value in w["terms"].items():
            assert g["terms"][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
        worst = max(_errors(g["grads"], w["grads"]).items(), key=lambda kv: kv[1])
        assert worst[1] <= 1e-5, worst


@pytest.fixture(scope="module")
def one_worker() -> dict:
    out = {c: _steps(c, _items(), WorkerGroup()) for c in CONFIGS}
    out["graphed"] = _graphed_steps(_items(), WorkerGroup())
    out["undropped"] = _steps("default", _items(), WorkerGroup(), dropout=0.0)
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_n_workers_compute_the_global_batchs_loss_and_gradients(world, one_worker, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world)
    for rank in range(world):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        for config in CONFIGS:
            _assert_same(got[config], one_worker[config])
            # every worker logs the global loss; L_trip is live on each (Z = 4 groups)
            assert all(s["terms"]["early/trip" if config == "default" else "rgb/trip"] > 0
                       for s in got[config])
        # the CUDA-graph step's code on N workers (without capture: a CPU) is the same
        # method: as one worker's graphed step, and as the eager step without dropout
        _assert_same(got["graphed"], one_worker["graphed"])
        _assert_same(one_worker["graphed"], one_worker["undropped"])
        # the control: the first step's loss is the same, but its gradient without the
        # other workers' rows' part is not the one-worker one
        control, want = got["control"][0], one_worker["default"][0]
        assert control["terms"]["loss"] == pytest.approx(want["terms"]["loss"], rel=1e-5)
        assert max(_errors(control["grads"], want["grads"]).values()) > 0.01
    # the workers computed disjoint parts of each batch that add up to it
    rows = [[s["rows"] for s in torch.load(tmp_path / f"{r}.pt", weights_only=True)
             ["default"]] for r in range(world)]
    assert [sum(col) for col in zip(*rows)] == [s["rows"] for s in one_worker["default"]]
    assert [s["rows"] for s in one_worker["default"]] == [16, 16, 8]   # 40 videos an epoch


def test_the_video_table_is_the_same_whatever_the_split():
    items = _items()
    a = video_table([[(it.video_id, it.num_snippets, it.labels)
                      for it in _shard(items, r, 3)] for r in range(3)])
    b = video_table([[(it.video_id, it.num_snippets, it.labels) for it in items]])
    assert [(r.video_id, r.num_snippets, r.labels) for r in a] == \
        [(r.video_id, r.num_snippets, r.labels) for r in b]
    assert [r.video_id for r in a] == sorted(it.video_id for it in items)
    with pytest.raises(ValueError, match="'v00' reached workers 0 and 1"):
        video_table([[("v00", 3, [0])], [("v00", 3, [0])]])


def test_a_split_puts_every_row_where_the_gather_finds_it():
    rng = np.random.default_rng(0)
    for world in (1, 2, 3, 5):
        for size in (1, 7, 32):
            owners = rng.integers(0, world, size)
            split = split_batch(owners, world)
            assert sorted(np.concatenate(split.rows).tolist()) == list(range(size))
            assert split.cap == max(1, max(len(r) for r in split.rows))
            # gathered rows: worker r's rows padded to cap, in rank order
            gathered = np.full(world * split.cap, -1)
            for r, rows in enumerate(split.rows):
                gathered[r * split.cap:r * split.cap + len(rows)] = rows
            assert gathered[split.gather_index()].tolist() == list(range(size))
            assert all((owners[r] == k).all() for k, r in enumerate(split.rows))
    assert split_batch([0, 0, 1], 2, cap=4).cap == 4
    with pytest.raises(ValueError, match="below the largest share"):
        split_batch([0, 0, 1], 2, cap=1)


def test_padded_rows_come_in_few_sizes():
    assert [bucket_rows(n, 32) for n in (0, 1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 40)] == \
        [1, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 32]


@pytest.mark.parametrize("overrides, key", [
    (["train.clusters_per_batch=1"], "train.clusters_per_batch=1"),
    (["train.videos_per_cluster=1"], "train.videos_per_cluster=1"),
    (["train.clusters_per_batch=0"], "train.clusters_per_batch=0"),
    (["train.batch_size=3"], "train.batch_size=3"),
])
def test_a_batch_that_cannot_compute_a_term_is_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)
    # with the term's weight at 0 nothing is lost, and the shape is allowed
    off = ["loss.lambda_trip=0"] + (["loss.lambda_sep=0"] if "videos_per" in key
                                    or "=0" in key else [])
    load_config(None, overrides + off)


@pytest.mark.ray
def test_ray_train_workers_compute_the_one_worker_gradients(ray_session, tmp_path,
                                                            one_worker):
    """Two Ray Train workers at half a CPU each (Ray Train's own process group and DDP
    wrapper, ``prepare_model``): the default config's losses and gradients are the
    one-worker ones."""
    from ray.train import RunConfig as TrainRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(config):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        torch.set_num_threads(1)
        got = _steps("default", _shard(_items(), rank, world), WorkerGroup(rank, world),
                     lambda m: ray.train.torch.prepare_model(m, move_to_device=False))
        torch.save(got, os.path.join(config["out"], f"{rank}.pt"))
        ray.train.report({"done": 1})

    import sys

    from ray import cloudpickle   # the workers cannot import this test module: ship it
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    TorchTrainer(loop, train_loop_config={"out": str(tmp_path)},
                 scaling_config=ScalingConfig(num_workers=2,
                                              resources_per_worker={"CPU": 0.5}),
                 run_config=TrainRunConfig(name="global-batch",
                                           storage_path=str(tmp_path / "ray"))).fit()
    for rank in range(2):
        _assert_same(torch.load(tmp_path / f"{rank}.pt", weights_only=True),
                     one_worker["default"])
