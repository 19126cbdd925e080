"""Walks: taking from any iterable a slice at a time, within `memory_max`, on real workers."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import numpy as np
import pytest

import batchcrew as bc
from batchcrew.walking import TASK_BYTES
from tests.conftest import MakeController, watch_resolutions
from tests.tasks import add, wait_for


def numbers(count: int) -> Iterator[int]:
    yield from range(count)


def failing_at(count: int, at: int) -> Iterator[int]:
    for number in range(count):
        if number == at:
            raise RuntimeError("the source failed")
        yield number


# -- taking from iterables ---------------------------------------------------------------------


async def test_a_walk_over_a_generator_resolves_every_task_exactly_once(
    controller: MakeController,
) -> None:
    crew = await controller(workers=2)
    resolutions = watch_resolutions(crew)
    walk = crew.walk(add, numbers(3_000), numbers(3_000))  # several slices
    assert isinstance(walk, bc.Walk)
    with anyio.fail_after(60):
        tasks = await walk
        results = [await task for task in tasks]
    assert walk.done()
    assert [result.result for result in results] == [2 * i for i in range(3_000)]
    assert len({task.id for task in tasks}) == 3_000
    assert set(resolutions) == {task.id for task in tasks}
    assert set(resolutions.values()) == {1}
    assert crew.counts()["tasks"] == 3_000
    assert await walk == tasks  # awaiting again answers the same


async def test_a_walk_takes_its_items_in_slices_with_the_loop_running_between(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1)
    turns = 0
    seen: list[int] = []  # for each item taken, how many turns another task had had

    async def turn() -> None:
        nonlocal turns
        while True:
            turns += 1
            await anyio.lowlevel.checkpoint()

    def items() -> Iterator[int]:
        for number in range(5_000):
            seen.append(turns)
            yield number

    async with anyio.create_task_group() as group:
        group.start_soon(turn)
        await anyio.lowlevel.checkpoint()
        walk = crew.walk(add, items(), range(5_000))
        assert 0 < len(walk.tasks) < 5_000  # a first slice in the call, the rest after it
        with anyio.fail_after(60):
            tasks = await walk
        group.cancel_scope.cancel()
    slices = Counter(seen)  # items taken between two turns of the other task
    assert len(slices) >= 5
    assert max(slices.values()) <= 1_000
    assert len(tasks) == 5_000
    with anyio.fail_after(60):
        assert await crew.wait("all")


async def test_a_walk_takes_from_a_generator_only_as_tasks_resolve(
    controller: MakeController,
) -> None:
    limit = 10 * TASK_BYTES
    crew = await controller(workers=2, memory_max=limit)
    ahead: list[int] = []  # for each item taken: how many taken and not yet resolved

    def items() -> Iterator[int]:
        for number in range(300):
            counts = crew.counts()
            ahead.append(number - (counts["tasks"] - counts["unresolved"]))
            yield number

    with anyio.fail_after(60):
        tasks = await crew.walk(add, items(), range(300))
        results = [await task for task in tasks]
    assert [result.result for result in results] == [2 * i for i in range(300)]
    # Each task counts at least TASK_BYTES, and the walk takes only while under the limit.
    assert max(ahead) < limit // TASK_BYTES
    assert max(ahead) >= 2  # and it keeps both workers fed meanwhile


async def test_wait_and_results_count_a_walk_still_taking(controller: MakeController) -> None:
    crew = await controller(workers=1, memory_max=2 * TASK_BYTES)
    walk = crew.walk(add, numbers(50), range(50))
    first = len(walk.tasks)
    assert crew.cancel(all=True) == first  # nothing unresolved now, but the walk goes on
    assert crew.counts()["unresolved"] == 0
    assert not walk.done()
    with anyio.fail_after(60):
        assert await crew.wait("all")
    assert walk.done()
    assert crew.counts()["success"] == 50 - first
    crew.collect()
    walk = crew.walk(add, numbers(50), range(50))
    first = len(walk.tasks)
    assert crew.cancel(all=True) == first
    with anyio.fail_after(60):
        seen = [result.status async for result in crew.results()]
    assert Counter(seen) == {"cancel": first, "success": 50 - first}


async def test_a_walk_is_awaited_or_iterated_asynchronously_not_as_a_list(
    controller: MakeController,
) -> None:
    crew = await controller()
    walk = crew.walk(add, range(3), range(3))
    with pytest.raises(TypeError, match="await it"):
        for _ in walk:
            pass
    with pytest.raises(TypeError, match="await it"):
        _, _, _ = walk
    with anyio.fail_after(30):
        tasks = await walk
        assert [task async for task in walk] == tasks
        assert [task async for task in walk] == tasks  # each `async for` from the start
        assert [(await task).result for task in tasks] == [0, 2, 4]


async def test_a_walk_that_keeps_nothing_hands_each_task_out_once(
    controller: MakeController,
) -> None:
    crew = await controller(workers=2, memory_max=50 * TASK_BYTES)
    walk = crew.walk(add, numbers(3_000), range(3_000), keep=False)
    results = []
    with anyio.fail_after(60):
        async for task in walk:
            results.append((await task).result)
    assert results == [2 * i for i in range(3_000)]
    assert walk.tasks == []
    assert await walk == []
    assert crew.counts()["unresolved"] == 0
    with pytest.raises(TypeError, match="keep must be True or False"):
        crew.walk(add, [1], [2], keep=None)  # type: ignore[arg-type]


# -- items that cannot be pushed -------------------------------------------------------------


async def test_an_item_that_cannot_be_pickled_stops_the_walk_there(
    controller: MakeController,
) -> None:
    crew = await controller()
    lock = threading.Lock()
    with pytest.raises(bc.SerializationError, match=r"item 3 of the walk: .*nothing was pushed"):
        crew.walk(add, [0, 1, 2, lock], range(4))  # in the first slice: raised at once
    assert crew.counts()["tasks"] == 0
    items = (lock if i == 2_500 else i for i in range(4_000))
    walk = crew.walk(add, items, range(4_000))
    with (
        anyio.fail_after(60),
        pytest.raises(
            bc.SerializationError,
            match=r"item 2500 of the walk: cannot pickle .*argument 0: lock.*items 0 to 2499 "
            r"were pushed",
        ),
    ):
        await walk
    assert walk.done()
    tasks = walk.tasks
    assert len(tasks) == 2_500
    with anyio.fail_after(60):
        results = [await task for task in tasks]
    assert [result.result for result in results] == [2 * i for i in range(2_500)]
    handed: list[bc.Task] = []

    async def take_all() -> None:
        async for task in walk:  # the tasks pushed, then the error
            handed.append(task)

    with pytest.raises(bc.SerializationError, match="item 2500"):
        await take_all()
    assert handed == tasks
    assert crew.counts()["tasks"] == 2_500


async def test_an_iterable_that_raises_stops_the_walk_there(controller: MakeController) -> None:
    crew = await controller()
    with pytest.raises(RuntimeError, match="the source failed") as raised:
        crew.walk(add, failing_at(10, 5), range(10))
    assert "at item 5; nothing was pushed" in raised.value.__notes__[0]
    walk = crew.walk(add, failing_at(3_000, 1_500), range(3_000))
    with anyio.fail_after(60), pytest.raises(RuntimeError, match="the source failed") as raised:
        await walk
    assert "at item 1500; the walk stopped there" in raised.value.__notes__[0]
    assert len(walk.tasks) == 1_500
    with anyio.fail_after(60):
        assert await crew.wait("all")
    assert crew.counts()["success"] == 1_500


async def test_names_may_be_a_generator_and_must_match_the_items(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller()
    with anyio.fail_after(60):
        tasks = await crew.walk(
            add, range(2_500), range(2_500), names=(f"n{i}" for i in range(2_500))
        )
        assert [task.name for task in tasks] == [f"n{i}" for i in range(2_500)]
        assert await crew.wait("all")
    crew.collect()
    with pytest.raises(ValueError, match=r"names ran out at item 2: .*nothing was pushed"):
        crew.walk(add, range(3), range(3), names=["a", "b"])
    with pytest.raises(ValueError, match=r"names has more entries than the 1 items"):
        crew.walk(add, [1], [1], names=["a", "b"])
    short = crew.walk(add, range(2_500), range(2_500), names=(f"s{i}" for i in range(1_500)))
    with anyio.fail_after(60), pytest.raises(ValueError, match="names ran out at item 1500"):
        await short
    assert len(short.tasks) == 1_500
    long = crew.walk(add, range(1_500), range(1_500), names=(f"l{i}" for i in range(1_501)))
    with anyio.fail_after(60), pytest.raises(ValueError, match="more entries than the 1500 items"):
        await long
    assert len(long.tasks) == 1_500
    gate = tmp_path / "gate"
    held = crew.push(wait_for, str(gate), name="taken")
    names = ("taken" if i == 1_200 else f"d{i}" for i in range(2_000))
    clash = crew.walk(add, range(2_000), range(2_000), names=names)
    with (
        anyio.fail_after(60),
        pytest.raises(ValueError, match="item 1200 of the walk: a task named 'taken' is already"),
    ):
        await clash
    assert len(clash.tasks) == 1_200
    gate.touch()
    with anyio.fail_after(60):
        assert (await held).result == "through"


# -- memory_max ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "1 GiB"])
def test_memory_max_is_a_whole_number_of_bytes(value: object) -> None:
    with pytest.raises(ValueError, match="memory_max must be a whole number of bytes >= 1"):
        bc.Controller(memory_max=value)  # type: ignore[arg-type]


async def test_push_counts_toward_memory_max_but_never_waits_and_a_walk_waits_for_room(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=2, memory_max=1)
    gate = tmp_path / "gate"
    held = [crew.push(wait_for, str(gate)) for _ in range(3)]  # all at once, over the bound
    assert crew.counts()["unresolved"] == 3
    walk = crew.walk(add, range(5), range(5))
    assert walk.tasks == []  # no room: nothing taken
    assert not await crew.wait("all", timeout=0.3)
    assert walk.tasks == []
    assert not walk.done()
    gate.touch()
    with anyio.fail_after(60):
        tasks = await walk  # one at a time, each as the one before resolves
        assert [(await task).result for task in tasks] == [0, 2, 4, 6, 8]
        assert [(await task).result for task in held] == ["through"] * 3


async def test_a_task_larger_than_memory_max_still_runs(controller: MakeController) -> None:
    crew = await controller(workers=2, memory_max=10_000)
    data = np.zeros(100_000)  # 800 kB, out of band: eighty times the bound
    with anyio.fail_after(60):
        tasks = await crew.walk(len, [data] * 3)
        assert [(await task).result for task in tasks] == [100_000] * 3
        assert (await crew.push(len, data)).result == 100_000


async def test_map_over_a_generator_raises_at_the_first_failure_and_stops_taking(
    controller: MakeController,
) -> None:
    crew = await controller(workers=2, memory_max=20 * TASK_BYTES)
    taken = 0

    def items() -> Iterator[str]:
        nonlocal taken
        for number in range(100_000):
            taken += 1
            yield "bad" if number == 5 else str(number)

    with anyio.fail_after(60), pytest.raises(bc.TaskError, match="invalid literal") as raised:
        await crew.map(int, items())
    assert raised.value.result.status == "error"
    assert taken < 1_000
    assert crew.counts()["unresolved"] == 0  # the rest were cancelled
    assert await crew.wait("all", timeout=10)
    assert crew.collect().height == 0  # the map took what it had
    frame = await crew.map(int, (str(i) for i in range(50)))
    assert frame["result"].to_list() == list(range(50))


# -- stopping ---------------------------------------------------------------------------------


async def test_cancelling_a_walk_stops_it_and_cancels_its_tasks(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, memory_max=3 * TASK_BYTES)
    gate = tmp_path / "gate"
    taken = 0

    def gates() -> Iterator[str]:
        nonlocal taken
        for _ in range(100):
            taken += 1
            yield str(gate)

    walk = crew.walk(wait_for, gates())
    pushed = len(walk.tasks)
    assert 1 <= pushed <= 3
    assert walk.cancel() == pushed
    assert walk.done()
    with anyio.fail_after(30):
        tasks = await walk
        assert [(await task).status for task in tasks] == ["cancel"] * pushed
        assert await crew.wait("all")
    assert taken == pushed


async def test_a_walk_whose_controller_closes_raises_controller_closed(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with bc.Controller(workers=1, memory_max=2 * TASK_BYTES, seconds_heartbeat=5) as crew:
        walk = crew.walk(wait_for, (str(gate) for _ in range(100)))
        assert walk.tasks
    with anyio.fail_after(30):
        with pytest.raises(bc.ControllerClosedError, match="closed while the walk was pushing"):
            await walk
        assert [(await task).status for task in walk.tasks] == ["cancel"] * len(walk.tasks)
    with pytest.raises(bc.ControllerClosedError, match="is closed"):
        crew.walk(add, [1], [1])
