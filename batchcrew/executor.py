"""`Executor`: a concurrent.futures bridge for code that is not async (scripts, Jupyter).

It runs a controller on an event loop of its own, in a background thread, so it works the same
in a plain script and in a notebook whose own loop is already running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from batchcrew.controller import Controller
from batchcrew.errors import TaskError

T = TypeVar("T")

_PUSH_KEYWORDS = frozenset(("name", "seconds_timeout", "seed", "retries", "retry_on"))


class Executor(concurrent.futures.Executor):
    """A `concurrent.futures.Executor` whose work runs on a batchcrew controller.

    `Executor(**options)` takes the options of `Controller` (workers, launcher, ...), starts
    it on a loop in a background thread, and returns once it listens. `submit(fn, *args,
    **kwargs)` returns a `concurrent.futures.Future` of the task's value; a task that fails
    raises `TaskError` (its `result` says why) from `future.result()`. `map` comes from
    `concurrent.futures.Executor`. `future.cancel()` cancels the task, interrupting it if a
    worker runs it. `shutdown()` (or leaving a `with` block) closes the
    controller and its workers and ends the thread.
    """

    def __init__(self, **controller_options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="batchcrew-executor", daemon=True
        )
        self._thread.start()
        self._shutdown = False
        self._lock = threading.Lock()
        self.controller = Controller(**controller_options)
        try:
            self._call(self.controller.start())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Push `fn(*args, **kwargs)`; the future holds its value, or raises `TaskError`."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to an Executor after shutdown")
            return asyncio.run_coroutine_threadsafe(self._run(fn, args, kwargs), self._loop)

    async def _run(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        if _PUSH_KEYWORDS.intersection(kwargs):
            # `push` would take these for itself: `submit` passes every keyword to `fn`.
            fn, kwargs = functools.partial(fn, **kwargs), {}
        task = self.controller.push(fn, *args, **kwargs)
        try:
            result = await task
        except asyncio.CancelledError:
            task.cancel()  # `future.cancel()`: the work stops too, on its worker
            raise
        if result.status != "success":
            raise TaskError(
                f"task {result.name!r} ended with status {result.status}: {result.error}", result
            )
        value: T = result.result
        return value

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Close the controller (cancelling unfinished tasks if `cancel_futures`), its
        workers, and the loop's thread. Idempotent. `wait=False` returns without waiting."""
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True

        async def close() -> None:
            if cancel_futures:
                self.controller.cancel(all=True)
            else:
                await self.controller.wait("all")
            await self.controller.aclose()

        closing = asyncio.run_coroutine_threadsafe(close(), self._loop)
        closing.add_done_callback(lambda _: self._loop.call_soon_threadsafe(self._loop.stop))
        if wait:
            closing.result()
            self._thread.join()
            self._loop.close()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
