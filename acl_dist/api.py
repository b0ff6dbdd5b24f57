"""Small helpers of the public API (:mod:`acl_dist`) that have no home of their own."""

from __future__ import annotations

from typing import Any

from .config import RunConfig


def plan_run(store: str, cfg: RunConfig, quiet: bool = True) -> dict[str, Any]:
    """The plan of a new run of ``cfg`` on ``store`` on the Ray cluster this process
    attaches to (``RAY_ADDRESS``) or on the local instance a run would start (sized from
    this machine; none is started): the resolved config (``config``), the training workers
    and device (``train``), where clustering and the attention pass run, and what the
    autoscaler would be asked for (``request``). Writes nothing; the same as
    ``acl-dist run --plan --json``.

    Example::

        >>> p = acl_dist.plan_run("store", acl_dist.load_config("tiny", mode="weak"))
        >>> p["train"]["workers"], p["train"]["use_gpu"]
        (1, False)
    """
    from . import fsutil
    from .pipeline import plan_new_run

    return plan_new_run(fsutil.absolute(store), cfg,
                        quiet)[2]
