"""Where the cells of a grid run: local worker processes, or Slurm jobs through submitit.

Running in this process, in order, needs no executor (``run_grid(spec)``). The executors
here take :class:`hashbench.runner.CellJob` s (plain data) and run each with
:func:`hashbench.runner.run_job` in a fresh process, which writes into the shared results
directory under the run's file lock, so several runners or jobs can share one directory.
A worker guards its methods as the runner's own process does (``os._exit`` fails the cell,
the working directory is restored: :mod:`hashbench.containment`, through ``run_cell``); a
worker that dies all the same fails its cell, never the grid's exit status.

This module imports nothing heavy at the top: spawned workers import it to run their
initializer, which must set the BLAS thread variables before numpy is first imported.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hashbench.containment import exit_now
from hashbench.errors import UserError
from hashbench.records import Status

if TYPE_CHECKING:
    from hashbench.runner import CellJob, JobResult

# The thread-count variables of the BLAS/OpenMP runtimes numpy, scipy and torch may load.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def available_cpus() -> int:
    """CPUs this process may use (its affinity mask, which cgroups and taskset restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def fair_share(workers: int, cpus: int | None = None) -> int:
    """Threads per worker so that ``workers`` workers do not oversubscribe the CPUs."""
    return max(1, (available_cpus() if cpus is None else cpus) // max(1, workers))


def limit_threads(threads: int) -> None:
    """Pin this process to ``threads`` compute threads (numpy's BLAS and torch).

    The variables work for libraries not loaded yet; threadpoolctl resizes the pools of
    those already loaded (a job process unpickles its job, and so imports numpy, first).
    """
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    import torch  # after the variables: its OpenMP runtime reads them when loaded

    torch.set_num_threads(threads)
    try:
        import threadpoolctl  # comes with scikit-learn
    except ImportError:
        return
    threadpoolctl.threadpool_limits(threads)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# How often a worker checks that the process that started it is still there.
PARENT_POLL_SECONDS = 1.0


def exit_with_parent(parent_pid: int, poll_seconds: float = PARENT_POLL_SECONDS) -> None:
    """Make this process exit once ``parent_pid`` is no longer its parent.

    A worker whose runner was killed outright (SIGKILL, the OOM killer) would otherwise wait
    for work for ever, or finish a cell nobody collects. When the parent dies the worker is
    re-parented, so its parent pid changes: a daemon thread polls for that. The cell it was
    running is left as an interrupted run folder, redone by the next run.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        # No clean-up: nobody is left to collect it; the kernel drops its locks. The real
        # os._exit, not the guard a running method sees (hashbench.containment).
        exit_now(1)

    threading.Thread(target=watch, name="hashbench-exit-with-parent", daemon=True).start()


def _worker_initializer(threads: int, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        exit_with_parent(parent_pid)
    limit_threads(threads)


def thread_report() -> dict[str, Any]:
    """The thread limits in force in this process (to check a worker's share)."""
    import numpy  # noqa: F401  (loads the BLAS whose pool is reported)
    import torch

    report: dict[str, Any] = {
        "environment": {variable: os.environ.get(variable) for variable in THREAD_VARIABLES},
        "torch": torch.get_num_threads(),
    }
    try:
        import threadpoolctl  # comes with scikit-learn
    except ImportError:
        return report
    report["blas"] = [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
    return report


@dataclass
class LocalPoolExecutor:
    """``--executor local --jobs N``: N spawned worker processes, each with C // N threads."""

    jobs: int
    cpus: int | None = None  # None: this process's available CPUs
    remote = False

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {self.jobs}")

    @property
    def threads(self) -> int:
        return fair_share(self.jobs, self.cpus)

    def describe(self) -> dict[str, Any]:
        return {"executor": "local", "jobs": self.jobs, "threads_per_job": self.threads, "host": socket.gethostname()}

    def _new_pool(self, workers: int) -> ProcessPoolExecutor:
        # spawn, not fork: a fresh interpreter, with no copied torch/OpenMP state or held locks.
        return ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_initializer,
            initargs=(self.threads, os.getpid()),
        )

    def run(
        self,
        jobs: list[CellJob],
        on_submit: Callable[[int, str | None], None],
        on_result: Callable[[int, JobResult], None],
    ) -> None:
        """Run the jobs on shared workers; after a worker dies, the rest one process each.

        A worker that dies (killed for memory, a crash in native code) takes its whole pool
        down with it, and the pool cannot tell which cell killed it. So the cells it left
        unfinished run again, each in a process of its own, N at a time: the culprit then
        fails alone, with the reason, and the others finish.

        The thread variables are set in this process's environment while workers start,
        because a worker inherits it before anything imports numpy: a spawned worker may
        import the parent's main module (a console script imports the CLI, hence numpy)
        before any initializer runs.
        """
        if not jobs:
            return
        with _environment({variable: str(self.threads) for variable in THREAD_VARIABLES}):
            unfinished = self._run_shared(jobs, on_submit, on_result)
            if unfinished:
                self._run_isolated(jobs, unfinished, on_result)

    def _run_shared(self, jobs, on_submit, on_result) -> list[int]:
        """Every job on one pool of workers; returns the jobs a dead worker left unfinished."""
        pool = self._new_pool(min(self.jobs, len(jobs)))
        unfinished = []
        try:
            futures = {}
            for position, job in enumerate(jobs):
                futures[pool.submit(_pool_entry, job)] = position
                on_submit(position, None)
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    position = futures[future]
                    if isinstance(future.exception(), BrokenProcessPool):
                        unfinished.append(position)
                    else:
                        on_result(position, _result_or_failure(jobs[position], future.result))
        finally:
            # On Ctrl-C, queued cells are dropped; running ones die with their workers.
            pool.shutdown(wait=True, cancel_futures=True)
        return sorted(unfinished)

    def _run_isolated(self, jobs, positions: list[int], on_result) -> None:
        from hashbench.runner import JobResult

        queue = list(positions)
        active: dict = {}
        try:
            while queue or active:
                while queue and len(active) < self.jobs:
                    position = queue.pop(0)
                    pool = self._new_pool(1)
                    active[pool.submit(_pool_entry, jobs[position])] = (position, pool)
                done, _ = wait(active, return_when=FIRST_COMPLETED)
                for future in done:
                    position, pool = active.pop(future)
                    pool.shutdown(wait=True)
                    if isinstance(future.exception(), BrokenProcessPool):
                        reason = (
                            "the worker process running this cell died (killed by the OS, e.g. for memory, "
                            "or crashed in native code)"
                        )
                        reason = _record_failure(jobs[position], reason)
                        on_result(position, JobResult(jobs[position].key, Status.FAILED.value, None, reason))
                    else:
                        on_result(position, _result_or_failure(jobs[position], future.result))
        finally:
            for _, pool in active.values():
                pool.shutdown(wait=True, cancel_futures=True)


def _pool_entry(job: CellJob) -> JobResult:
    """What a local worker runs: the cell, with the worker's thread limits in the record."""
    from dataclasses import replace

    from hashbench.runner import run_job

    return run_job(replace(job, execution={**job.execution, "pid": os.getpid(), "threads": thread_report()}))


def _record_failure(job: CellJob, reason: str, log: str | None = None) -> str:
    """Record the cell as failed; returns the reason, which says so when the record could not
    be written (a full or read-only disk fails that cell only: the grid goes on)."""
    from hashbench.runner import record_failure

    try:
        record_failure(job, reason, log)
    except OSError as error:
        return f"{reason}; its failure record could not be written ({error})"
    return reason


def _result_or_failure(job: CellJob, get: Callable[[], JobResult], where: str = "") -> JobResult:
    """The job's result, or a failed one with the reason when the process or job died."""
    from hashbench.runner import JobResult

    try:
        return get()
    except Exception as error:  # a worker killed by the OS, a Slurm job out of time or memory
        message = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {message[0] if message else 'no message'}{where}"
        reason = _record_failure(job, reason, str(error))
        return JobResult(job.key, Status.FAILED.value, None, reason)


def _import_submitit():
    try:
        import submitit
    except ImportError as error:
        raise UserError(
            "--executor slurm needs the submitit package; install it with pip install 'hashbench[slurm]'"
        ) from error
    return submitit


def _slurm_entry(job: CellJob) -> JobResult:
    """What a Slurm job runs: the cell, with the job's identity added to the record."""
    from dataclasses import replace

    from hashbench.runner import run_job

    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        limit_threads(int(cpus))  # what Slurm granted, not the node's full core count
    identity: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    for variable, name in (("SLURM_JOB_ID", "job_id"), ("SLURM_ARRAY_JOB_ID", "array_job_id"), ("SLURM_ARRAY_TASK_ID", "array_task_id")):
        if variable in os.environ:
            identity[name] = os.environ[variable]
    return run_job(replace(job, execution={**job.execution, **identity}))


@dataclass
class SlurmExecutor:
    """``--executor slurm``: one Slurm job per cell, submitted as a job array through submitit."""

    folder: Path  # submitit's scripts, pickles and logs (one sub-folder per job)
    partition: str | None = None
    gpus_per_run: int | None = None
    time_limit: int = 24 * 60  # minutes
    mem_gb: float | None = None
    cpus_per_run: int | None = None
    array_parallelism: int = 64
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    wait: bool = True  # wait for the jobs and report them; otherwise submit and return
    cluster: str = "slurm"  # "local"/"debug": submitit's stand-ins, to try a grid on one machine
    poll_seconds: float | None = None  # None: 15 s on a cluster, 0.5 s for the stand-ins
    remote = True

    def __post_init__(self) -> None:
        self.make()  # refuse a missing submitit or Slurm now, before the grid writes anything

    def make(self):
        """The configured ``submitit.AutoExecutor``."""
        submitit = _import_submitit()
        try:
            executor = submitit.AutoExecutor(folder=str(Path(self.folder) / "%j"), cluster=self.cluster)
            executor.update_parameters(**self.parameters())
        except Exception as error:  # no srun here, an option Slurm does not know, ...
            raise UserError(f"--executor slurm: {str(error).strip().splitlines()[0]}") from error
        return executor

    def describe(self) -> dict[str, Any]:
        settings = {
            "partition": self.partition,
            "gpus_per_run": self.gpus_per_run,
            "time_limit_min": self.time_limit,
            "mem_gb": self.mem_gb,
            "cpus_per_run": self.cpus_per_run,
        }
        return {"executor": "slurm" if self.cluster == "slurm" else f"submitit-{self.cluster}", **{k: v for k, v in settings.items() if v is not None}}

    def parameters(self) -> dict[str, Any]:
        """submitit's ``update_parameters`` arguments (None = leave to the cluster's default)."""
        parameters = {
            "name": "hashbench",
            "timeout_min": self.time_limit,
            "mem_gb": self.mem_gb,
            "gpus_per_node": self.gpus_per_run,
            "cpus_per_task": self.cpus_per_run,
            "tasks_per_node": 1,
            "nodes": 1,
            "slurm_partition": self.partition,
            "slurm_array_parallelism": self.array_parallelism,
            "slurm_account": self.account,
            "slurm_qos": self.qos,
            "slurm_constraint": self.constraint,
        }
        if self.cpus_per_run is not None:
            # Set before the job's Python starts, so every BLAS and OpenMP runtime sees them.
            parameters["slurm_setup"] = [f"export {variable}={self.cpus_per_run}" for variable in THREAD_VARIABLES]
        return {key: value for key, value in parameters.items() if value is not None}

    def run(
        self,
        jobs: list[CellJob],
        on_submit: Callable[[int, str | None], None],
        on_result: Callable[[int, JobResult], None],
    ) -> None:
        from hashbench.runner import JobResult

        if not jobs:
            return
        submitit = _import_submitit()
        executor = self.make()
        try:
            submitted = executor.map_array(_slurm_entry, jobs)
        except Exception as error:  # no Slurm here, a rejected partition or account, ...
            raise UserError(f"--executor slurm: submitting the jobs failed: {str(error).strip().splitlines()[0]}") from error
        positions = {id(job): position for position, job in enumerate(submitted)}
        for position, job in enumerate(submitted):
            on_submit(position, str(job.job_id))
        if not self.wait:
            for position, job in enumerate(jobs):
                on_result(position, JobResult(job.key, Status.PENDING.value))
            return
        poll = self.poll_seconds if self.poll_seconds is not None else (15.0 if self.cluster == "slurm" else 0.5)
        for job in submitit.helpers.as_completed(submitted, poll_frequency=poll):
            position = positions[id(job)]
            where = f" (job {job.job_id}; log {job.paths.stderr})"
            on_result(position, _result_or_failure(jobs[position], job.result, where))
