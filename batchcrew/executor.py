"""`Executor`: a controller behind the `concurrent.futures` contract, for code that is not
async (scripts, Jupyter, libraries written for `ProcessPoolExecutor`).

It runs a controller on an event loop of its own, in a background thread, so it works the same
in a plain script and in a notebook whose own loop is already running. Its futures behave as
`ProcessPoolExecutor`'s: a task's own exception comes back, a running call cannot be cancelled
(`Executor.interrupt` stops it on purpose), and work submitted before the interpreter exits
completes first. docs/index.md lists where it differs, and why.

Everything that touches the controller runs on its loop; the futures, the exit hook and a
collected Executor's finalizer hold the `_Runner` (controller, loop, thread), never the
Executor, so that dropping the last reference to an Executor shuts it down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator

# The standard library's own chunk runner (`ProcessPoolExecutor.map`'s): a worker imports it by
# reference from a module it loads anyway, not this one (which loads the controller's side).
from concurrent.futures.process import _process_chunk
from typing import Any, TypeVar

from batchcrew.controller import Controller, Task
from batchcrew.errors import CrashError, LaunchError, TaskError
from batchcrew.results import Result

T = TypeVar("T")

logger = logging.getLogger("batchcrew.executor")

_PUSH_KEYWORDS = frozenset(("name", "seconds_timeout", "seed", "retries", "retry_on"))

# Executors not closed yet: the interpreter's exit waits for their work, then closes them.
_live: set[_Runner] = set()
_live_lock = threading.Lock()
_exiting = False  # the interpreter has begun to exit: no submit from now on


def _at_exit() -> None:
    """Before the interpreter joins its threads (the hook `concurrent.futures`' own pools use):
    every open Executor finishes the work submitted to it, then closes, with its workers."""
    global _exiting
    with _live_lock:
        _exiting = True
        runners = list(_live)
    for runner in runners:
        runner.shutdown(wait=True, cancel_futures=False)


threading._register_atexit(_at_exit)  # type: ignore[attr-defined]  # (public in effect since 3.9)


class _Future(concurrent.futures.Future[T]):
    """A task's future. Its state changes only on the controller's loop, so that `cancel`
    and `running` see the scheduler's own view: queued, or held by a worker."""

    def __init__(self, runner: _Runner) -> None:
        super().__init__()
        self._runner = runner
        self._task: Task | None = None  # once pushed

    def cancel(self) -> bool:
        """Cancel the call if it is still queued; False if a worker holds it (it runs on: see
        `Executor.interrupt`) or it has finished. As `concurrent.futures.Future.cancel`."""
        if self.done():
            return self.cancelled()
        return self._runner.call(self._runner.cancel, self)

    def running(self) -> bool:
        """Whether a worker holds the call now (running it, or next in its pipeline)."""
        if self.done():
            return False
        return self._runner.call(self._runner.running, self)


class _Runner:
    """An Executor's controller, its loop and the loop's thread."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.loop = asyncio.new_event_loop()
        self.lock = threading.Lock()  # orders submit, shutdown and the loop's stop
        self.closing = False  # shutdown began: no submit from now on
        self.stopped = False  # the loop runs no more callbacks
        self.closed = threading.Event()
        # On the loop: a waiter for each future pushed and not yet settled, and its future.
        self.waiters: dict[asyncio.Task[None], _Future[Any]] = {}
        self.thread = threading.Thread(
            target=self._serve, name=f"batchcrew-executor-{controller.name}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.controller.start(), self.loop).result()
        except BaseException:
            self.shutdown(wait=True, cancel_futures=True)
            raise
        with _live_lock:
            _live.add(self)

    def _serve(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            with self.lock:
                self.stopped = True
            # What was scheduled before `stopped` runs (a `call` waits on it); then what is
            # left (nothing, after a shutdown) is cancelled, and the loop closes.
            loop.run_until_complete(asyncio.sleep(0))
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.wait(left))
            loop.close()
            with _live_lock:
                _live.discard(self)
            self.closed.set()

    def call(self, function: Callable[[_Future[Any]], bool], future: _Future[Any]) -> bool:
        """`function(future)` on the loop, returning what it returns; False if the loop has
        stopped (its futures are all settled then). Inline on the loop's own thread (a
        done-callback)."""
        if threading.get_ident() == self.thread.ident:
            return function(future)
        answer: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def run() -> None:
            try:
                answer.set_result(function(future))
            except BaseException as error:
                answer.set_exception(error)

        with self.lock:
            if self.stopped:
                return False
            self.loop.call_soon_threadsafe(run)
        return answer.result()

    # -- on the loop ------------------------------------------------------------------------

    def push(
        self,
        future: _Future[Any],
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        if future.done():
            return  # cancelled before it reached the loop
        if _PUSH_KEYWORDS.intersection(kwargs):
            # `push` would take these for itself: `submit` passes every keyword to `fn`.
            function, kwargs = functools.partial(function, **kwargs), {}
        try:
            task = self.controller.push(function, *args, **kwargs)
        except BaseException as error:  # pickling runs the arguments' code: SystemExit too
            _deliver(future, error=error)
            return
        future._task = task
        waiter = self.loop.create_task(self._settle(task, future))
        self.waiters[waiter] = future
        waiter.add_done_callback(self._settled)

    def _settled(self, waiter: asyncio.Task[None]) -> None:
        del self.waiters[waiter]

    async def _settle(self, task: Task, future: _Future[Any]) -> None:
        try:
            result = await task
        except asyncio.CancelledError:
            if not future.done():  # the loop is closing under it (it never does after shutdown)
                message = f"the Executor closed before task {task.name!r} resolved"
                _deliver(future, error=concurrent.futures.BrokenExecutor(message))
            return
        except BaseException as error:  # the controller broke: a LaunchError, say
            if not future.done():
                _deliver(future, error=error)
            return
        future._task = None
        del task  # the caller may drop the value at once: hold nothing of it here
        if future.done():
            return  # cancelled or interrupted: it resolved "cancel" for that
        if result.status == "success":
            value = result.result
            del result
            _deliver(future, value)
        else:
            _deliver(future, error=_error(result))

    def cancel(self, future: _Future[Any]) -> bool:
        if future.done():
            return future.cancelled()
        task = future._task
        if task is not None:
            if task.done() or task.running():
                return False  # a worker holds it, or its result is on the way to the future
            task.cancel()
        return _cancelled(future)

    def interrupt(self, future: _Future[Any]) -> bool:
        if future.done():
            return False
        task = future._task
        if task is not None:
            if task.done():
                return False
            task.cancel()
        return _cancelled(future)

    def running(self, future: _Future[Any]) -> bool:
        task = future._task
        return task is not None and not future.done() and task.running()

    def cancel_queued(self) -> None:
        for future in list(self.waiters.values()):
            self.cancel(future)

    async def close(self) -> None:
        try:
            if self.waiters:
                await asyncio.wait(list(self.waiters))
            await self.controller.wait("all")
        except BaseException as error:  # it broke (its futures say why): close all the same
            logger.debug("executor of controller %s closing after: %r", self.controller.name, error)
        finally:
            try:
                await self.controller.aclose()
                if self.waiters:  # after a break: their tasks resolved as the controller closed
                    await asyncio.wait(list(self.waiters), timeout=5.0)
            finally:
                self.loop.stop()

    # -- from any thread ----------------------------------------------------------------------

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self.lock:
            first = not self.closing
            self.closing = True
            if not self.stopped:
                if cancel_futures:
                    self.loop.call_soon_threadsafe(self.cancel_queued)
                if first:
                    self.loop.call_soon_threadsafe(self.loop.create_task, self.close())
        if wait and threading.get_ident() != self.thread.ident and self.thread.ident is not None:
            self.closed.wait()
            self.thread.join()


def _batched(items: Iterator[Any], size: int) -> Iterator[tuple[Any, ...]]:
    while chunk := tuple(itertools.islice(items, size)):
        yield chunk


def _deliver(future: _Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    """Settle `future`. Its done-callbacks run here, on the loop: `concurrent.futures` logs
    what they raise, but a SystemExit or KeyboardInterrupt would end the loop's thread."""
    try:
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
    except BaseException:
        logger.exception("a done-callback of a batchcrew Executor future raised")


def _cancelled(future: _Future[Any]) -> bool:
    try:
        concurrent.futures.Future.cancel(future)  # (its done-callbacks run here: see `_deliver`)
    except BaseException:
        logger.exception("a done-callback of a batchcrew Executor future raised")
    future.set_running_or_notify_cancel()  # wakes `wait` and `as_completed`
    return True


def _error(result: Result) -> BaseException:
    """What `future.result()` raises for a task that did not succeed: its own exception (with
    the worker's traceback as its `__cause__`) if it could travel, else a batchcrew error."""
    if result.exception is not None:
        return result.exception
    message = f"task {result.name!r} ended with status {result.status}: {result.error}"
    if result.status == "crash":
        return CrashError(message, result)
    return TaskError(message, result)


class Executor(concurrent.futures.Executor):
    """A `concurrent.futures.Executor` whose work runs on a batchcrew controller.

    `Executor(**options)` takes the options of `Controller` (workers, launcher, ...), starts
    it on a loop in a background thread, and returns once it listens. The standard library's
    names work too: `Executor(max_workers, initializer=, initargs=, max_tasks_per_child=)`
    (`max_workers` is `workers`, `max_tasks_per_child` is `tasks_max`).

    `submit(fn, *args, **kwargs)` returns a `concurrent.futures.Future` of the task's value.
    A task that raises raises that exception from `future.result()`, with the worker's
    traceback as its `__cause__` (as `ProcessPoolExecutor`); one whose exception cannot be
    unpickled here, or that timed out, was cancelled or crashed raises `TaskError` (`CrashError`,
    also a `BrokenProcessPool`, for a crash), whose `result` says why.

    `future.cancel()` cancels a call still queued, and returns False once a worker holds it;
    `Executor.interrupt(future)` stops a running one. `shutdown()` (or leaving a `with` block)
    waits for the work submitted, then closes the controller, its workers and the thread; an
    Executor never shut down is shut down when it is collected, and at interpreter exit.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        max_tasks_per_child: int | None = None,
        **controller_options: Any,
    ) -> None:
        if max_workers is not None:
            if "workers" in controller_options:
                raise TypeError(
                    "Executor takes workers= or max_workers= (the standard library's name for "
                    "it), not both"
                )
            if isinstance(max_workers, int) and max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
            controller_options["workers"] = max_workers
        if max_tasks_per_child is not None:
            if "tasks_max" in controller_options:
                raise TypeError(
                    "Executor takes tasks_max= or max_tasks_per_child= (the standard library's "
                    "name for it), not both"
                )
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
            controller_options["tasks_max"] = max_tasks_per_child
        # A bad option raises here, before any thread or socket exists.
        runner = _Runner(Controller(**controller_options))
        runner.start()
        self._runner = runner
        weakref.finalize(self, runner.shutdown, False, False)

    @property
    def controller(self) -> Controller:
        """The controller running this Executor's tasks (on the Executor's own loop)."""
        return self._runner.controller

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        return self._runner.loop

    @property
    def _broken(self) -> BaseException | None:
        """Why the controller can run nothing more (a `LaunchError`), or None."""
        return self._runner.controller._error

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Push `fn(*args, **kwargs)`; the future holds its value, or raises its exception.
        Every keyword goes to `fn` (even `name` or `seed`: use the controller to set those)."""
        runner = self._runner
        future: _Future[T] = _Future(runner)
        with runner.lock:
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if runner.closing:
                raise RuntimeError("cannot schedule new futures after shutdown")
            broken = runner.controller._error
            if broken is not None:
                if isinstance(broken, LaunchError):
                    raise broken
                raise concurrent.futures.BrokenExecutor(
                    f"the Executor's controller stopped on an error: {broken!r}"
                ) from broken
            runner.loop.call_soon_threadsafe(runner.push, future, fn, args, kwargs)
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """As `ProcessPoolExecutor.map`: `fn` over the iterables' items, in order, each call
        a task (with `chunksize` > 1, each `chunksize` calls one task). The iterables are read
        at once; a call that raised raises when its value is reached."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = super().map(
            functools.partial(_process_chunk, fn),
            _batched(zip(*iterables, strict=False), chunksize),
            timeout=timeout,
        )
        return itertools.chain.from_iterable(chunks)

    def interrupt(self, future: concurrent.futures.Future[Any]) -> bool:
        """Cancel `future`'s task even if a worker runs it: the worker interrupts it (as
        `Controller.cancel` does), and the future is cancelled. False if it had finished."""
        if not isinstance(future, _Future) or future._runner is not self._runner:
            raise ValueError(f"{future!r} is not a future of this Executor")
        if future.done():
            return False
        return self._runner.call(self._runner.interrupt, future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let the work submitted finish (cancelling what is still queued first, with
        `cancel_futures`), then close the controller, its workers and the loop's thread.
        Whatever happened before (a `LaunchError`, say), it closes and raises nothing.
        Idempotent; `wait=False` returns at once, and the closing goes on in the background
        (the interpreter's exit waits for it)."""
        self._runner.shutdown(wait, cancel_futures)
