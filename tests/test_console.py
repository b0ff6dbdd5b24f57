"""The output filter of Ray commands (acl_dist.console): Ray's routine chatter, as Ray
2.60 printed it in a tune and a run here, is dropped; everything else passes, from this
process and from processes started inside the filter, in order, bars included."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from acl_dist.console import is_noise

# lines captured from `acl-dist tune` / `acl-dist run` on this machine (Ray 2.60.0)
RAY_CHATTER = [
    "2026-11-30 11:50:34,796\tWARNING authentication_token_setup.py:85 -- Token "
    "authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
    "[2026-11-30 11:50:45,146 E 17697 17762] core_worker.cc:2465: Actor with class name: "
    "'MapWorker(MapBatches(UniformDescriptors))' and ID: '0b7df4f7bde53a65464ded1b01000000' "
    "has constructor arguments in the object store and max_restarts > 0. If the arguments "
    "in the object store go out of scope or are lost, the actor restart will fail.",
    "[2026-11-30 11:51:06,392 E 18061 18118] core_worker.cc:2465: Actor with class name: "
    "'PreemptionWatcher' and ID: '6730220a35404576211b10b201000000' has constructor "
    "arguments in the object store and max_restarts > 0. If the arguments ...",
    "Progress bars disabled. To enable, set `ray.data.DataContext.get_current()."
    "enable_progress_bars = True`.",
    "✔️  Dataset dataset_0356Xx5dKBsxR7FaxcuReL_0 execution finished in 3.07 seconds",
    "\x1b[33m(raylet)\x1b[0m WARNING: 8 PYTHON worker processes have been started on node: "
    "46f0fb2e with address: 192.0.2.2, which is 4x the maximum expected startup concurrency",
    "(raylet, ip=10.0.0.3) WARNING: 14 PYTHON worker processes have been started on node",
    "Found credentials in environment variables.",
    "Found endpoint for s3 via: environment_global.",
    "\x1b[36m(trial pid=123)\x1b[0m Found credentials in environment variables.",
]
OURS = [
    "starting a local Ray instance (4 logical CPUs)",
    "  round 0 step 3/6 loss 3.786 (421 videos/s)",
    "  round 1 attention pass: 47 videos in 3.1 s",
    "  trial 43ae0_00001 round 1: val_map 4.180  val_map50 3.125  nmi 0.282",
    "acl-dist run: error: /data/store: no feature store at /data/store",
    "Traceback (most recent call last):",
    "ray.exceptions.RayTaskError(ValueError): ray::train_fn() (pid=1, ip=1) ...",
    "(raylet) WARNING: the node is running low on memory",
    "botocore.exceptions.NoCredentialsError: Unable to locate credentials",
    "s3://bucket/run: Found credentials in environment variables? no: AccessDenied",
    "",
]


@pytest.mark.parametrize("line", RAY_CHATTER)
def test_rays_chatter_is_dropped(line):
    assert is_noise(line.encode())


@pytest.mark.parametrize("line", OURS)
def test_our_lines_and_real_problems_pass(line):
    assert not is_noise(line.encode())


SCRIPT = textwrap.dedent(r"""
    import os, subprocess, sys
    from acl_dist.console import filtered_output

    NOISE = "Progress bars disabled. To enable, set x"
    with filtered_output():
        print("out 1"); print(NOISE); sys.stdout.flush()
        print("err 1", file=sys.stderr); print(NOISE, file=sys.stderr, flush=True)
        os.write(2, b"\r bar 10%")              # a bar redrawing: passes without a newline
        os.write(2, b"\r bar 100%\n")
        # a process started inside (as a local Ray instance is) writes through the filter
        subprocess.run([sys.executable, "-c", "import sys; print('child out'); "
                        f"print({NOISE!r}); print('child err', file=sys.stderr); "
                        f"print({NOISE!r}, file=sys.stderr)"], check=True)
        print("out 2", flush=True)
    print("after", flush=True)
    print("err after", file=sys.stderr, flush=True)
""")


def test_the_filter_sits_on_the_descriptors_of_this_process_and_its_children(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60,
                          cwd=tmp_path)      # bytes: a text pipe would turn "\r" into "\n"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [b"out 1", b"child out", b"out 2", b"after"]
    assert proc.stderr == b"err 1\n\r bar 10%\r bar 100%\nchild err\nerr after\n"
    off = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env={**__import__("os").environ,
                                                        "ACL_DIST_RAY_OUTPUT": "all"})
    assert off.stdout.count("Progress bars disabled") == 2       # the switch turns it off


# as `acl-dist tune` printed it here when a finished trial's actor was stopped (Ray 2.60.0)
SIGTERM_BLOCK = [
    "Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7f39ac02e480>",
    "Traceback (most recent call last):",
    '  File "/root/.pyenv/versions/3.11.7/lib/python3.11/_weakrefset.py", line 39, in _remove',
    "    def _remove(item, selfref=ref(self)):",
    "",
    '  File "/work/main/.venv/lib/python3.11/site-packages/ray/_private/worker.py", line 1063, '
    "in sigterm_handler",
    "    raise_sys_exit_with_custom_error_message(",
    '  File "python/ray/_raylet.pyx", line 712, in ray._raylet.raise_sys_exit_with_custom_'
    "error_message",
    "SystemExit: 1",
]


def _filtered(lines: list[str]) -> list[str]:
    from acl_dist.console import LineFilter

    f = LineFilter()
    out = [shown for line in lines for shown in f.feed(line.encode())] + f.flush()
    return [b.decode() for b in out]


def test_a_workers_sigterm_traceback_is_dropped_and_other_tracebacks_pass():
    assert _filtered(["before", *SIGTERM_BLOCK, "after"]) == ["before", "after"]
    # as a cluster job's driver prints a worker's lines: colour, (pid=...), reset
    coloured = [f"\x1b[36m(pid=7)\x1b[0m {line}" for line in SIGTERM_BLOCK]
    assert _filtered(coloured) == []
    # two in a row: both dropped
    assert _filtered(SIGTERM_BLOCK + SIGTERM_BLOCK + ["after"]) == ["after"]
    # the same opening without Ray's SIGTERM handler is a real problem: shown whole
    real = [SIGTERM_BLOCK[0], "Traceback (most recent call last):",
            '  File "x.py", line 1, in _remove', "SystemExit: 1"]
    assert _filtered(real + ["after"]) == real + ["after"]
    # ... and so is one ending in another exception, even when a SIGTERM block follows
    other = real[:3] + ["KeyError: 'x'"]
    assert _filtered(other + SIGTERM_BLOCK) == other
    # a line that is not traceback-shaped (the driver's own, arriving mid-block) ends the
    # hold: the block and the line are shown in order, nothing is lost
    mid = SIGTERM_BLOCK[:4] + ["  trial 1 round 2: val_map 3.1"[2:]] + SIGTERM_BLOCK[4:]
    assert _filtered(mid) == mid
    # a block cut off by the stream's end is shown, noise lines after it dropped
    assert _filtered(SIGTERM_BLOCK[:4] + [RAY_CHATTER[3]]) == SIGTERM_BLOCK[:4]
    # a block is held for at most MAX_BLOCK_LINES lines, then shown
    from acl_dist.console import MAX_BLOCK_LINES, LineFilter

    f = LineFilter()
    shown = [s for i in range(MAX_BLOCK_LINES + 1) for s in f.feed(
        SIGTERM_BLOCK[0].encode() if i == 0 else b"  frame %d" % i)]
    assert len(shown) == MAX_BLOCK_LINES + 1 and f.flush() == []   # held 40, then shown


def test_the_filter_shows_a_held_block_when_the_filtered_block_ends(tmp_path):
    """The drain marker written when ``filtered_output`` ends flushes what the filter holds:
    an unfinished traceback printed just before is out when the block returns."""
    script = textwrap.dedent(f"""
        import sys
        from acl_dist.console import filtered_output
        with filtered_output():
            print({SIGTERM_BLOCK[0]!r}, file=sys.stderr, flush=True)
            print("Traceback (most recent call last):", file=sys.stderr, flush=True)
        print("after", file=sys.stderr, flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [SIGTERM_BLOCK[0], "Traceback (most recent call last):",
                                        "after"]
