"""Controller groups: several controllers, each with its own kind of workers, behind one object.

Built on the controllers' public surface, as crew's controller groups are: a group has the same
methods as a controller, with the same arguments, plus which controller(s) to use. Waiting
across controllers is event-driven: it waits on each selected controller at once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import polars as pl

from batchcrew.controller import Controller, Task, _check_error_mode
from batchcrew.results import ErrorMode, Result, handle_failures, results_frame
from batchcrew.retrying import RetryOn
from batchcrew.walking import Walk


class ControllerGroup:
    """Controllers with distinct names, used as one: `async with bc.ControllerGroup(a, b):`.

    `push`, `walk` and `map` take `controller="name"` (default: the first controller);
    `wait`, `pop`, `collect`, `results`, `cancel`, `counts` and `summary` take
    `controllers=[...]` (default: all) and work across them. A controller's `backup` must be
    in the group: a task that crashes `crashes_max` times on a controller runs on its backup,
    and its result comes back through the original task. Task names given at push are unique
    across the group among held tasks (unresolved, or resolved and not taken).

    Raises ValueError for no controller, duplicate names, or a backup outside the group.
    """

    def __init__(self, *controllers: Controller) -> None:
        if not controllers:
            raise ValueError("a ControllerGroup needs at least one controller")
        for controller in controllers:
            if not isinstance(controller, Controller):
                raise TypeError(
                    f"a ControllerGroup holds batchcrew Controllers, not "
                    f"{type(controller).__name__}"
                )
        names = [controller.name for controller in controllers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(
                f"controllers of a group need distinct names; repeated: {', '.join(duplicates)}"
            )
        self.controllers: dict[str, Controller] = dict(zip(names, controllers, strict=True))
        """The controllers, by name, in the order given."""
        for controller in controllers:
            backup = controller.backup
            if backup is not None and self.controllers.get(backup.name) is not backup:
                raise ValueError(
                    f"the backup of controller {controller.name!r}, {backup.name!r}, is not in "
                    "this group: add it, so that the group starts and closes it too"
                )
        self._turn = itertools.count()

    # -- life cycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start every controller; if one fails to start, close the others and raise."""
        started: list[Controller] = []
        try:
            for controller in self.controllers.values():
                await controller.start()
                started.append(controller)
        except BaseException:
            with anyio.CancelScope(shield=True):
                for controller in reversed(started):
                    await controller.aclose()
            raise

    async def aclose(self, seconds_grace: float = 5.0, *, detach: bool = False) -> None:
        """Close every controller, each before its backup (its tasks on the backup are
        cancelled with it). Idempotent. `detach=True`: see `Controller.aclose` (every
        controller of the group needs a journal)."""
        for controller in self._closing_order():
            await controller.aclose(seconds_grace, detach=detach)

    def _closing_order(self) -> list[Controller]:
        order: list[Controller] = []

        def visit(controller: Controller) -> None:
            if controller in order:
                return
            for other in self.controllers.values():
                if other.backup is controller:
                    visit(other)  # those that hand tasks to it first
            order.append(controller)

        for controller in self.controllers.values():
            visit(controller)
        return order

    # -- pushing --------------------------------------------------------------------------------

    def push(
        self,
        function: Callable[..., Any],
        /,
        *args: Any,
        name: str | None = None,
        seconds_timeout: float | None = None,
        seed: int | None = None,
        retries: int | None = None,
        retry_on: RetryOn | None = None,
        controller: str | None = None,
        **kwargs: Any,
    ) -> Task:
        """`Controller.push` on controller `controller` (default: the first). To pass a
        keyword called `controller` to `function`, bind it first (`functools.partial`)."""
        target = self._one(controller)
        self._check_names([name] if name is not None else [], target)
        return target.push(
            function,
            *args,
            name=name,
            seconds_timeout=seconds_timeout,
            seed=seed,
            retries=retries,
            retry_on=retry_on,
            **kwargs,
        )

    def walk(
        self,
        function: Callable[..., Any],
        *iterables: Iterable[Any],
        names: Iterable[str] | None = None,
        seconds_timeout: float | None = None,
        retries: int | None = None,
        retry_on: RetryOn | None = None,
        keep: bool = True,
        controller: str | None = None,
    ) -> Walk:
        """`Controller.walk` on controller `controller` (default: the first). A name in use on
        another controller of the group stops the walk at that item, as one in use on
        `controller` does."""
        target = self._one(controller)
        return target.walk(
            function,
            *iterables,
            names=None if names is None else self._checked_names(names, target),
            seconds_timeout=seconds_timeout,
            retries=retries,
            retry_on=retry_on,
            keep=keep,
        )

    async def map(
        self,
        function: Callable[..., Any],
        *iterables: Iterable[Any],
        names: Iterable[str] | None = None,
        error: ErrorMode = "raise",
        progress: bool = False,
        seconds_timeout: float | None = None,
        retries: int | None = None,
        retry_on: RetryOn | None = None,
        controller: str | None = None,
    ) -> pl.DataFrame:
        """`Controller.map` on controller `controller` (default: the first); tasks that a
        backup finishes come back here too."""
        target = self._one(controller)
        return await target.map(
            function,
            *iterables,
            names=None if names is None else self._checked_names(names, target),
            error=error,
            progress=progress,
            seconds_timeout=seconds_timeout,
            retries=retries,
            retry_on=retry_on,
        )

    def _checked_names(self, names: Iterable[str], target: Controller) -> Iterator[str]:
        """`names`, each checked as a walk takes it: a name unresolved on another controller
        of the group raises ValueError there."""
        for name in names:
            self._check_names([name], target)
            yield name

    def _check_names(self, names: Sequence[str], target: Controller) -> None:
        for name in names:
            for other in self.controllers.values():
                held = other.task(name) if other is not target else None
                if held is not None:
                    raise ValueError(
                        f"a task named {name!r} is already held on controller {other.name!r} "
                        "(unresolved, or its result not taken); names must be unique across "
                        "the group among held tasks: take its result first, or use another name"
                    )

    # -- results --------------------------------------------------------------------------------

    async def wait(
        self,
        mode: Literal["all", "one"] = "all",
        timeout: float | None = None,  # noqa: ASYNC109 - the pinned API, like crew's wait()
        controllers: Iterable[str] | None = None,
    ) -> bool:
        """`Controller.wait` across `controllers` (default: all): every task of all of them
        resolved ("all"), or a resolved result waiting on any of them ("one"). Waits on each
        at once; returns False after `timeout` seconds."""
        if mode not in ("all", "one"):
            raise ValueError(f'mode must be "all" or "one", not {mode!r}')
        chosen = self._some(controllers)
        outcomes: dict[str, bool] = {}
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            async with anyio.create_task_group() as group:

                async def wait_on(controller: Controller) -> None:
                    outcomes[controller.name] = await controller.wait(mode)
                    if mode == "one" and outcomes[controller.name]:
                        group.cancel_scope.cancel()  # one is enough

                for controller in chosen:
                    group.start_soon(wait_on, controller)
        if mode == "one":
            return any(outcomes.values())
        return len(outcomes) == len(chosen) and all(outcomes.values())

    def pop(
        self, error: ErrorMode = "ignore", controllers: Iterable[str] | None = None
    ) -> Result | None:
        """`Controller.pop` across `controllers` (default: all), taking turns between them so
        that none is starved. Never blocks."""
        _check_error_mode(error)
        chosen = self._some(controllers)
        first = next(self._turn) % len(chosen)
        for controller in chosen[first:] + chosen[:first]:
            result = controller.pop(error)
            if result is not None:
                return result
        return None

    def collect(
        self, error: ErrorMode = "ignore", controllers: Iterable[str] | None = None
    ) -> pl.DataFrame:
        """`Controller.collect` across `controllers` (default: all), as one DataFrame."""
        _check_error_mode(error)
        results: list[Result] = []
        for controller in self._some(controllers):
            while (result := controller.pop()) is not None:
                results.append(result)
        handle_failures(results, error)
        return results_frame(results)

    async def results(self, controllers: Iterable[str] | None = None) -> AsyncIterator[Result]:
        """`Controller.results` across `controllers` (default: all): results as they resolve,
        from whichever controller, until nothing is left unresolved in any of them."""
        chosen = [controller.name for controller in self._some(controllers)]
        while True:
            result = self.pop(controllers=chosen)
            if result is not None:
                yield result
                continue
            if not await self.wait("one", controllers=chosen):
                return

    def task(self, name: str) -> Task | None:
        """The task called `name` that a controller of the group still holds (the first
        controller that has one, in the group's order)."""
        for controller in self.controllers.values():
            found = controller.task(name)
            if found is not None:
                return found
        return None

    def forget(self, name: str, *, controllers: Iterable[str] | None = None) -> bool:
        """`Controller.forget` on each of `controllers` (default: all) that has a journal;
        returns whether any held a success for `name`."""
        journaled = [c for c in self._some(controllers) if c._journal_path is not None]
        if not journaled:
            raise ValueError(
                "no controller of this group has a journal: only a journal keeps results to forget"
            )
        return any([controller.forget(name) for controller in journaled])

    def cancel(
        self,
        names: Iterable[str] = (),
        *,
        all: bool = False,
        controllers: Iterable[str] | None = None,
    ) -> int:
        """`Controller.cancel` across `controllers` (default: all); returns how many."""
        listed = [names] if isinstance(names, str) else list(names)
        return sum(controller.cancel(listed, all=all) for controller in self._some(controllers))

    async def everywhere(
        self,
        function: Callable[..., Any],
        /,
        *args: Any,
        controllers: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> pl.DataFrame:
        """`Controller.everywhere` on each of `controllers` (default: all) at once: their
        tables together, with a `controller` column first."""
        chosen = self._some(controllers)
        tables: dict[str, pl.DataFrame] = {}

        async def run(controller: Controller) -> None:
            tables[controller.name] = await controller.everywhere(function, *args, **kwargs)

        async with anyio.create_task_group() as group:
            for controller in chosen:
                group.start_soon(run, controller)
        return pl.concat(
            [
                tables[controller.name].select(
                    pl.lit(controller.name).alias("controller"), pl.all()
                )
                for controller in chosen
            ]
        )

    def counts(self, controllers: Iterable[str] | None = None) -> dict[str, int]:
        """`Controller.counts` summed across `controllers` (default: all)."""
        total: dict[str, int] = {}
        for controller in self._some(controllers):
            for key, value in controller.counts().items():
                total[key] = total.get(key, 0) + value
        return total

    def summary(self, controllers: Iterable[str] | None = None) -> pl.DataFrame:
        """One row per controller of `controllers` (default: all), with the columns of
        `Controller.summary`."""
        return pl.concat([controller.summary() for controller in self._some(controllers)])

    def workers(self, controllers: Iterable[str] | None = None) -> pl.DataFrame:
        """`Controller.workers` of `controllers` (default: all), with a `controller` column
        first."""
        return self._tables(Controller.workers, controllers)

    def timeline(self, controllers: Iterable[str] | None = None) -> pl.DataFrame:
        """`Controller.timeline` of `controllers` (default: all), with a `controller` column
        first, in the order tasks ended."""
        return self._tables(Controller.timeline, controllers).sort("ended", nulls_last=True)

    async def serve_dashboard(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        controllers: Iterable[str] | None = None,
    ) -> str:
        """`Controller.serve_dashboard` for `controllers` (default: all) on one page, which
        shows them together (their figures added up) or one at a time. The first of them
        serves it, so it stops when that one closes (closing the group closes it)."""
        chosen = self._some(controllers)
        return await chosen[0]._serve_dashboard(chosen, host, port)

    def _tables(
        self, table: Callable[[Controller], pl.DataFrame], controllers: Iterable[str] | None
    ) -> pl.DataFrame:
        return pl.concat(
            [
                table(controller).select(pl.lit(controller.name).alias("controller"), pl.all())
                for controller in self._some(controllers)
            ]
        )

    # -- choosing controllers -------------------------------------------------------------------

    def _one(self, name: str | None) -> Controller:
        if name is None:
            return next(iter(self.controllers.values()))
        return self._some([name])[0]

    def _some(self, names: Iterable[str] | None) -> list[Controller]:
        if names is None:
            return list(self.controllers.values())
        listed = [names] if isinstance(names, str) else list(names)
        unknown = [name for name in listed if name not in self.controllers]
        if unknown or not listed:
            raise ValueError(
                f"no controller named {', '.join(map(repr, unknown)) or 'at all'} in this "
                f"group; its controllers are {', '.join(map(repr, self.controllers))}"
            )
        return [self.controllers[name] for name in listed]

    def __repr__(self) -> str:
        return f"<ControllerGroup {', '.join(map(repr, self.controllers))}>"
