"""Run a study's points in several processes of this machine: `prunelab study --workers N`.

    run_study(recipe, "runs/x", executor=ProcessExecutor(workers=2))

Each worker process holds one `PointWorker` (its model loaded once, a compressed model built
once for all of its points) and computes whole compressed models: the driver queues the points
of one compressed model together, the costliest first, and each idle worker takes the next.
Results come back one point at a time and the driver alone writes the store, as with the local
executor, so a stopped run resumes the same way.

Why processes and not threads: a small model's matrices are too small for torch's threads to
keep every core busy (on 2 cores, two one-thread processes do more work per second than one
two-thread process), and the Python between the matmuls runs in parallel too.

Ctrl-C and SIGTERM reach the driver; the workers ignore SIGINT and are stopped by the driver,
so every point that finished before is in the store and nothing else is written.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue as queues
import signal
import traceback
from collections import defaultdict
from typing import TYPE_CHECKING

from prunelab.errors import PrunelabError

if TYPE_CHECKING:
    from pathlib import Path

    from prunelab.study.runner import PointWork, Study

# How often the driver looks at its workers while it waits for a result (seconds).
POLL_SECONDS = 1.0
GIB = 1024**3


def available_memory() -> int:
    """Bytes of memory this machine can still give (MemAvailable), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def usable_cores() -> int:
    """The cores this process may run on (a container's or a Slurm job's share)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_workers(workers: int) -> None:
    if workers < 1:
        raise PrunelabError(f"--workers {workers} is not a number of processes",
                            "pass --workers 1 or more")


def default_threads(workers: int) -> int:
    """torch threads per worker: this machine's cores shared out, at least one each."""
    return max(1, usable_cores() // workers)


def _serve(make_worker, tasks, results, threads: int, cwd: str) -> None:
    """A worker process: compute the units it takes until the driver's sentinel (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when to stop
    os.chdir(cwd)
    # tqdm's default lock is a multiprocessing one: made in a worker and never released, it
    # would be reported as leaked when the worker ends. One process needs a thread lock only.
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    import torch

    torch.set_num_threads(threads)
    try:
        worker = make_worker()
    except BaseException as exc:  # noqa: BLE001 (sent to the driver, which raises it)
        results.put(("error", _portable(exc, None)))
        return
    while (unit := tasks.get()) is not None:
        for work in unit:
            try:
                results.put(("result", worker(work)))
            except BaseException as exc:  # noqa: BLE001 (sent to the driver, which raises it)
                results.put(("error", _portable(exc, work)))
                return


def _portable(exc: BaseException, work) -> BaseException:
    """The exception as the driver can raise it: itself when it pickles, else its text."""
    try:
        pickle.loads(pickle.dumps(exc))
        if work is not None:
            exc.add_note(f"in a worker process, at {work.model} {work.compression.label}: "
                         f"{work.task.name}")
        return exc
    except Exception:  # noqa: BLE001 (an exception holding unpicklable state)
        return RuntimeError("".join(traceback.format_exception(exc)))


class ProcessExecutor:
    """Points in `workers` processes of this machine, each with `threads` torch threads
    (default: the cores shared out). Needs, per worker, the memory of a local point; the
    machine's available memory is checked before anything starts: more workers than fit are
    refused, or with `fit=True` fewer are started (no more than the compressed models to
    build, either)."""

    def __init__(self, workers: int, threads: int | None = None, fit: bool = False):
        check_workers(workers)
        if threads is not None and threads < 1:
            raise PrunelabError(f"{threads} threads per worker is too few", "pass 1 or more")
        self.workers = workers
        self.fit = fit
        self._threads = threads
        self._estimate = None  # seconds of a compressed model's points, set by `check`
        self._processes: list = []

    # The runner calls `check` after planning and before it writes anything.
    def check(self, study: Study, run_dir: Path) -> None:
        from prunelab.study.ray_executor import point_needs
        from prunelab.study.runner import pending_work

        items = pending_work(study, set())
        device = getattr(study.backend, "device", None)
        device_type = getattr(device, "type", device)
        need = max((point_needs(w, device_type, 1).memory for w in items), default=0)
        have = available_memory()
        fits = max(1, have // max(need, 1)) if have else self.workers
        if self.fit and device_type not in (None, "cpu"):
            self.workers = 1  # one accelerator: its points run one after another
        elif self.fit:
            models = len({(w.model, w.dtype, w.compression_key) for w in items})
            self.workers = max(1, min(self.workers, fits, models))
        elif self.workers > 1 and self.workers > fits:
            raise PrunelabError(
                f"{self.workers} workers need about {self.workers * need / GIB:.1f} GiB "
                f"({need / GIB:.1f} GiB each: the model, its dense copy and working room), "
                f"and {have / GIB:.1f} GiB is available",
                f"pass --workers {fits}")
        backend, recipe = study.backend, study.recipe

        def estimate(unit: list[PointWork]) -> float:
            first = unit[0]
            compress, evaluate = backend.estimate(recipe, first.model, first.compression,
                                                  [w.task for w in unit])
            return compress + evaluate

        self._estimate = estimate

    def map(self, make_worker, items: list[PointWork]):
        if not items:
            return
        if self.fit and self.workers == 1:  # nothing to share out: this process, as locally
            from prunelab.study.runner import LocalExecutor

            yield from LocalExecutor().map(make_worker, items)
            return
        units: dict[tuple, list[PointWork]] = defaultdict(list)
        for work in items:  # study order: the points of one compressed model are consecutive
            units[(work.model, work.dtype, work.compression_key)].append(work)
        ordered = list(units.values())
        if self._estimate is not None:  # the costliest first: the last to finish are short
            ordered.sort(key=self._estimate, reverse=True)
        threads = self._threads or default_threads(self.workers)
        context = multiprocessing.get_context("spawn")  # no fork of a threaded torch
        tasks, results = context.Queue(), context.Queue()
        for unit in ordered:
            tasks.put(unit)
        workers = min(self.workers, len(ordered))
        for _ in range(workers):
            tasks.put(None)
        self._processes = [context.Process(target=_serve, daemon=True,
                                           args=(make_worker, tasks, results, threads,
                                                 os.getcwd()))
                           for _ in range(workers)]
        try:
            for process in self._processes:
                process.start()
            received = 0
            while received < len(items):
                try:
                    kind, payload = results.get(timeout=POLL_SECONDS)
                except queues.Empty:
                    self._check_alive(received, len(items))
                    continue
                if kind == "error":
                    raise payload
                received += 1
                yield payload
        finally:
            self.close()

    def _check_alive(self, received: int, expected: int) -> None:
        """A worker that died without a word (killed, out of memory) stops the study."""
        for process in self._processes:
            if process.exitcode not in (None, 0):
                raise PrunelabError(
                    f"a worker process died (exit status {process.exitcode}) with "
                    f"{expected - received} points still to run",
                    "rerun to resume (finished points are kept); if memory ran out, pass "
                    "fewer --workers")
        if self._processes and all(p.exitcode == 0 for p in self._processes):
            raise PrunelabError(f"the workers stopped with {expected - received} points "
                                "never computed", "rerun to resume")

    def close(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        self._processes = []
