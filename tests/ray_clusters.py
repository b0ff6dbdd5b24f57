"""Ray clusters for the cluster tests, started on this machine as separate processes:
``ray start --block`` per node in its own session (so a node's processes are signalled as
one group at teardown, never with ``ray stop``, which would also stop the test session's own
local Ray instance), token authentication on, jobs sent with ``ray job submit``."""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def free_port() -> int:
    """A free port outside Ray's default worker port range (10002-19999)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 20000:
            return port


def own_ports() -> list[str]:
    """A node's agents on free ports: with Ray's defaults (the dashboard agent on 52365,
    ...) a node started after the test session's local Ray instance found its ports taken,
    and the head's job agent never came up ("No available agent")."""
    return [f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--metrics-export-port={free_port()}"]


def cluster_env(**extra: str) -> dict[str, str]:
    """This process's environment for a new cluster: no RAY_ADDRESS of ours, a fresh token,
    the venv's ``ray`` first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "ACL_DIST_QUIET", "PYTEST"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
               RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               **extra)
    return env


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        # own session: the node's processes can be signalled as one group at teardown
        return subprocess.Popen([RAY, "start", *args, "--block"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_nodes(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each node's ``ray start --block`` (it stops its node), then kill what is left
    of their process groups after 3 s. (A head with jobs ran out the 10 s wait it had every
    time, and 30 s once kept nothing more: nothing of a test cluster outlives the test.)"""
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 3
    for proc in reversed(procs):
        try:
            proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Cluster:
    """A running test cluster: its environment (with the token), GCS and dashboard."""

    def __init__(self, env: dict[str, str], gcs_port: int, dashboard_port: int):
        self.env = env
        self.gcs = f"127.0.0.1:{gcs_port}"
        self.dashboard = f"http://127.0.0.1:{dashboard_port}"
        self.procs: list[subprocess.Popen] = []

    def start_head(self, args: list[str], log: Path,
                   env: dict[str, str] | None = None) -> None:
        """``ray start --head`` with ``args`` (and ``env``, default the client's);
        returns once it accepts jobs."""
        self.procs.append(start_node(["--head", f"--port={self.gcs.split(':')[1]}",
                                      "--dashboard-host=127.0.0.1",
                                      f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                                      f"--ray-client-server-port={free_port()}",
                                      *own_ports(), *args], env or self.env, log))
        deadline = time.time() + 90
        while self.cli("job", "list", "--address", self.dashboard,
                       check=False).returncode != 0:
            if time.time() > deadline or self.procs[0].poll() is not None:
                raise AssertionError("the head did not start:\n" + log.read_text())
            time.sleep(1)

    def add_node(self, args: list[str], log: Path) -> None:
        """``ray start --address`` of a node with ``args`` joining this cluster (not waited
        for); its ``args`` and ``log`` are kept for a replacement node."""
        self.node_args, self.node_log = args, log
        self.procs.append(start_node([f"--address={self.gcs}", *own_ports(), *args],
                                     self.env, log))

    def nodes(self, node_type: str = r"\S+") -> int:
        """Active nodes (of ``node_type``), as ``ray status`` lists them."""
        out = self.cli("status", "--address", self.gcs).stdout
        active = out.split("Active:")[-1].split("Pending:")[0]
        return sum(int(n) for n in re.findall(rf"^\s*(\d+) {node_type}$", active,
                                              re.MULTILINE))

    def wait_nodes(self, node_type: str, at_least: int, timeout: float = 60) -> int:
        """Active nodes of ``node_type`` once ``ray status`` lists at least ``at_least``
        (or at ``timeout``): ``ray status`` shows the autoscaler's last report, which lags
        the GCS (a job saw the new node's GPUs while ``ray status`` still listed none, CI)."""
        deadline = time.time() + timeout
        while (n := self.nodes(node_type)) < at_least and time.time() < deadline:
            time.sleep(1)
        return n

    def cli(self, *args: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([RAY, *args], env=env or self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"ray {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def submit(self, *job_args: str, script: str = "jobs/run_acl.py",
               env_vars: dict[str, str] | None = None) -> str:
        """``ray job submit --no-wait`` of ``script`` (with the AWS variables and
        ``env_vars``); returns the job id."""
        # RAY_API_SERVER_ADDRESS: Ray Train's placement-group cleaner (in the job's
        # controller actor) finds the State API by address discovery, which on this
        # machine sees two instances (this cluster and the test session's own) and may
        # pick the other one (seen: a Tune trial that never reported, the cleaner warning
        # "Found multiple active Ray instances" every second); on a real cluster there is
        # one instance per machine
        runtime_env = {"env_vars": {**{k: self.env[k] for k in self.env
                                       if k.startswith("AWS_")},
                                    "RAY_API_SERVER_ADDRESS": self.dashboard,
                                    **(env_vars or {})}}
        args = ["job", "submit", "--address", self.dashboard, "--working-dir", str(REPO),
                "--runtime-env-json", json.dumps(runtime_env), "--no-wait", "--",
                sys.executable, script, *job_args]
        deadline = time.time() + 90
        while True:
            proc = self.cli(*args, check=False)
            # a fresh head answers `ray job list` before its job agent has registered
            if "No available agent" not in proc.stderr or time.time() > deadline:
                break
            time.sleep(2)
        if proc.returncode != 0:
            raise AssertionError(f"ray job submit failed:\n{proc.stdout}\n{proc.stderr}")
        out = proc.stdout
        match = re.search(r"Job '(\S+)' submitted successfully", out)
        assert match, out
        return match.group(1)

    @functools.cached_property
    def jobs(self):
        """The Jobs SDK's client of this cluster (with its token). The waits poll through
        it: a ``ray job status``/``ray job logs`` process per poll cost ~1.5 s of CPU each
        on this 2-core machine, half a core taken from the jobs they watched."""
        from ray.job_submission import JobSubmissionClient

        token = self.env.get("RAY_AUTH_TOKEN") or \
            Path(self.env["HOME"], ".ray", "auth_token").read_text().strip()
        return JobSubmissionClient(self.dashboard, headers={"authorization": f"Bearer {token}"})

    def status(self, job: str) -> str:
        return str(self.jobs.get_job_status(job).value)

    def logs(self, job: str) -> str:
        return self.jobs.get_job_logs(job)

    def wait(self, job: str, timeout: float = 600) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.status(job)
            if state in ("SUCCEEDED", "FAILED", "STOPPED"):
                return state
            time.sleep(0.5)
        self.cli("job", "stop", "--address", self.dashboard, job, check=False)
        raise AssertionError(f"job {job} did not finish in {timeout} s:\n{self.logs(job)}")

    def wait_for_log(self, job: str, pattern: str, timeout: float = 300) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.logs(job)
            if re.search(pattern, text):
                return text
            if self.status(job) in ("SUCCEEDED", "FAILED", "STOPPED"):
                break
            time.sleep(0.5)
        raise AssertionError(f"{pattern!r} never appeared in the logs of {job}:\n"
                             f"{self.logs(job)}")
