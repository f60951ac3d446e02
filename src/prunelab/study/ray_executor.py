"""Run a study's points on a Ray cluster: `prunelab study RECIPE --executor ray`.

    executor = RayExecutor("auto")          # or "HOST:PORT" of the cluster's head
    run_study(recipe, "runs/x", executor=executor)

Each Ray worker is an actor holding one `PointWorker`, so a model is loaded once per worker
process and a compressed model is built once for all of its points: the driver hands a worker
the points of one compressed model one after another, and the next compressed model of the
same base model when it is done. Every point declares what it needs (`point_needs`: CPUs, a
GPU on a GPU device, memory from the model's size and the work); a worker reserves the largest
need among its model's points. The cluster is asked before anything is submitted, and a need
that no node can meet is refused then.

The driver alone writes the store, as each result arrives (the runner's loop over `map`).
A result too large to travel inline is pickled by the worker into the shared directory (a
path every node sees, by default inside the run directory) and read back by the driver,
never put in Ray's object store. A worker process or node lost mid-point is restarted and
its point retried, up to `max_retries` times; finished points are already in the store.

Ray is imported only here, and only when a `RayExecutor` connects: local runs need no Ray.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunelab.defaults import (RAY_CONNECT_TIMEOUT_S, RAY_CPUS_PER_POINT,
                               RAY_INLINE_RESULT_BYTES, RAY_MAX_RETRIES)
from prunelab.errors import PrunelabError

if TYPE_CHECKING:
    from prunelab.study.runner import PointResult, PointWork, Study

INSTALL_FIX = "install it with: pip install 'prunelab[ray]'"
# Environment the driver passes on to every worker, wherever it runs.
FORWARDED_ENV = ("PRUNELAB_HOME", "HF_HOME", "HF_HUB_OFFLINE", "OMP_NUM_THREADS")
GIB = 1024**3
# What a worker process holds besides the model: Python, torch, a tokenizer, task data.
BASE_MEMORY = 1 * GIB
FP32_BYTES = 4


def ray_installed() -> bool:
    """Whether Ray can be imported here (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("ray") is not None
    except ValueError:  # a module named ray without a spec (removed from sys.modules)
        return False


def require_ray() -> None:
    if not ray_installed():
        raise PrunelabError("--executor ray needs Ray, which is not installed", INSTALL_FIX)


# -- what a point needs -----------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class PointNeeds:
    """The resources one point's worker reserves on a node."""

    cpus: float
    gpus: float
    memory: int  # bytes of host memory

    def describe(self) -> str:
        return (f"{self.cpus:g} CPU, {self.gpus:g} GPU, {self.memory / GIB:.1f} GiB memory")

    def merge(self, other: PointNeeds) -> PointNeeds:
        return PointNeeds(max(self.cpus, other.cpus), max(self.gpus, other.gpus),
                          max(self.memory, other.memory))


def model_bytes(model: str) -> int:
    """The model's weights in fp32 (how prunelab loads them), without loading it: the zoo's
    parameter count, or a local directory's weight files."""
    path = Path(model)
    if path.is_dir():
        size = sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin", "*.gguf")
                   for f in path.glob(pattern))
        half = _stored_in_half(path)
        if size:
            return size * (2 if half else 1)
    from prunelab.study.estimate import model_params

    return int(model_params(model) * FP32_BYTES)


def _stored_in_half(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "")
    return dtype in ("bfloat16", "float16")


def point_needs(work: PointWork, device_type: str | None,
                cpus: float = RAY_CPUS_PER_POINT) -> PointNeeds:
    """What one point needs: its CPUs; one GPU when the study runs on a GPU; memory for the
    model and its dense copy (kept to restore between compressions), plus working room for
    calibration activations and statistics when a stage is calibrated, and the optimizer's
    state when the point fine-tunes (a `finetune` task, a `transfer` stage)."""
    weights = model_bytes(work.model)
    copies = 2.0  # the model and its pristine dense copy
    if any(c is not None for c in work.compression.calibration):
        copies += 1.0  # activations, Hessians, a layer's copy while it is pruned
    if work.task.kind == "finetune" or any(stage.kind == "transfer"
                                           for stage in work.compression.stages):
        copies += 3.0  # gradients and AdamW's two moments
    gpus = 1.0 if device_type not in (None, "cpu") else 0.0
    return PointNeeds(float(cpus), gpus, int(BASE_MEMORY + copies * weights))


def unmet(needs: PointNeeds, nodes: list[dict]) -> bool:
    """Whether no alive node of the cluster (`ray.nodes()` records) can run such a point."""
    return not any(_slots(needs, node) for node in nodes if node.get("Alive"))


def _slots(needs: PointNeeds, node: dict) -> int:
    """How many such points one node holds at once."""
    have = node.get("Resources", {})
    counts = [int(have.get("CPU", 0) // needs.cpus) if needs.cpus else None,
              int(have.get("GPU", 0) // needs.gpus) if needs.gpus else None,
              int(have.get("memory", 0) // needs.memory) if needs.memory else None]
    return min(c for c in counts if c is not None) if any(
        c is not None for c in counts) else 1


def largest_node(nodes: list[dict]) -> str:
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    if not alive:
        return "no node alive"
    best = max(alive, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0), r.get("memory", 0)))
    return (f"largest node: {best.get('CPU', 0):g} CPU, {best.get('GPU', 0):g} GPU, "
            f"{best.get('memory', 0) / GIB:.1f} GiB memory")


# -- the address -------------------------------------------------------------------------------


def resolve_address(address: str) -> tuple[str, int]:
    """HOST:PORT of the cluster's head; "auto": the cluster started on this machine (or
    RAY_ADDRESS). Refused in one line when it is malformed or nothing answers there."""
    given = address
    if address == "auto":
        found = os.environ.get("RAY_ADDRESS") or _current_cluster()
        if not found:
            raise PrunelabError("--address auto: no Ray cluster runs on this machine",
                                "start one (ray start --head) or pass --address HOST:PORT "
                                "of its head")
        address = found
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        raise PrunelabError(f"--address {given!r} is not HOST:PORT or auto",
                            "pass the head's GCS address, e.g. 10.0.0.1:6379, or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise PrunelabError(f"no Ray cluster answers at {host}:{port} ({exc.strerror or exc})",
                            "start it (ray start --head --port PORT) or check --address"
                            ) from None
    return host, int(port)


def _current_cluster() -> str | None:
    """The address `ray start --head` left in Ray's temp directory, without importing Ray."""
    import tempfile

    record = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / \
        "ray_current_cluster"
    try:
        return record.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


# -- the worker --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpilledResult:
    """A result the worker wrote to the shared directory instead of returning it."""

    path: str


class PointActor:
    """One worker process: a `PointWorker` that keeps its model between points."""

    def __init__(self, make_worker, shared_dir: str, inline_bytes: int, cwd: str,
                 versions: dict):
        if Path(cwd).is_dir():  # the driver's: a recipe's relative paths mean the same here
            os.chdir(cwd)
        self.worker = make_worker()
        self.shared_dir = Path(shared_dir)
        self.inline_bytes = inline_bytes
        # The points' keys hold the driver's software versions: a node that runs other
        # versions would store results under keys that do not describe them.
        backend = getattr(self.worker, "backend", None)
        found = backend.versions() if backend is not None else versions
        self.mismatch = {k: (versions.get(k), found.get(k)) for k in versions.keys() | found
                         if versions.get(k) != found.get(k)}

    def pid(self) -> int:
        return os.getpid()

    def run(self, work: PointWork) -> PointResult | SpilledResult:
        if self.mismatch:
            differ = ", ".join(f"{k} {a} here {b} there" for k, (a, b) in
                               sorted(self.mismatch.items()))
            raise PrunelabError(f"a Ray node runs other software than the driver ({differ})",
                                "install the same prunelab, torch and transformers on every "
                                "node")
        result = self.worker(work)
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        if len(data) <= self.inline_bytes:
            return result
        self.shared_dir.mkdir(parents=True, exist_ok=True)
        path = self.shared_dir / f"{uuid.uuid4().hex}.pkl"
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(path)  # the driver never sees a half-written file
        return SpilledResult(str(path))


def _unspill(out: PointResult | SpilledResult) -> PointResult:
    if not isinstance(out, SpilledResult):
        return out
    path = Path(out.path)
    try:
        # Written by this study's own worker into the shared directory the driver named.
        result = pickle.loads(path.read_bytes())
    except OSError as exc:
        raise PrunelabError(f"a worker's result {path} cannot be read here ({exc.strerror})",
                            "pass a --shared-dir that every node of the cluster and this "
                            "machine see (a shared file system)") from None
    path.unlink(missing_ok=True)
    return result


# -- the executor ------------------------------------------------------------------------------


@dataclass
class _Slot:
    actor: Any
    model: str
    unit: deque  # the points of its compressed model still to run here


class RayExecutor:
    """Runs points on the Ray cluster at `address` (HOST:PORT or "auto"), yielding each
    result as it arrives. `shared_dir`: where large results travel (default: the run
    directory; each run uses a folder of its own there, removed at the end); `max_retries`:
    how often a lost worker is restarted and its point retried before the study stops
    (finished points are kept)."""

    def __init__(self, address: str = "auto", shared_dir: str | Path | None = None,
                 max_retries: int = RAY_MAX_RETRIES, cpus_per_point: float = RAY_CPUS_PER_POINT,
                 inline_bytes: int = RAY_INLINE_RESULT_BYTES):
        require_ray()
        self.host, self.port = resolve_address(address)
        self.shared_dir = Path(shared_dir) if shared_dir is not None else None
        self.max_retries = max_retries
        self.cpus_per_point = cpus_per_point
        self.inline_bytes = inline_bytes
        self.device_type: str | None = None
        self.artifacts: Path | None = None  # set by `check`
        self.versions: dict | None = None  # the driver's, which the points' keys hold
        self._ray = None

    # The runner calls `check` after planning and before it writes anything.
    def check(self, study: Study, run_dir: Path) -> None:
        from prunelab.study.runner import pending_work

        # This run's own folder: what it leaves there is removed at the end, nothing else.
        folder = f"ray-artifacts-{uuid.uuid4().hex[:8]}"
        self.artifacts = (self.shared_dir or Path(run_dir)) / folder
        self.versions = study.versions
        device = getattr(study.backend, "device", None)
        self.device_type = getattr(device, "type", device)
        ray = self._connect()
        nodes = ray.nodes()
        for model, needs in self._needs(pending_work(study, set())).items():
            if unmet(needs, nodes):
                raise PrunelabError(
                    f"no node of the Ray cluster at {self.host}:{self.port} has what a point "
                    f"of {model} declares ({needs.describe()}; {largest_node(nodes)})",
                    "add such a node to the cluster, or run on the CPU (--device cpu)"
                    if needs.gpus else "add a node with more memory or CPUs to the cluster")

    def _needs(self, items: list[PointWork]) -> dict[str, PointNeeds]:
        """Each model's largest need: what its workers reserve."""
        out: dict[str, PointNeeds] = {}
        for work in items:
            needs = point_needs(work, self.device_type, self.cpus_per_point)
            out[work.model] = out[work.model].merge(needs) if work.model in out else needs
        return out

    def _connect(self):
        if self._ray is not None:
            return self._ray
        import logging

        import ray

        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        try:
            ray.init(address=f"{self.host}:{self.port}", log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=False,
                     runtime_env={"env_vars": env} if env else None)
        except Exception as exc:  # a version mismatch, a port that is not Ray's GCS
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PrunelabError(f"could not join the Ray cluster at {self.host}:{self.port}: "
                                f"{first}", "check --address and that the cluster runs the same "
                                "Ray and Python as this machine") from None
        self._ray = ray
        return ray

    def close(self) -> None:
        if self._ray is not None:
            self._ray.shutdown()
            self._ray = None

    def map(self, make_worker, items: list[PointWork]):
        if not items:
            return
        ray = self._connect()
        needs = self._needs(items)
        if self.artifacts is None or self.versions is None:
            raise PrunelabError("RayExecutor.map was called before check",
                                "run it through prunelab.study.runner.run_study")
        units: dict[str, deque[deque]] = {}
        for work in items:  # study order: the points of one compressed model are consecutive
            queue = units.setdefault(work.model, deque())
            if not queue or queue[-1][0].compression_key != work.compression_key:
                queue.append(deque())
            queue[-1].append(work)
        remote = ray.remote(PointActor)
        nodes = ray.nodes()
        slots: list[_Slot] = []
        for model, queue in units.items():
            need = needs[model]
            fits = sum(_slots(need, n) for n in nodes if n.get("Alive"))
            for _ in range(max(1, min(len(queue), fits))):
                actor = remote.options(
                    num_cpus=need.cpus, num_gpus=need.gpus, memory=need.memory,
                    # The bound is the worker's restarts: while a lost node is not yet
                    # declared dead, each call to the vanished actor fails at once, and
                    # counted retries would be spent before Ray restarts it elsewhere.
                    max_restarts=self.max_retries, max_task_retries=-1,
                ).remote(make_worker, str(self.artifacts), self.inline_bytes, os.getcwd(),
                          self.versions)
                slots.append(_Slot(actor, model, deque()))
        running: dict[Any, tuple[_Slot, PointWork]] = {}

        def feed(slot: _Slot) -> None:
            if not slot.unit:
                if not units[slot.model]:
                    ray.kill(slot.actor)  # its model is done: free the node for others
                    return
                slot.unit = units[slot.model].popleft()
            work = slot.unit.popleft()
            running[slot.actor.run.remote(work)] = (slot, work)

        try:
            for slot in slots:
                feed(slot)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                slot, work = running.pop(ready[0])
                result = _unspill(self._get(ray, ready[0], work))
                feed(slot)  # the worker goes on while the driver stores this one
                yield result
        finally:
            for slot in slots:
                ray.kill(slot.actor)
            self._remove_artifacts()

    def _get(self, ray, ref, work: PointWork):
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as exc:  # the point itself failed: its own error, as locally
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except RayActorError as exc:
            if exc.actor_init_failed:  # it never ran a point: the same error on every retry
                lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
                last = lines[-1] if lines else type(exc).__name__
                raise PrunelabError(f"a Ray worker could not start: {last}",
                                    "run the same prunelab, Python and Ray on every node as "
                                    "on this one") from None
            raise PrunelabError(
                f"the Ray worker running {work.model} {work.compression.label}: "
                f"{work.task.name} was lost {self.max_retries + 1} times",
                "check the cluster (ray status) and rerun to resume: finished points are "
                "kept") from None

    def _remove_artifacts(self) -> None:
        """This run's artifact folder, with what a lost worker half-wrote there."""
        if self.artifacts is not None and self.artifacts.is_dir():
            for leftover in self.artifacts.iterdir():
                leftover.unlink(missing_ok=True)
            self.artifacts.rmdir()
