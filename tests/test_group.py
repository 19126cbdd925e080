"""Controller groups and backup controllers, with real workers."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path

import anyio
import pytest

import batchcrew as bc
from batchcrew.testing.pytest_plugin import MakeGroup


class RoleLauncher(bc.LocalLauncher):
    """A local launcher (public contract) whose workers know their controller's role."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    async def launch(self, request: bc.LaunchRequest) -> None:
        environment = {**request.environment, "BATCHCREW_TEST_ROLE": self.role}
        await super().launch(dataclasses.replace(request, environment=environment))


def role(_: object = None) -> str:
    return os.environ.get("BATCHCREW_TEST_ROLE", "?")


def only_on_big(_: object = None) -> str:
    """Dies (as an out-of-memory kill would) on any worker but a big one."""
    if role() != "big":
        os._exit(1)
    return "done on big"


def hang(path: str) -> None:
    Path(path).write_text("started")
    anyio.run(anyio.sleep, 600)


def controllers(**options: object) -> tuple[bc.Controller, bc.Controller]:
    small = bc.Controller(
        "small", 2, launcher=RoleLauncher("small"), seconds_heartbeat=5.0, **options
    )
    big = bc.Controller("big", 1, launcher=RoleLauncher("big"), seconds_heartbeat=5.0)
    return small, big


async def test_push_goes_where_it_is_told_and_the_group_gathers_from_all(
    controller_group: MakeGroup,
) -> None:
    group = await controller_group(*controllers())
    assert (await group.push(role)).result == "small"  # the first controller by default
    assert (await group.push(role, controller="big")).result == "big"
    frame = await group.map(role, range(4), controller="big")
    assert set(frame["result"]) == {"big"}
    group.walk(role, range(3), controller="small")
    group.push(role, name="named", controller="big")
    with anyio.fail_after(30):
        assert await group.wait("all")
    assert group.task("named") is not None
    first = group.pop()
    assert first is not None
    rest = group.collect()
    assert rest.height == 3  # four resolved, one popped
    assert sorted([first.controller, *rest["controller"]]) == ["big", "small", "small", "small"]
    summary = group.summary()
    assert summary["controller"].to_list() == ["small", "big"]
    assert summary.columns == group.controllers["small"].summary().columns
    counts = group.counts()
    assert counts["success"] == 10
    assert counts["tasks"] == 10
    with pytest.raises(ValueError, match="no controller named 'huge'"):
        group.push(role, controller="huge")


async def test_results_and_wait_one_are_event_driven_across_controllers(
    controller_group: MakeGroup,
) -> None:
    group = await controller_group(*controllers())
    assert not await group.wait("one")  # nothing anywhere: False at once
    group.walk(role, range(2), controller="small")
    group.walk(role, range(2), controller="big")
    seen = []
    with anyio.fail_after(30):
        async for result in group.results():
            seen.append(result.controller)
    assert sorted(seen) == ["big", "big", "small", "small"]


async def test_cancel_across_the_group(controller_group: MakeGroup, tmp_path: Path) -> None:
    group = await controller_group(*controllers())
    group.push(hang, str(tmp_path / "a"), name="long-a", controller="small")
    group.push(hang, str(tmp_path / "b"), name="long-b", controller="big")
    assert group.cancel(all=True, controllers=["big"]) == 1
    assert group.cancel(["long-a"]) == 1
    with anyio.fail_after(30):
        await group.wait("all")
    assert group.counts()["cancel"] == 2


async def test_names_are_unique_across_the_group_among_held_tasks(
    controller_group: MakeGroup, tmp_path: Path
) -> None:
    group = await controller_group(*controllers())
    group.push(hang, str(tmp_path / "a"), name="mine", controller="small")
    with pytest.raises(ValueError, match="already held on controller 'small'"):
        group.push(role, name="mine", controller="big")
    names = (f"n{i}" if i != 2 else "mine" for i in range(4))  # checked as the walk takes
    with pytest.raises(ValueError, match="already held on controller 'small'") as raised:
        group.walk(role, range(4), names=names, controller="big")
    assert "at item 2; nothing was pushed" in raised.value.__notes__[0]
    with pytest.raises(ValueError, match="already held on controller 'small'"):
        await group.map(role, range(4), names=iter(["mine"]), controller="big")
    assert group.counts(controllers=["big"])["tasks"] == 0
    group.cancel(["mine"])
    with pytest.raises(ValueError, match="already held on controller 'small'"):
        group.push(role, name="mine", controller="big")  # its result is not taken yet
    cancelled = group.task("mine")
    assert cancelled is not None
    assert (await cancelled).status == "cancel"
    assert (await group.push(role, name="mine", controller="big")).result == "big"
    with anyio.fail_after(30):
        tasks = await group.walk(role, range(2), names=iter(["a", "b"]), controller="big")
        assert [(await task).result for task in tasks] == ["big", "big"]


async def test_a_task_that_keeps_crashing_on_small_succeeds_on_its_backup_big(
    controller_group: MakeGroup,
) -> None:
    small, big = controllers(crashes_max=1)
    small.backup = big
    group = await controller_group(small, big)
    task = group.push(only_on_big, name="heavy")  # on small: dies twice, then moves
    with anyio.fail_after(60):
        result = await task
    assert (result.status, result.result, result.controller) == ("success", "done on big", "big")
    assert result.name == "heavy"
    assert small.counts()["success"] == 1  # counted once, where it was pushed
    assert big.counts()["tasks"] == 0
    assert group.counts()["success"] == 1
    assert group.collect().height == 0  # it resolved once, and was taken by the await


async def test_a_task_that_crashes_everywhere_says_where(controller_group: MakeGroup) -> None:
    small, big = controllers(crashes_max=0)
    small.backup = big
    group = await controller_group(small, big)
    with anyio.fail_after(60):
        result = await group.push(os._exit, 1)
    assert result.status == "crash"
    assert result.controller == "big"
    assert result.error is not None
    assert "on controller 'big'" in result.error
    assert "before: on controller 'small': the worker running this task died 1 time(s)" in (
        result.error
    )


async def test_cancelling_a_task_running_on_its_backup(
    controller_group: MakeGroup, tmp_path: Path
) -> None:
    small, big = controllers(crashes_max=0)
    small.backup = big
    group = await controller_group(small, big)
    started = tmp_path / "started"

    task = group.push(_die_unless_big_then_hang, str(started))
    with anyio.fail_after(30):
        while not started.exists():
            await anyio.sleep(0.02)
    assert task.cancel()
    assert (await task).status == "cancel"
    with anyio.fail_after(30):
        assert await group.wait("all")
    assert group.counts()["cancel"] == 1


def _die_unless_big_then_hang(path: str) -> None:
    if role() != "big":
        os._exit(1)
    hang(path)


def test_backup_cycles_and_outsiders_are_refused() -> None:
    a, b = bc.Controller("a"), bc.Controller("b")
    with pytest.raises(ValueError, match="backup cycle: 'a' -> 'a'"):
        a.backup = a
    a.backup = b
    with pytest.raises(ValueError, match="backup cycle: 'b' -> 'a' -> 'b'"):
        b.backup = a
    with pytest.raises(ValueError, match="'b', is not in this group"):
        bc.ControllerGroup(a)
    with pytest.raises(ValueError, match="distinct names; repeated: a"):
        bc.ControllerGroup(a, bc.Controller("a"))
    with pytest.raises(ValueError, match="at least one controller"):
        bc.ControllerGroup()
    with pytest.raises(TypeError, match="must be a batchcrew Controller"):
        bc.Controller("c", backup="a")  # type: ignore[arg-type]


def test_a_group_has_every_method_of_a_controller_with_the_same_arguments() -> None:
    """Code written for a controller works with a group: every public method is there, with
    the same parameters (names, kinds, defaults), plus only the choice of controller(s)."""
    added = {"controller", "controllers"}
    public = [
        name
        for name, member in inspect.getmembers(bc.Controller)
        if not name.startswith("_") and inspect.isfunction(member)
    ]
    assert {"push", "walk", "map", "wait", "pop", "collect", "results", "cancel"} <= set(public)
    for name in public:
        assert hasattr(bc.ControllerGroup, name), f"ControllerGroup has no {name}()"
        mine = inspect.signature(getattr(bc.Controller, name)).parameters
        theirs = inspect.signature(getattr(bc.ControllerGroup, name)).parameters
        extra = set(theirs) - set(mine)
        assert extra <= added, f"{name}(): the group adds {extra}"
        for parameter, expected in mine.items():
            got = theirs.get(parameter)
            assert got is not None, f"{name}(): the group lacks {parameter}"
            assert (got.kind, got.default) == (expected.kind, expected.default), (
                f"{name}({parameter}): {got} on the group, {expected} on a controller"
            )
