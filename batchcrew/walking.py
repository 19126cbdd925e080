"""Walks: tasks pushed from iterables a slice at a time, as the controller has room for them.

`Controller.walk` and `map` take from their iterables (a generator too) in slices bounded by
count and by time, so that no slice holds the event loop for long, and wait between slices for
room under the controller's `memory_max` (`Budget`), woken as tasks resolve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import AsyncIterator, Generator, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from batchcrew import protocol
from batchcrew.errors import BatchcrewError, ControllerClosedError

if TYPE_CHECKING:
    from batchcrew.controller import Controller, Task, _Arguments, _Batch, _Watch

TASK_BYTES = 300
"""What a queued task costs the controller besides its pickled arguments: its `Task`, its
entries in the controller's and the scheduler's tables, its slot in the walk (measured with
tracemalloc: see benchmarks/walk.py). Counted toward `memory_max`, so that the bound holds for
many tiny tasks too."""

_SLICE_TASKS = 1_000  # at most this many tasks a slice
_SLICE_SECONDS = 0.005  # and a slice stops taking once it has worked this long
_FIRST_SECONDS = 0.01  # the first slice, in the call to walk
_CLOCK_EVERY = 16  # items between looks at the clock
_YIELD_EVERY = 256  # tasks `async for` hands out between yields to the loop
_END: Any = object()  # what next() gives for an exhausted iterable


class Budget:
    """The bytes a controller holds for its unresolved tasks (their pickled arguments and
    `TASK_BYTES` each), against its `memory_max`. Walks and maps wait for room; `push` counts
    but never waits. Waiters are woken as tasks resolve (no polling), once an eighth of the
    bound is free: woken at every resolution, a walk would push its tasks a few at a time,
    and spend a quarter of the controller's time on slices (a million tiny tasks: 8,000
    tasks/s against 10,900 unbounded)."""

    __slots__ = ("_low", "_room", "held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._low = min(limit - 1, limit - limit // 8)  # waiters wake at or under this
        self._room: asyncio.Event | None = None  # made when a walk waits

    def full(self) -> bool:
        return self.held >= self.limit

    def charge(self, payload: bytes | _Arguments) -> None:
        self.held += held_bytes(payload)

    def release(self, payload: bytes | _Arguments) -> None:
        self.held -= held_bytes(payload)
        room = self._room
        if room is not None and self.held <= self._low:
            self._room = None
            room.set()

    async def room(self) -> None:
        """Return once the controller holds an eighth of `limit` less than it (if it is full
        now; else at once)."""
        if self.held < self.limit:
            return
        while self.held > self._low:
            if self._room is None:
                self._room = asyncio.Event()
            await self._room.wait()


def held_bytes(payload: bytes | _Arguments) -> int:
    """What a task with this payload counts toward `memory_max`."""
    if isinstance(payload, bytes):
        return len(payload) + TASK_BYTES
    arguments, buffers = payload
    return len(arguments) + sum(buffer.nbytes for buffer in buffers) + TASK_BYTES


class Walk:
    """Tasks pushed from iterables as the controller has room: what `Controller.walk` returns.

    `await walk` returns the list of its tasks once its iterables are exhausted (awaiting again
    returns it again); `async for task in walk` yields each task as it is pushed; `tasks` is
    what was pushed so far, and `done()` says whether the walk has stopped taking. It is not
    a list: `for task in walk` raises TypeError (await it).

    If an item cannot be pushed (its arguments do not pickle or are over `max_message_size`,
    its name is in use, names run out or are left over) or the iterables raise, the walk stops
    there: the tasks before it keep going, and `await walk` (and `async for`) raise that error,
    which names the item's position. If the controller closes first, they raise
    `ControllerClosedError`; if launching breaks, `LaunchError`.

    The walk belongs to its controller, not to the coroutine awaiting it: cancelling that
    coroutine stops nothing. `cancel()` stops the walk taking, and cancels its unresolved tasks.

    With `keep=False` (`Controller.walk(..., keep=False)`) the walk lets go of each task as
    `async for` hands it out, so that a walk without end over a generator holds only what is
    in flight; `tasks` and `await walk` then give the tasks pushed and not yet handed out.
    """

    def __init__(
        self,
        controller: Controller,
        batch: _Batch,
        rows: Iterator[tuple[Any, ...]],
        names: Iterator[str] | None,
        *,
        keep: bool,
        watch: _Watch | None = None,
    ) -> None:
        self._controller = controller
        self._batch = batch  # the template of each slice's batch (its push time is the slice's)
        self._rows = rows
        self._names = names
        self._keep = keep
        self._watch = watch  # a map's, told of each slice and of the end
        self._tasks: list[Task] = []  # keep=True: every task pushed
        self._held: deque[Task] = deque()  # keep=False: pushed, not yet handed out
        self._taken = 0  # items taken from the iterables (the next one's position)
        self._pushed_count = 0
        self._failure: BaseException | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._fed = asyncio.Event()
        self._more = asyncio.Event()  # replaced at each slice: wakes `async for`
        self._scope: anyio.CancelScope | None = None  # the feeder's, while it runs

    # -- what users call ------------------------------------------------------------------------

    @property
    def tasks(self) -> list[Task]:
        """The tasks pushed so far, in input order (a new list; with `keep=False`, those not
        yet handed out by `async for`)."""
        return list(self._tasks) if self._keep else list(self._held)

    def done(self) -> bool:
        """Whether the walk has stopped taking from its iterables: exhausted, failed,
        cancelled, or its controller closed."""
        return self._ended

    def cancel(self) -> int:
        """Stop taking from the iterables, and cancel the walk's unresolved tasks (as
        `Task.cancel`); return how many were cancelled. `await walk` then returns the tasks
        pushed before (the cancelled ones resolve "cancel")."""
        self._end(None)
        held = self._tasks if self._keep else self._held
        return self._controller._cancel_ids([task.id for task in held if task._result is None])

    def __await__(self) -> Generator[Any, None, list[Task]]:
        return self._wait().__await__()

    async def _wait(self) -> list[Task]:
        await self._fed.wait()
        if self._error is not None:
            raise self._error
        return self.tasks

    def __aiter__(self) -> AsyncIterator[Task]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Task]:
        index = handed = 0
        while True:
            if self._keep:
                while index < len(self._tasks):
                    yield self._tasks[index]
                    index += 1
                    if not index % _YIELD_EVERY:
                        # Awaiting a resolved task does not yield to the loop: a loop body
                        # that only awaits tasks would hold it for a whole backlog.
                        await anyio.lowlevel.checkpoint()
            else:
                while self._held:
                    yield self._held.popleft()
                    handed += 1
                    if not handed % _YIELD_EVERY:
                        await anyio.lowlevel.checkpoint()
            if self._ended:
                if self._error is not None:
                    raise self._error
                return
            await self._more.wait()

    def __iter__(self) -> Iterator[Task]:
        raise TypeError(
            "a Walk pushes its tasks in the background and is not a list: await it for its "
            "tasks (`tasks = await controller.walk(...)`), or `async for task in "
            "controller.walk(...)` to take each as it is pushed"
        )

    def __repr__(self) -> str:
        state = "done" if self._ended else "walking"
        return f"<Walk {self._pushed_count} tasks pushed, {state}>"

    # -- feeding --------------------------------------------------------------------------------

    async def _feed(self) -> None:
        """Push the rest a slice at a time, yielding to the loop between slices and waiting for
        room under the budget: a task of the controller's task group."""
        budget = self._controller._budget
        try:
            with anyio.CancelScope() as self._scope:
                going = not self._ended
                while going:
                    if budget is not None and budget.full():
                        await budget.room()
                    else:
                        await anyio.lowlevel.checkpoint()
                    going = self._push_slice(first=False)
        except Exception as error:  # a fault of batchcrew's own: it fails the walk, not the run
            self._end(error)
            return
        except BaseException:
            self._end(self._closed())  # the controller's task group is cancelled: it closes
            raise
        self._end(self._failure)

    def _push_slice(self, *, first: bool) -> bool:
        """Take the next items and push them as one slice: at most `_SLICE_TASKS` and for at
        most `_SLICE_SECONDS` (the first slice, in the call to walk: at least the controller's
        `workers`, so that they launch together), only while the budget has room. Returns
        whether items may remain. An item that cannot be pushed stops the walk there, the items
        before it pushed; in the first slice it raises at once, and nothing is pushed."""
        controller = self._controller
        if self._ended:
            return False
        try:
            dispatcher = controller._check_running()
        except BatchcrewError as error:
            self._failure = error if first else self._closed(error)
            return False
        workers = controller.max_workers
        count = max(_SLICE_TASKS, workers) if first else _SLICE_TASKS
        floor = workers if first else 0  # taken before the clock may stop the slice
        seconds = _FIRST_SECONDS if first else _SLICE_SECONDS
        budget = controller._budget
        held = 0 if budget is None else budget.held
        batch = dataclasses.replace(self._batch, pushed=time.time())
        taken: set[str] = set()
        prepared: list[tuple[str | None, bytes | _Arguments | Task]] = []
        failure: BaseException | None = None
        more = True
        start = time.perf_counter()
        with protocol.pickling_by_value(controller.modules):
            while len(prepared) < count:
                if budget is not None and held >= budget.limit:
                    break
                if (
                    len(prepared) >= max(floor, 1)
                    and not len(prepared) % _CLOCK_EVERY
                    and time.perf_counter() - start > seconds
                ):
                    break
                position = self._taken
                try:
                    row = next(self._rows, _END)
                    name = _END if self._names is None else next(self._names, _END)
                except Exception as error:
                    failure = self._raised(error, position, first)
                    break
                if row is _END:
                    more = False
                    if name is not _END:
                        failure = ValueError(
                            f"names has more entries than the {position} items of the walk's "
                            f"iterables: give one name per task; {_outcome(position, first)}"
                        )
                    break
                if name is _END and self._names is not None:
                    failure = ValueError(
                        f"names ran out at item {position}: the walk's iterables have more "
                        f"items than names; give one name per task; {_outcome(position, first)}"
                    )
                    break
                try:
                    item = controller._prepare(
                        batch, row, {}, None if name is _END else name, taken
                    )
                except (TypeError, ValueError) as error:
                    failure = self._refused(error, position, first)
                    break
                prepared.append(item)
                self._taken += 1
                if budget is not None and isinstance(item[1], (bytes, tuple)):  # not stored
                    held += held_bytes(item[1])
        if failure is not None:
            if first:
                raise failure
            self._failure = failure
            more = False
        if prepared:
            tasks = controller._commit(dispatcher, batch, prepared)
            self._pushed_count += len(tasks)
            (self._tasks if self._keep else self._held).extend(tasks)
            if self._watch is not None:
                self._watch.add(tasks)
            more_event, self._more = self._more, asyncio.Event()
            more_event.set()
        return more and not self._ended

    def _refused(self, error: Exception, position: int, first: bool) -> Exception:
        """The error for item `position`, whose task batchcrew refused (its arguments, size or
        name): the same type, its message naming the position and what became of the walk."""
        made = type(error)(f"item {position} of the walk: {error}; {_outcome(position, first)}")
        made.__cause__ = error
        return made

    def _raised(self, error: Exception, position: int, first: bool) -> Exception:
        """Taking item `position` from the iterables (or names) raised `error`: raised as it
        is, with a note of where."""
        error.add_note(
            f"batchcrew: raised by the walk's iterables (or names) at item {position}; "
            f"{_outcome(position, first)}"
        )
        return error

    def _closed(self, error: BaseException | None = None) -> BaseException:
        if error is not None and not isinstance(error, ControllerClosedError):
            return error  # launching broke: the LaunchError that every waiter gets
        return ControllerClosedError(
            f"controller {self._controller.name!r} closed while the walk was pushing: it "
            f"pushed {self._pushed_count} task(s) (walk.tasks); items from {self._taken} on "
            "were not taken"
        )

    def _end(self, error: BaseException | None) -> None:
        """Stop taking (idempotent): wake who awaits or iterates, stop the feeder, tell the
        controller (its `wait` counts a walk taking as unresolved work) and a map."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        self._rows, self._names = iter(()), None  # let the iterables go (a generator's frame)
        if self._scope is not None:
            self._scope.cancel()
        self._fed.set()
        self._more.set()
        self._controller._walk_ended(self)
        if self._watch is not None:
            self._watch.fed(error)


def _outcome(position: int, first: bool) -> str:
    if first:
        return "nothing was pushed"
    if position == 0:
        return "the walk stopped there, and pushed nothing"
    return (
        f"the walk stopped there: items 0 to {position - 1} were pushed and go on (walk.tasks), "
        "the rest were not taken; walk the rest once it is fixed"
    )
