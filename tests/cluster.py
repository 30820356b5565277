"""A Ray cluster of two nodes on loopback, started as a user starts one (`ray start --head`, then
`ray start --address` on the second node), for the tests of the cluster path: the CLIs and Ray Jobs
run against it through RAY_ADDRESS or the dashboard, and the tests check on which node work ran.

Each node has 1 logical CPU, so two 1-CPU Train workers, two concurrent Tune trials or two Ray
Data tasks at once can only run one per node. The cluster has its own temp dir and free ports, so
it never meets the session's local Ray (tests/conftest.py) or another Ray on the machine, and it
is stopped by its own processes only: never `ray stop`, which stops every Ray on the machine.

`two_node_cluster` is session scoped and stops after the last test of the run that uses it (not
at the end of the session): an idle two-node cluster costs CPU the rest of the suite wants.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FIXTURE = "two_node_cluster"
REPO_ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(sys.executable).parent
# Small: the tests move a few MB; Ray's default (30% of memory per node) is not needed.
OBJECT_STORE_BYTES = 300 * 1024 * 1024
# Not inherited by the nodes: a node of a real cluster has its own environment, so what the workers
# need must travel with the job (a pickled filesystem, a runtime_env), not leak from the test process.
# The S3 endpoint and keys do reach them, as every pod of the KubeRay manifests gets them
# (kuberay/config.yaml, the Secret): the S3 tests' server, when the session has one.
NOT_FOR_NODES = ("RAY_ADDRESS", "RAY_AUTH_", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MEDISCALE_")
FOR_NODES = ("MEDISCALE_S3_ENDPOINT_URL",)


# Every port a head takes, free ones: Ray's defaults (6379, 8265, 10001, 52365, ...) are taken by
# any other Ray on the machine.
HEAD_PORTS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "metrics-export-port",
)


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: all bound at once, or the kernel may hand one out twice."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def node_env(token: str) -> dict[str, str]:
    """Token auth as in production (raycluster.yaml, the KubeRay manifests), with a token of this
    cluster's own, never the machine's ~/.ray/auth_token."""
    env = {k: v for k, v in os.environ.items() if k in FOR_NODES or not k.startswith(NOT_FOR_NODES)}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    # Job entrypoints (`python -m ...`) and the workers use this project's interpreter.
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # no 30 s drain on SIGTERM: nothing to drain
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


@dataclass
class TwoNodeCluster:
    """What a user of the cluster is given: its GCS address (RAY_ADDRESS for the CLIs), its
    dashboard (Jobs and State APIs) and its auth token; plus the two node ids."""

    address: str
    dashboard: str
    token: str = field(repr=False)
    temp_dir: str
    head_node_id: str = ""
    worker_node_id: str = ""
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)

    @property
    def node_ids(self) -> set[str]:
        return {self.head_node_id, self.worker_node_id}

    def env(self, **extra: str) -> dict[str, str]:
        """The test process's environment pointed at this cluster, as a user's shell would be
        (`RAY_ADDRESS`, `RAY_AUTH_MODE=token` and the cluster's token)."""
        # No MLflow URI from the test process: the commands' registry is the sqlite db of the
        # MEDISCALE_DATA_DIR each test gives them (a tmp dir), never another test's.
        drop = ("RAY_AUTH_", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(RAY_ADDRESS=self.address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, **extra)
        env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
        return env

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """The `ray` CLI against this cluster (this process's own Ray client state stays the
        session's: the token and auth mode of a process are fixed at its first connection)."""
        return subprocess.run([str(BIN_DIR / "ray"), *args], capture_output=True, text=True,
                              env=self.env(), timeout=timeout, cwd=REPO_ROOT)  # fmt: skip

    def state(self, resource: str, *filters: str, limit: int = 10_000) -> list[dict]:
        """`ray list RESOURCE --format json` (the State API; finished tasks and dead actors too)."""
        args = ["list", resource, "--address", self.dashboard, "--format", "json", "--limit", str(limit)]
        done = self.ray(*args, *(a for f in filters for a in ("--filter", f)), "--timeout", "60")
        if done.returncode != 0:
            raise RuntimeError(f"ray list {resource} failed:\n{done.stderr[-2000:]}")
        if done.stdout.startswith("No resource"):  # what it prints instead of `[]`
            return []
        return json.loads(done.stdout)

    def driver_jobs(self) -> set[str]:
        """Ids of every job (driver) that has connected to the cluster so far."""
        return {job["job_id"] for job in self.state("jobs") if job.get("job_id")}

    def actors(self, job_ids: set[str], class_name: str) -> list[dict]:
        """The actors of that class these jobs created, dead ones too (the GCS's own actor table,
        where task events can lag)."""
        return [
            a
            for job_id in job_ids
            for a in self.state("actors", f"job_id={job_id}", f"class_name={class_name}")
        ]

    def task_nodes(self, job_ids: set[str]) -> dict[str, set[str]]:
        """Task name -> the node ids it ran on, over the tasks of these jobs (actor tasks too)."""
        out: dict[str, set[str]] = {}
        for job_id in job_ids:
            for task in self.state("tasks", f"job_id={job_id}"):
                if task.get("node_id"):
                    out.setdefault(task["name"], set()).add(task["node_id"])
        return out


def _ray_start(args: list[str], log_path: Path, token: str) -> subprocess.Popen:
    with open(log_path, "w") as log_file:
        return subprocess.Popen(
            [str(BIN_DIR / "ray"), "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
             f"--object-store-memory={OBJECT_STORE_BYTES}", *args],
            env=node_env(token), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _log_tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    errors = [line for line in lines if "rror" in line or "xception" in line or "timed out" in line]
    return "\n".join((errors or lines)[-20:])


def start_two_node_cluster(timeout: float = 180) -> TwoNodeCluster:
    """`ray start --head` (1 CPU, dashboard) and `ray start --address` (1 CPU), each `--block` in
    its own process group; returns once both nodes are alive and the Jobs API answers."""
    temp_dir = tempfile.mkdtemp(prefix="ms2n", dir="/tmp")  # short: Ray's socket paths have a limit
    *head_ports, agent_port, metrics_port = free_ports(len(HEAD_PORTS) + 2)
    ports = dict(zip(HEAD_PORTS, head_ports, strict=True))
    cluster = TwoNodeCluster(
        address=f"127.0.0.1:{ports['port']}",
        dashboard=f"http://127.0.0.1:{ports['dashboard-port']}",
        token=secrets.token_hex(32),
        temp_dir=temp_dir,
    )
    deadline = time.monotonic() + timeout
    try:
        cluster.processes.append(_ray_start(
            ["--head", "--num-cpus=1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--temp-dir={temp_dir}", *(f"--{name}={port}" for name, port in ports.items())],
            Path(temp_dir) / "head.log", cluster.token,
        ))  # fmt: skip
        cluster.head_node_id = _wait(cluster, 1, deadline)[0]
        # Its own temp dir, as on another machine: a node unpacks a job's working_dir under its
        # session folder and deletes it when done there, which with a shared folder pulled the
        # working dir out from under the job's driver on the head (getcwd() failing in MLflow).
        cluster.processes.append(_ray_start(
            [f"--address={cluster.address}", "--num-cpus=1", f"--temp-dir={temp_dir}/w",
             f"--dashboard-agent-listen-port={agent_port}", f"--metrics-export-port={metrics_port}"],
            Path(temp_dir) / "worker.log", cluster.token,
        ))  # fmt: skip
        cluster.worker_node_id = next(n for n in _wait(cluster, 2, deadline) if n != cluster.head_node_id)
        while (jobs := cluster.ray("job", "list", "--address", cluster.dashboard)).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Jobs API does not answer:\n{jobs.stderr[-2000:]}")
            time.sleep(1)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def _wait(cluster: TwoNodeCluster, count: int, deadline: float) -> list[str]:
    """Ids of the alive nodes once there are `count`; a `ray start` that exits fails with its log."""
    while True:
        for proc, name in zip(cluster.processes, ("head", "worker"), strict=False):
            if proc.poll() is not None:
                log = _log_tail(Path(cluster.temp_dir) / f"{name}.log")
                raise RuntimeError(f"ray start ({name}) exited:\n{log}")
        with contextlib.suppress(RuntimeError):  # the dashboard is not up yet
            nodes = [n["node_id"] for n in cluster.state("nodes", "state=ALIVE")]
            if len(nodes) >= count:
                return nodes
        if time.monotonic() > deadline:
            log = _log_tail(Path(cluster.temp_dir) / "head.log")
            raise RuntimeError(f"{count} Ray node(s) not alive in time:\n{log}")
        time.sleep(1)


def _leftovers(temp_dir: str, pgids: set[int]) -> list[int]:
    """Processes of this cluster: in the process group of one of its `ray start`s (workers rename
    themselves `ray::...` but stay in the group) or naming its temp dir in their arguments."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            pid, args = proc.info["pid"], proc.info["cmdline"] or []
            if os.getpgid(pid) in pgids or any(temp_dir in a for a in args):
                found.append(pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def stop_cluster(cluster: TwoNodeCluster) -> None:
    """SIGTERM to each `ray start --block` (the second node first; each shuts its own processes
    down), then SIGKILL whatever of this cluster is left. Idempotent."""
    for proc in reversed(cluster.processes):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # still alive, so still our own group
                proc.wait(timeout=10)
    for pid in _leftovers(cluster.temp_dir, {p.pid for p in cluster.processes}):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
    cluster.processes.clear()


# --------------------------------------------------------------------------- the fixture

_state: dict[str, object] = {"cluster": None, "last": None}


@pytest.fixture(scope="session")
def two_node_cluster(s3_endpoint: str) -> Iterator[TwoNodeCluster]:
    """Two Ray nodes on this machine, 1 CPU each, whose workers can reach the session's S3 server.
    On a very busy machine `ray start` can time out waiting for its raylet (a fixed 30 s in Ray),
    so a failed start is retried once."""
    try:
        cluster = start_two_node_cluster()
    except RuntimeError:
        cluster = start_two_node_cluster()
    _state["cluster"] = cluster
    try:
        yield cluster
    finally:
        _state["cluster"] = None
        stop_cluster(cluster)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on this cluster need Ray: out of `make test-fast` like the session cluster's."""
    for item in items:
        if FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The last test of the run (in its final order) that uses the cluster."""
    users = [i.nodeid for i in session.items if FIXTURE in getattr(i, "fixturenames", ())]
    _state["last"] = users[-1] if users else None


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the run's last test that uses the cluster, stop it (its fixture's teardown then only
    forgets it): the rest of the suite does not pay for two idle Ray nodes."""
    cluster = _state["cluster"]
    if cluster is not None and item.nodeid == _state["last"]:
        stop_cluster(cluster)  # type: ignore[arg-type]
