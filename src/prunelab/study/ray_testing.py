"""A throwaway Ray cluster on this machine's loopback, for the tests and the bench.

    with LoopbackCluster(nodes=2) as cluster:
        run_study(recipe, run_dir, executor=RayExecutor(cluster.address))

A head (`ray start --head`) and `nodes - 1` more nodes (`ray start --address`), one CPU and
8 GiB of memory (as Ray's scheduling resource) each,
each `ray start --block` in a process group of its own; leaving the block kills both groups
and any Ray worker left behind (found by the cluster's own temp directory on its command
line), whatever happened, and removes the temp directory. Nothing is sent off this machine:
every node listens on 127.0.0.2 (Ray replaces 127.0.0.1 by the machine's network address).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.2"
START_SECONDS = 180  # a loaded 2-core machine takes ~30 s per node
# Each node's memory resource, declared rather than measured: Ray would count the memory free
# at its start, which on a shared machine may be less than one point declares.
NODE_MEMORY = 8 * 1024**3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


class LoopbackCluster:
    def __init__(self, nodes: int = 2, cpus_per_node: int = 1):
        self.nodes, self.cpus = nodes, cpus_per_node
        self.temp = tempfile.mkdtemp(prefix="prl-ray-", dir="/tmp")  # short: socket paths
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"
        self.groups: list[subprocess.Popen] = []  # one per node, head first
        # Ray's memory monitor off: on a shared machine short of memory it kills workers at
        # random, and the tests count exactly which points ran twice.
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": self.temp,
                    "RAY_memory_monitor_refresh_ms": "0"}

    def __enter__(self) -> LoopbackCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start_node(self, *args: str) -> None:
        with open(Path(self.temp) / f"node-{len(self.groups)}.log", "wb") as log:
            ray_cli = str(Path(sys.executable).parent / "ray")
            self.groups.append(subprocess.Popen(
                [ray_cli, "start", "--node-ip-address", HOST, "--num-cpus", str(self.cpus),
                 "--memory", str(NODE_MEMORY), "--disable-usage-stats", "--block", *args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True))

    def start(self) -> None:
        self._start_node("--head", "--port", str(self.port), "--include-dashboard=false",
                         "--temp-dir", self.temp)
        self._wait(lambda: answers(HOST, self.port), "the head")
        for _ in range(self.nodes - 1):
            self._start_node("--address", self.address)
        self._wait(lambda: self.alive_nodes() == self.nodes, "the other nodes")

    def alive_nodes(self) -> int:
        import ray

        ray.init(address=self.address, log_to_driver=False, logging_level="ERROR")
        try:
            return sum(node["Alive"] for node in ray.nodes())
        finally:
            ray.shutdown()

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_SECONDS
        while not ready():
            if time.monotonic() > deadline or any(g.poll() is not None for g in self.groups):
                logs = "\n".join(p.read_text(errors="replace")[-2000:]
                                 for p in Path(self.temp).glob("node-*.log"))
                raise RuntimeError(f"{what} of the loopback Ray cluster did not start:\n{logs}")
            time.sleep(1)

    def kill_node(self, index: int) -> None:
        """Lose a node at once, as a machine that dies (kill -9 of its whole group)."""
        _signal_group(self.groups[index], signal.SIGKILL)
        self.groups[index].wait()

    def stop(self) -> None:
        for group in self.groups:
            _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while any(g.poll() is None for g in self.groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        for group in self.groups:
            _signal_group(group, signal.SIGKILL)
            group.wait()
        for pid in pids_mentioning(self.temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def pids_mentioning(text: str) -> list[int]:
    """Processes (not this one) whose command line holds `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
