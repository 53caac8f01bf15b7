"""Where the cells of a grid run: local worker processes, or Slurm jobs through submitit.

Running in this process, in order, needs no executor (``run_grid(spec)``). The executors
here take :class:`hashbench.run.runner.CellJob` s (plain data) and run each with
:func:`hashbench.run.runner.run_job` in a fresh process, which writes into the shared results
directory under the run's file lock, so several runners or jobs can share one directory.
A worker guards its methods as the runner's own process does (``os._exit`` fails the cell,
the working directory is restored: :mod:`hashbench.run.containment`, through ``run_cell``).
Local workers are handed one cell at a time, so the runner knows which cell each runs: a
worker that dies fails that cell alone, a cell past its time limit is stopped with its
worker, and on Ctrl-C no further cell is handed out and the running workers are stopped
(they ignore SIGINT themselves, so the terminal's signal to the process group is the
runner's alone to handle).

This module imports nothing heavy at the top: spawned workers import it to run their
initializer, which must set the BLAS thread variables before numpy is first imported.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import wait as connection_wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hashbench.errors import UserError, first_line
from hashbench.run.containment import exit_now
from hashbench.storage.records import Status

if TYPE_CHECKING:
    from hashbench.run.runner import CellJob, JobResult

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
        # os._exit, not the guard a running method sees (hashbench.run.containment).
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


# How long a stopped worker gets to end on SIGTERM before it is killed.
STOP_GRACE_SECONDS = 3.0


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored here for a moment (main thread only: elsewhere signals cannot be set).

    A process started meanwhile is born ignoring it, from its first instruction: Python then
    installs no KeyboardInterrupt handler. That is how a worker stays out of a Ctrl-C that
    reaches the whole process group; the runner decides what becomes of it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Worker:
    """One spawned worker process, fed one job at a time through a pipe."""

    def __init__(self, context: Any, threads: int) -> None:
        self.connection, child_end = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child_end, threads, os.getpid()), name="hashbench-worker"
        )
        with _sigint_ignored():
            self.process.start()
        child_end.close()
        self.position: int | None = None  # the job it runs, None while idle
        self.sent = 0.0  # time.monotonic() when that job was sent
        # When the worker said it had started: a spawned interpreter importing torch takes
        # seconds (more on a busy machine), which are not its first cell's.
        self.ready_at: float | None = None

    @property
    def started(self) -> float | None:
        """When its cell's clock started: the later of sending the job and the worker's start
        (None while the worker is still starting)."""
        return None if self.ready_at is None else max(self.sent, self.ready_at)

    def send(self, position: int, job: CellJob) -> None:
        self.connection.send(job)
        self.position, self.sent = position, time.monotonic()

    def stop(self) -> None:
        """End the process now (SIGTERM, then SIGKILL): its cell stays an interrupted folder,
        resumable from its last checkpoint; the kernel drops its locks."""
        _stop_all([self])

    def close(self) -> None:
        """Let an idle worker end on its own (it reads the None)."""
        try:
            self.connection.send(None)
        except OSError:  # already gone
            pass
        self.process.join(STOP_GRACE_SECONDS)
        self.stop()


def _stop_all(workers: list[_Worker]) -> None:
    """SIGTERM to every worker at once, SIGKILL to those still there after the grace time."""
    for worker in workers:
        if worker.process.is_alive():
            worker.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.connection.close()


def _worker_main(connection: Any, threads: int, parent_pid: int) -> None:
    """A worker's life: run the jobs it is sent, one at a time, until it is sent None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle
    _worker_initializer(threads, parent_pid)
    # What every cell imports (torch among it: seconds on a busy machine) is imported before
    # the worker says it is ready, so that a cell's time limit counts the cell's own time.
    import torch  # noqa: F401

    import hashbench.run.runner  # noqa: F401

    connection.send(_READY)
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):  # the runner is gone
            return
        if job is None:
            return
        try:
            result: Any = _pool_entry(job)
        except BaseException as error:  # outside the method (run_cell contains those): say what
            result = _Crash(f"{type(error).__name__}: {first_line(error)}", traceback.format_exc())
        connection.send(result)


# What a worker sends once it has started (interpreter, imports, thread limits).
_READY = "ready"


@dataclass
class _Crash:
    """What a worker sends back when running the job itself raised."""

    reason: str
    log: str


def _died_reason(exitcode: int | None) -> str:
    how = ""
    if exitcode is not None and exitcode < 0:
        try:
            how = f"; it ended on {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"; it ended on signal {-exitcode}"
    elif exitcode:
        how = f"; exit status {exitcode}"
    return (
        "the worker process running this cell died (killed by the OS, e.g. for memory, "
        f"or crashed in native code{how})"
    )


def timeout_reason(seconds: float) -> str:
    return (
        f"stopped after the cell time limit of {seconds:g} s (--cell-timeout, cell_timeout); "
        "a deep method resumes from its last checkpoint when run again with a longer limit"
    )


@dataclass
class LocalPoolExecutor:
    """``--executor local --jobs N``: N spawned worker processes, each with C // N threads.

    Each worker is sent one cell at a time, so the runner always knows which cell a worker
    runs: a worker that dies fails that cell alone (and a fresh worker takes the rest), a
    cell past ``cell_timeout`` seconds is stopped with its worker, and on Ctrl-C no further
    cell is handed out and the running ones are stopped at once.
    """

    jobs: int
    cpus: int | None = None  # None: this process's available CPUs
    cell_timeout: float | None = None  # seconds; None: no limit
    remote = False

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise UserError(f"--jobs must be at least 1, got {self.jobs}")

    @property
    def threads(self) -> int:
        return fair_share(self.jobs, self.cpus)

    def describe(self) -> dict[str, Any]:
        described = {"executor": "local", "jobs": self.jobs, "threads_per_job": self.threads, "host": socket.gethostname()}
        if self.cell_timeout is not None:
            described["cell_timeout_s"] = self.cell_timeout
        return described

    def run(
        self,
        jobs: list[CellJob],
        on_submit: Callable[[int, str | None], None],
        on_result: Callable[[int, JobResult], None],
    ) -> None:
        """Run the jobs; ``on_submit`` is called as a worker starts each.

        The thread variables are set in this process's environment while workers start,
        because a worker inherits it before anything imports numpy: a spawned worker may
        import the parent's main module (a console script imports the CLI, hence numpy)
        before any initializer runs.
        """
        if not jobs:
            return
        # spawn, not fork: a fresh interpreter, with no copied torch/OpenMP state or held locks.
        context = multiprocessing.get_context("spawn")
        waiting = deque(range(len(jobs)))
        workers: list[_Worker] = []

        def new_worker() -> _Worker:
            with _environment({variable: str(self.threads) for variable in THREAD_VARIABLES}):
                worker = _Worker(context, self.threads)
            workers.append(worker)
            return worker

        try:
            for _ in range(min(self.jobs, len(jobs))):
                new_worker()
            while True:
                for worker in list(workers):
                    if worker.position is None and waiting:
                        position = waiting.popleft()
                        try:
                            worker.send(position, jobs[position])
                        except OSError:  # it died while idle: a fresh one takes the cell
                            waiting.appendleft(position)
                            worker.stop()
                            workers.remove(worker)
                            new_worker()
                            continue
                        on_submit(position, None)
                busy = [worker for worker in workers if worker.position is not None]
                if not busy:
                    break
                for worker in self._wait(busy):
                    self._collect(worker, jobs, on_result)
                    if worker.position is not None or worker.process.is_alive():
                        continue
                    workers.remove(worker)  # dead or stopped: its cell is settled, a fresh one goes on
                    if waiting:
                        new_worker()
        except BaseException:
            # Ctrl-C (or any error here): no further cell starts; running ones stop now and
            # stay interrupted, resumable. A second Ctrl-C meanwhile must not leave workers.
            with _sigint_ignored():
                _stop_all(workers)
            raise
        for worker in workers:
            worker.close()

    def _wait(self, busy: list[_Worker]) -> list[_Worker]:
        """The busy workers with news: a result, a death, or a cell past its time limit."""
        limit = self.cell_timeout
        timeout = None
        clocks = [worker.started for worker in busy if worker.started is not None]
        if limit is not None and clocks:
            timeout = max(0.0, min(clocks) + limit - time.monotonic())
        handles = [worker.connection for worker in busy] + [worker.process.sentinel for worker in busy]
        ready = set(connection_wait(handles, timeout))
        now = time.monotonic()
        return [
            worker
            for worker in busy
            if worker.connection in ready
            or worker.process.sentinel in ready
            or (limit is not None and worker.started is not None and now - worker.started >= limit)
        ]

    def _collect(self, worker: _Worker, jobs: list[CellJob], on_result) -> None:
        from hashbench.run.runner import JobResult

        position = worker.position
        assert position is not None
        job = jobs[position]
        message: Any = None
        hung_up = False  # the pipe's far end closed: the worker is ending or gone
        if worker.connection.poll():
            try:
                message = worker.connection.recv()
            except (EOFError, OSError):
                hung_up = True
        if message == _READY:  # it has started: its cell's clock starts now
            worker.ready_at = time.monotonic()
            return
        if isinstance(message, _Crash):
            result = JobResult(job.key, Status.FAILED.value, None, _record_failure(job, message.reason, message.log))
        elif message is not None:
            result = message
        else:
            # Its sentinel is readable once it has exited (is_alive() may not know yet).
            if hung_up or connection_wait([worker.process.sentinel], 0):
                worker.process.join()
                reason = _died_reason(worker.process.exitcode)
            else:  # no answer and still running: past its time limit
                reason = timeout_reason(self.cell_timeout or 0.0)
            worker.stop()  # its locks go with it, so the failure can be recorded
            result = JobResult(job.key, Status.FAILED.value, None, _record_failure(job, reason))
        worker.position = None
        on_result(position, result)


def _pool_entry(job: CellJob) -> JobResult:
    """What a local worker runs: the cell, with the worker's thread limits in the record."""
    from dataclasses import replace

    from hashbench.run.runner import run_job

    return run_job(replace(job, execution={**job.execution, "pid": os.getpid(), "threads": thread_report()}))


def _record_failure(job: CellJob, reason: str, log: str | None = None) -> str:
    """Record the cell as failed; returns the reason, which says so when the record could not
    be written (a full or read-only disk fails that cell only: the grid goes on)."""
    from hashbench.run.runner import record_failure

    try:
        record_failure(job, reason, log)
    except OSError as error:
        return f"{reason}; its failure record could not be written ({error})"
    return reason


def _result_or_failure(job: CellJob, get: Callable[[], JobResult], where: str = "") -> JobResult:
    """The job's result, or a failed one with the reason when the process or job died."""
    from hashbench.run.runner import JobResult

    try:
        return get()
    except Exception as error:  # a worker killed by the OS, a Slurm job out of time or memory
        reason = f"{type(error).__name__}: {first_line(error)}{where}"
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

    from hashbench.run.runner import run_job

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
    cell_timeout: float | None = None  # seconds: the job's time limit when below time_limit
    remote = True

    @property
    def timeout_min(self) -> int:
        """The job's time limit in whole minutes: Slurm's granularity, so a cell limit rounds up."""
        if self.cell_timeout is None:
            return self.time_limit
        return min(self.time_limit, max(1, math.ceil(self.cell_timeout / 60)))

    def __post_init__(self) -> None:
        self.make()  # refuse a missing submitit or Slurm now, before the grid writes anything

    def make(self):
        """The configured ``submitit.AutoExecutor``."""
        submitit = _import_submitit()
        try:
            executor = submitit.AutoExecutor(folder=str(Path(self.folder) / "%j"), cluster=self.cluster)
            executor.update_parameters(**self.parameters())
        except Exception as error:  # no srun here, an option Slurm does not know, ...
            raise UserError(f"--executor slurm: {first_line(error)}") from error
        return executor

    def describe(self) -> dict[str, Any]:
        settings = {
            "partition": self.partition,
            "gpus_per_run": self.gpus_per_run,
            "time_limit_min": self.timeout_min,
            "cell_timeout_s": self.cell_timeout,
            "mem_gb": self.mem_gb,
            "cpus_per_run": self.cpus_per_run,
        }
        return {"executor": "slurm" if self.cluster == "slurm" else f"submitit-{self.cluster}", **{k: v for k, v in settings.items() if v is not None}}

    def parameters(self) -> dict[str, Any]:
        """submitit's ``update_parameters`` arguments (None = leave to the cluster's default)."""
        parameters = {
            "name": "hashbench",
            "timeout_min": self.timeout_min,
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
        from hashbench.run.runner import JobResult

        if not jobs:
            return
        submitit = _import_submitit()
        executor = self.make()
        try:
            submitted = executor.map_array(_slurm_entry, jobs)
        except Exception as error:  # no Slurm here, a rejected partition or account, ...
            raise UserError(f"--executor slurm: submitting the jobs failed: {first_line(error)}") from error
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
            if self.cell_timeout is not None and _timed_out(job):
                reason = f"{timeout_reason(self.timeout_min * 60)}{where}"
                on_result(position, JobResult(jobs[position].key, Status.FAILED.value, None, _record_failure(jobs[position], reason)))
                continue
            on_result(position, _result_or_failure(jobs[position], job.result, where))


def _timed_out(job: Any) -> bool:
    """Whether Slurm ended the job for its time limit (state TIMEOUT)."""
    try:
        return str(job.state).upper().startswith("TIMEOUT")
    except Exception:  # sacct unreachable: the result's own error says what happened
        return False
