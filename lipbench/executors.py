"""Where units of work (a run, or an ensemble group: `runner._units`) are trained.

An executor takes the units and calls `deliver(unit, records)` in this process as each unit
finishes, in whatever order they finish; the caller caches, judges and logs. Two executors:

- `local` (default): one spawn process pool on this machine (in this process with one worker).
  When a worker process dies, every unit in flight is tried again alone (no attempt charged, since
  the pool cannot tell whose unit killed it); a unit that kills its own worker twice is reported
  as ERROR.
- `ray`: each unit is a Ray task asking for `num_cpus=1` (and `num_gpus=1` on CUDA); Ray
  schedules it on any node of the cluster, retries it once when its worker or node dies
  (`max_retries`), and hands back its records through its object store; a unit that still has
  no records is reported as ERROR. Ray is imported only here and only when asked for.

Interruptions (`StopSignals`): while units are collected, the first SIGINT or SIGTERM asks for a
stop: the finished units are still delivered, the workers are stopped within a second, and
`Interrupted` is raised; a second signal exits at once (status 130). Pool workers never see a
terminal's Ctrl-C (SIGINT is blocked while they start and ignored in them), so they print nothing
and the driver alone decides.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from lipbench.errors import LipbenchError
from lipbench.records import RunRecord
from lipbench.registry import EXECUTORS, RAY_INSTALL
from lipbench.suite import RunSpec
from lipbench.work import execute_group, failed_record

MAX_ATTEMPTS = 2  # a unit whose worker dies is tried once more, then reported as ERROR
POLL_SECONDS = 0.2  # how often a waiting driver looks for a stop request

Unit = list[RunSpec]
Deliver = Callable[[Unit, list[RunRecord]], None]
log = logging.getLogger("lipbench")


class Interrupted(KeyboardInterrupt):
    """The collection stopped on SIGINT or SIGTERM; every unit that had finished was delivered.

    A KeyboardInterrupt, so that pytest and other callers stop as they do on Ctrl-C."""

    def __init__(self, signal_name: str = "SIGINT"):
        super().__init__(signal_name)
        self.signal_name = signal_name


def exit_at_once(signum: int, frame: object = None) -> None:
    """A signal after a stop was asked for: say so and end the process now, status 130 (a signal handler)."""
    os.write(2, f"lipbench: {signal.Signals(signum).name} again: exiting now\n".encode())
    os._exit(130)


class StopSignals:
    """SIGINT and SIGTERM while collecting: the first asks for a stop, the second exits at once.

    `requested` is polled by the executors. Inside `raising()` (training in this very process)
    the first signal raises `Interrupted` at once instead. Outside the main thread, where Python
    cannot install handlers, nothing changes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._raise_now = False
        self._on_exit: list[Callable[[], None]] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            for stop in self._on_exit:
                with contextlib.suppress(Exception):
                    stop()
            exit_at_once(signum)
        self.requested = name
        if self._raise_now:
            raise Interrupted(name)
        os.write(2, f"lipbench: {name}: stopping the workers (a second one exits at once)\n".encode())

    def check(self) -> None:
        if self.requested:
            raise Interrupted(self.requested)

    @contextlib.contextmanager
    def raising(self) -> Iterator[None]:
        """Training in this process: a signal stops it at once (its unit is lost, nothing else)."""
        self.check()
        self._raise_now = True
        try:
            yield
        finally:
            self._raise_now = False

    @contextlib.contextmanager
    def on_second(self, stop: Callable[[], None]) -> Iterator[None]:
        """Call `stop` (e.g. kill the workers) before exiting on a second signal."""
        self._on_exit.append(stop)
        try:
            yield
        finally:
            self._on_exit.remove(stop)


def check_executor(name: str) -> None:
    """Refuse an unknown executor, or `ray` without Ray installed, before anything is trained."""
    if name not in EXECUTORS:
        raise LipbenchError(f"--executor must be one of {', '.join(EXECUTORS)}, not {name!r}.")
    if name == "ray":
        _import_ray()


def run_units(
    units: list[Unit],
    deliver: Deliver,
    stop: StopSignals,
    *,
    executor: str,
    n_workers: int,
    device: str,
    data_root: str | None,
    engine: str,
    ray_address: str | None = None,
) -> None:
    """Train every unit with the named executor; `deliver` each unit's records as it finishes."""
    check_executor(executor)
    if executor == "ray":
        run_ray(units, deliver, stop, n_workers, device, data_root, engine, ray_address)
    elif n_workers <= 1 or len(units) <= 1:
        for unit in units:  # (a stop requested while the last unit was delivered is no stop)
            with stop.raising():
                records = execute_group(unit, device, data_root, engine)
            deliver(unit, records)
    else:
        run_pool(units, deliver, stop, n_workers, device, data_root, engine)


# ------------------------------------------------------------------ local: a spawn process pool


def _init_worker(threads: int, counter, gpus: int) -> None:
    """Each worker ignores SIGINT (the driver stops it), limits its CPU threads and, with GPUs,
    takes one (its index modulo the count)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    import torch

    torch.set_num_threads(threads)
    if gpus:
        with counter.get_lock():
            index = counter.value
            counter.value += 1
        torch.cuda.set_device(index % gpus)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Processes started in here inherit a blocked SIGINT: a Ctrl-C while they import cannot hit them.
    (A signal that arrives meanwhile is delivered to this process when the block ends.)"""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's workers now (the executor has no public way to) and wait for them."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.kill()


def run_pool(
    units: list[Unit],
    deliver: Deliver,
    stop: StopSignals,
    n_workers: int,
    device: str,
    data_root: str | None,
    engine: str,
) -> None:
    """Train the units in a pool of `n_workers`; when a worker dies, the units in flight go to `_run_alone`.

    A dead worker fails every unfinished future of its pool alike, so the pool cannot say whose unit
    killed it: none of them is charged. The units that had not started go to a fresh pool; those in
    flight (and any unit under two broken pools) are trained alone, each in a pool of its own, where a
    death is its own unit's, and only that counts as an attempt."""
    ctx = mp.get_context("spawn")  # fork after torch (or CUDA) is initialised is unsafe
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    gpus = 0
    if device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
    counter = ctx.Value("i", 0)  # the workers' GPU indices, over every pool of this collection

    def new_pool(size: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(size, mp_context=ctx, initializer=_init_worker, initargs=(threads, counter, gpus))

    suspects: list[Unit] = []  # in flight when a worker died: each is tried again alone
    broken = {id(u): 0 for u in units}  # pools that broke under a unit not seen running (queued, or just started)
    queue = list(units)
    while queue:
        stop.check()  # (a stop asked for while the pool was being replaced)
        with new_pool(n_workers) as pool, stop.on_second(lambda pool=pool: _kill_pool(pool)):
            with _sigint_blocked():
                futures: dict[Future, Unit] = {
                    pool.submit(execute_group, u, device, data_root, engine): u for u in queue
                }
            queue, started = [], set()
            while futures:
                started |= {id(u) for f, u in futures.items() if f.running()}
                done, _ = wait(futures, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                for fut in done:
                    unit = futures.pop(fut)
                    try:
                        records = fut.result()
                    except BrokenProcessPool:
                        if stop.requested:
                            continue
                        broken[id(unit)] += 1
                        in_flight = id(unit) in started or broken[id(unit)] >= MAX_ATTEMPTS
                        (suspects if in_flight else queue).append(unit)
                        continue
                    deliver(unit, records)
                if stop.requested and futures:
                    _stop_pool(pool)
                    stop.check()
    if suspects:
        stop.check()
        log.warning(
            "lipbench: a worker process died; %d units that were in flight are tried again, each alone", len(suspects)
        )
        _run_alone(suspects, deliver, stop, n_workers, new_pool, (device, data_root, engine))


def _run_alone(
    units: list[Unit],
    deliver: Deliver,
    stop: StopSignals,
    n_workers: int,
    new_pool: Callable[[int], ProcessPoolExecutor],
    args: tuple[str, str | None, str],
) -> None:
    """Each unit in a one-process pool of its own (at most `n_workers` at once): a worker that dies is its
    unit's, which is tried again until it has died MAX_ATTEMPTS times, then reported as an ERROR."""
    deaths = {id(u): 0 for u in units}
    queue = list(units)
    running: dict[Future, tuple[Unit, ProcessPoolExecutor]] = {}

    def kill_all() -> None:
        for _, pool in running.values():
            _kill_pool(pool)

    with stop.on_second(kill_all):
        try:
            while queue or running:
                while queue and len(running) < n_workers:
                    unit = queue.pop(0)
                    pool = new_pool(1)
                    with _sigint_blocked():
                        running[pool.submit(execute_group, unit, *args)] = (unit, pool)
                done, _ = wait(running, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                for fut in done:
                    unit, pool = running.pop(fut)
                    pool.shutdown(wait=False)
                    try:
                        records = fut.result()
                    except BrokenProcessPool:
                        if stop.requested:
                            continue
                        deaths[id(unit)] += 1
                        if deaths[id(unit)] >= MAX_ATTEMPTS:
                            message = f"its worker process died {MAX_ATTEMPTS} times (out of memory, or killed?)"
                            deliver(unit, [failed_record(spec, message) for spec in unit])
                        else:
                            queue.append(unit)
                        continue
                    deliver(unit, records)
                if stop.requested and (queue or running):
                    stop.check()
        finally:
            for _, pool in running.values():
                _stop_pool(pool)


# ------------------------------------------------------------------ ray: one task per unit


def _import_ray():
    try:
        import ray
    except ImportError:
        raise LipbenchError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


def _ray_unit(unit: Unit, device: str, data_root: str | None, engine: str) -> list[RunRecord]:
    """A Ray task: train one unit with as many torch threads as CPUs Ray gave it."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    return execute_group(unit, device, data_root, engine)


def start_ray(address: str | None, n_workers: int) -> None:
    """Connect to the cluster at `address` (or RAY_ADDRESS), else start a local one of `n_workers` CPUs.

    Ray stays up for the rest of the process (a pytest session runs many claims) and is shut down
    by Ray itself at exit. A local instance runs its workers at lipbench's own niceness: Ray's default
    (niceness 15) lets any other work on the machine starve the units, as the local executor's are not."""
    ray = _import_ray()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address is None:
        options.update(address="local", num_cpus=n_workers, _system_config={"worker_niceness": 0})
    else:
        options["address"] = address
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "a new local instance"
        fix = (
            "start one with `ray start --head`, or pass --ray-address HOST:PORT of its head node"
            if address
            else "check that this machine can run Ray (`ray start --head` shows why not)"
        )
        raise LipbenchError(f"cannot start Ray on {where}: {str(e).splitlines()[0]}; {fix}") from None


def run_ray(
    units: list[Unit],
    deliver: Deliver,
    stop: StopSignals,
    n_workers: int,
    device: str,
    data_root: str | None,
    engine: str,
    address: str | None,
) -> None:
    ray = _import_ray()
    start_ray(address, n_workers)
    stop.check()  # Ctrl-C while Ray was starting: nothing submitted yet
    gpu = device.startswith("cuda")
    task = ray.remote(_ray_unit).options(
        num_cpus=1,
        num_gpus=1 if gpu else 0,
        max_retries=MAX_ATTEMPTS - 1,
        name="lipbench_unit",
    )
    # Ray sets CUDA_VISIBLE_DEVICES to the task's GPU: it is "cuda" (index 0) in the worker.
    task_device = "cuda" if gpu else device
    pending = {task.remote(unit, task_device, data_root, engine): unit for unit in units}

    def cancel() -> None:
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

    with stop.on_second(cancel):
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                unit = pending.pop(ref)
                try:
                    records = ray.get(ref)
                except ray.exceptions.RayError as e:
                    cause = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                    if isinstance(e, ray.exceptions.RayTaskError):  # raised in the task: not retried
                        message = f"its Ray task raised {cause}"
                    else:  # its worker or node died on every try
                        message = f"its Ray task failed {MAX_ATTEMPTS} times ({type(e).__name__}: {cause})"
                    records = [failed_record(spec, message) for spec in unit]
                deliver(unit, records)
            if stop.requested and pending:
                cancel()
                with contextlib.suppress(Exception):
                    ray.shutdown()  # a local instance ends with it; a cluster keeps running
                stop.check()
