"""A joblib parallel backend, "batchcrew": joblib's calls (scikit-learn's `n_jobs=-1`) run on
batchcrew workers, local processes or AWS Batch jobs.

`import batchcrew.joblib` registers it; then `with joblib.parallel_config(backend="batchcrew",
workers=8, launcher=...)`. Each batch of calls is one task; its results, or the exception one of
its calls raised, come back as joblib reports them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import difflib
import inspect
import itertools
import logging
import pickle
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import cloudpickle
from joblib import ParallelBackendBase, register_parallel_backend
from joblib.externals.loky.process_executor import _ExceptionWithTraceback
from joblib.parallel import AutoBatchingMixin, FallbackToBackend, SequentialBackend

from batchcrew.errors import TaskInterrupted

# A worker imports this module for `_run_batch`: the controller's side (polars, the dispatcher)
# is imported only where the backend runs, inside its methods.
if TYPE_CHECKING:
    from batchcrew.controller import Controller, Task
    from batchcrew.executor import Executor
    from batchcrew.results import Result

__all__ = ["BatchcrewBackend"]

logger = logging.getLogger("batchcrew")

#: How long a call from joblib's thread waits on the controller's loop for a quick job (cancel
#: this call's tasks) before it gives up: the loop is blocked if it takes longer.
_SECONDS_LOOP = 30.0

#: `Parallel`'s keywords for its backend that are joblib's own (the others are a controller's).
_JOBLIB_KEYWORDS = frozenset(
    ("max_nbytes", "temp_folder", "mmap_mode", "prefer", "require", "verbose", "context")
)

#: Numbers `Parallel` calls, for task names unique in this process: joblib-<call>-<batch>.
_CALLS = itertools.count(1)


def _run_batch(data: Any, buffers: Sequence[Any]) -> Any:
    """What a worker runs for one batch (the task's function, the same for every batch): unpickle
    the batch of calls and run it. Returns the list of the calls' results or, if one raised (or
    the batch did not unpickle here), the exception packed the way joblib's own workers pack it:
    type, message, and the worker's traceback, which becomes the `__cause__` of the exception
    raised in the caller.

    The batch comes as an argument, cloudpickled by the backend, rather than as the task's
    function: a worker keeps its recent functions, and a batch holds its calls' data.
    """
    try:
        calls = pickle.loads(data, buffers=buffers)
        return calls()
    except TaskInterrupted:
        raise  # cancelled or timed out: the worker resolves it so
    except BaseException as error:
        # Any exception a call raised, KeyboardInterrupt and SystemExit too, is re-raised in the
        # caller with its own type, as loky does.
        packed = _ExceptionWithTraceback(error)
        if not _pickles(packed):
            raise  # the worker reports its type, message and traceback as text instead
        return packed


@dataclass(slots=True)
class _Call:
    """One `Parallel` call: its number (tasks are named joblib-<call>-<batch>), whether it is
    being aborted, and, on a controller with more workers than its n_jobs, the slots that keep
    at most n_jobs of its batches on the controller at once."""

    number: int
    slots: asyncio.Semaphore | None
    batches: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    aborting: bool = False


def _pickles(value: Any) -> bool:
    try:
        cloudpickle.dumps(value)
    except Exception:
        return False
    return True


class BatchcrewBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's "batchcrew" backend: `Parallel` calls run as tasks on a batchcrew controller.

    `joblib.parallel_config(backend="batchcrew", **options)` makes one, with either a
    controller's options (`workers`, `launcher`, `seconds_timeout`, `host`, ... as for
    `bc.Controller`) or `controller=`, a running `bc.Controller` to reuse.

    With options, each `Parallel` call (each `fit` of a scikit-learn search) starts a
    controller on an event loop of its own, in a thread, and closes it, with its workers, when
    the call ends. With `controller=`, the controller is yours: it stays up between calls, so
    its workers do too. It must run on an event loop in another thread than the one calling
    joblib (a `bc.Executor`'s controller, say), since joblib blocks its caller while it waits.

    `n_jobs=-1` means the controller's `workers` (and -2 one fewer, as in joblib); a positive
    `n_jobs` runs at most that many batches at once (with options, `workers` defaults to it).
    When that comes to one, joblib runs the calls in the calling process, as it does for every
    backend. Calls nested in a task run on its worker, in threads (then sequentially, deeper).

    Raises TypeError for an unknown option, ValueError for a bad value or `n_jobs=0`.
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    uses_threads = False
    supports_sharedmem = False
    # `Parallel()` without n_jobs: all the controller's workers, as for joblib's dask backend.
    default_n_jobs = -1

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        controller: Controller | None = None,
        **options: Any,
    ) -> None:
        if inner_max_num_threads is not None:
            raise ValueError(
                "the batchcrew backend does not set inner_max_num_threads: limit threads on "
                "the workers with an initializer (threadpoolctl) or environment variables"
            )
        super().__init__(nesting_level=nesting_level)
        self._given = _check_controller(controller, options)
        self._options = {} if controller is not None else _check_options(options)
        self._lock = threading.Lock()
        self._users = 0  # configured Parallel objects: the controller stays up while any is
        self._executor: Executor | None = None
        self._controller: Controller | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs = 1  # batches at once, for the configured Parallel
        self._call: _Call | None = None
        self._pending: dict[int, Task] = {}  # unresolved tasks of this backend (on the loop)

    @property
    def controller(self) -> Controller | None:
        """The controller running this backend's tasks now: the one given as `controller=`,
        or the one a `Parallel` call started; None between calls."""
        return self._controller if self._controller is not None else self._given

    @property
    def _workers(self) -> Executor | None:
        """The Executor of the controller this backend started, while a call uses it; None
        otherwise. (joblib's tests read a backend's pool from `_workers`, as loky's names it.)"""
        return self._executor

    # -- how many at once -------------------------------------------------------------------

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches run at once: `n_jobs` (None: 1), at most the controller's
        `workers`; a negative `n_jobs` counts back from `workers` (-1: all of them)."""
        if n_jobs == 0:
            raise ValueError(
                "n_jobs == 0 in Parallel has no meaning: use n_jobs=-1 for all of the batchcrew "
                "backend's workers, or a positive number"
            )
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        workers = self._workers_for(n_jobs)
        if n_jobs < 0:
            return max(workers + 1 + n_jobs, 1)
        return min(n_jobs, workers)

    def _workers_for(self, n_jobs: int) -> int:
        if self._given is not None:
            return _workers_of(self._given)
        workers = self._options.get("workers")
        if workers is not None:
            return int(workers)
        return n_jobs if n_jobs > 0 else 1  # the controller's default: one worker

    # -- a Parallel call's life -------------------------------------------------------------

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        """Start (or join) the controller for a `Parallel` call; return how many batches run
        at once. joblib's memmapping options (`max_nbytes`, `temp_folder`, `mmap_mode`) do
        not apply: arguments travel pickled, large arrays as out-of-band buffers. Other
        keywords of `Parallel` (`initializer`, `initargs`, ...) are options of the controller
        this call starts."""
        options = {k: v for k, v in backend_kwargs.items() if k not in _JOBLIB_KEYWORDS}
        if options and self._given is not None:
            raise ValueError(
                f"Parallel({', '.join(sorted(options))}=...) would not apply to the running "
                "controller given to the batchcrew backend as controller=: give them to that "
                "controller instead"
            )
        jobs = self.effective_n_jobs(n_jobs)
        if self._given is not None:
            _loop_of(self._given)  # a controller that is not running is an error, whatever n_jobs
        if jobs == 1:
            if n_jobs != 1:
                asked = f"n_jobs={n_jobs}"
                if n_jobs in (None, -1):  # (joblib makes Parallel()'s None default_n_jobs)
                    asked = "n_jobs=-1 (all the backend's workers, as Parallel() without n_jobs)"
                warnings.warn(
                    f"{asked} comes to one batch at a time on this batchcrew backend "
                    f"(workers={self._workers_for(n_jobs or -1)}), so joblib runs the calls in "
                    "this process, as it does for one job on any backend; give the backend more "
                    "workers (workers=) to run them on workers",
                    stacklevel=4,
                )
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        with self._lock:
            if self._controller is None:
                given = _check_options({**self._options, **options}) if options else None
                self._connect(jobs, given)
                self._jobs = jobs
            else:
                _check_not_this_thread(self._controller, self._loop)
            self._users += 1
        return jobs

    def _connect(self, jobs: int, options: dict[str, Any] | None = None) -> None:
        if self._given is not None:
            loop = _loop_of(self._given)
            _check_not_this_thread(self._given, loop)
            self._controller, self._loop = self._given, loop
            return
        from batchcrew.executor import Executor

        executor = Executor(**{**(options or self._options), "workers": jobs})
        self._executor, self._controller = executor, executor.controller
        self._loop = _loop_of(executor.controller)

    def start_call(self) -> None:
        """A `Parallel` call begins."""
        controller = self._controller
        # joblib keeps 2 x n_jobs batches in flight: a controller of more workers than n_jobs
        # (one given with controller=) would run them all at once without these slots.
        crowded = controller is not None and _workers_of(controller) > self._jobs
        self._call = _Call(next(_CALLS), asyncio.Semaphore(self._jobs) if crowded else None)

    def terminate(self) -> None:
        """A `Parallel` call (or a `with Parallel(...)` block) ends: cancel what it left
        unresolved, and close the controller if this backend started it and no other
        `Parallel` uses it."""
        with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users:
                return
            executor = self._executor
            # Its tasks went to the controller directly, not through the Executor's futures
            # (which its shutdown(cancel_futures=True) would cancel): cancel them here.
            self._on_loop(self._cancel_pending)
            self._executor = self._controller = self._loop = None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call raised, or the caller was interrupted (Ctrl-C): cancel every task of this
        backend still unresolved, interrupting those that run. The controller stays up."""
        if self._call is not None:
            self._call.aborting = True  # its batches not yet pushed never will be
        self._on_loop(self._cancel_pending)

    # -- batches ----------------------------------------------------------------------------

    def submit(
        self, func: Any, callback: Callable[[Any], None] | None = None
    ) -> concurrent.futures.Future[Result | None]:
        """Push the batch `func` as a task; the future holds its `Result` (None if the call
        was aborted before it went out). joblib's `callback` runs when it resolves."""
        controller, loop, call = self._controller, self._loop, self._call
        if controller is None or loop is None or call is None:
            raise RuntimeError("the batchcrew backend is not configured: use it through joblib")
        name = f"joblib-{call.number}-{next(call.batches)}"
        future: concurrent.futures.Future[Result | None]
        try:
            batch = _pickle_batch(func, _modules_of(controller))
        except Exception as error:
            # Raised here, in joblib's callback, it would be lost: the call fails through it.
            from batchcrew.errors import SerializationError

            future = concurrent.futures.Future()
            future.set_exception(
                SerializationError(
                    f"cannot pickle joblib batch {name!r} ({_describe(func)}): "
                    f"{type(error).__name__}: {error}"
                )
            )
        else:
            future = asyncio.run_coroutine_threadsafe(
                self._run(controller, call, batch, name), loop
            )
        if callback is not None:
            future.add_done_callback(callback)
        return future

    async def _run(
        self, controller: Controller, call: _Call, batch: _Pickled, name: str
    ) -> Result | None:
        if call.slots is None:
            return await self._push(controller, call, batch, name)
        async with call.slots:
            return await self._push(controller, call, batch, name)

    async def _push(
        self, controller: Controller, call: _Call, batch: _Pickled, name: str
    ) -> Result | None:
        if call.aborting:
            return None
        task = controller.push(_run_batch, batch.data, batch.buffers, name=name)
        self._pending[task.id] = task
        try:
            return await task
        except asyncio.CancelledError:
            task.cancel()  # the loop is going away: the work stops too
            raise
        finally:
            self._pending.pop(task.id, None)

    def retrieve_result_callback(self, out: concurrent.futures.Future[Result | None]) -> Any:
        """The batch's list of results; or raise what its call raised (with the worker's
        traceback as its cause), or `bc.TaskError` if the task itself failed (crashed,
        timed out, cancelled)."""
        from batchcrew.errors import TaskError

        result = out.result()
        if result is None:
            raise concurrent.futures.CancelledError("the Parallel call was aborted")
        if result.status != "success":
            message = f"joblib batch {result.name!r} ended with status {result.status}"
            if result.error:
                message += f": {result.error}"
            raise TaskError(message, result)
        value = result.result
        if isinstance(value, BaseException):  # unpickled from `_ExceptionWithTraceback`
            raise value
        return value

    # -- the controller's loop --------------------------------------------------------------

    def _cancel_pending(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()

    def _on_loop(self, function: Callable[[], None]) -> None:
        """Run `function` on the controller's loop and wait for it (briefly)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if _running_loop() is loop:
            function()
            return

        async def call() -> None:
            function()

        try:
            asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=_SECONDS_LOOP)
        except TimeoutError:
            logger.warning(
                "joblib backend: the controller's event loop did not answer within %g s; "
                "tasks of this Parallel call may still be running",
                _SECONDS_LOOP,
            )


@dataclass(frozen=True, slots=True)
class _Pickled:
    """A batch of calls, cloudpickled: the stream, and its large buffers (NumPy arrays) apart,
    uncopied, so that they travel out of band."""

    data: pickle.PickleBuffer
    buffers: list[pickle.PickleBuffer]


def _pickle_batch(calls: Any, modules: Sequence[ModuleType]) -> _Pickled:
    # cloudpickle, as a task's function would be: functions of a script's __main__ and
    # closures travel by value, and so do the modules the controller was given.
    from batchcrew import protocol

    buffers: list[pickle.PickleBuffer] = []
    with protocol.pickling_by_value(modules):
        data = cloudpickle.dumps(calls, protocol=5, buffer_callback=buffers.append)
    return _Pickled(pickle.PickleBuffer(data), buffers)


def _describe(calls: Any) -> str:
    """Say what a batch holds: "4 call(s) of fit_one"."""
    try:
        count, function = len(calls), calls.items[0][0]
    except (AttributeError, IndexError, TypeError):
        return repr(calls)[:80]
    return f"{count} call(s) of {getattr(function, '__name__', type(function).__name__)}"


def _check_controller(controller: object, options: dict[str, Any]) -> Controller | None:
    if controller is None:
        return None
    from batchcrew.controller import Controller

    if not isinstance(controller, Controller):
        hint = " (pass executor.controller)" if hasattr(controller, "controller") else ""
        raise TypeError(
            f"controller must be a running bc.Controller{hint}, not {type(controller).__name__}"
        )
    if options:
        raise ValueError(
            f"give the batchcrew backend either controller= or a controller's options, not "
            f"both: {', '.join(sorted(options))} would not apply to a running controller"
        )
    return controller


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options, checked at once as `bc.Controller` checks them (it is made, not started)."""
    from batchcrew.controller import Controller

    known = [name for name in inspect.signature(Controller).parameters if name != "self"]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"unknown option {name!r} for the batchcrew joblib backend{hint} Its options are "
                f"bc.Controller's ({', '.join(known)}), or controller= to reuse a running one"
            )
    checked = {"name": "joblib", **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said once, by the controller each call starts
        Controller(**checked)
    return checked


def _workers_of(controller: Controller) -> int:
    return controller.max_workers


def _modules_of(controller: Controller) -> tuple[ModuleType, ...]:
    return controller.modules


def _loop_of(controller: Controller) -> asyncio.AbstractEventLoop:
    """The event loop a started controller runs on (where its runner task lives)."""
    loop = controller.loop
    if not controller.running or loop is None:
        raise RuntimeError(
            f"controller {controller.name!r} is not running: start it (async with, await "
            "controller.start(), or bc.Executor) before joblib uses it"
        )
    if not loop.is_running():
        raise RuntimeError(
            f"the event loop of controller {controller.name!r} is not running, so it cannot "
            "take joblib's tasks; run that loop in a thread (bc.Executor does)"
        )
    return loop


def _check_not_this_thread(controller: Controller, loop: asyncio.AbstractEventLoop | None) -> None:
    if loop is not None and _running_loop() is loop:
        raise RuntimeError(
            f"controller {controller.name!r} runs on this thread's event loop, which joblib "
            "would block while it waits for results: call joblib from another thread (await "
            "asyncio.to_thread(search.fit, X, y)), or give parallel_config a controller's "
            "options instead, and batchcrew runs a controller on a thread of its own"
        )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


register_parallel_backend("batchcrew", BatchcrewBackend)
