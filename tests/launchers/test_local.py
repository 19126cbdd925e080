"""The local launcher, with real worker processes: its options, and its life (it serves one
controller at a time, and controllers in turn)."""

from __future__ import annotations

import os
import shutil

import anyio
import pytest

import batchcrew as bc
from tests.conftest import MakeController


async def test_one_launcher_serves_controllers_in_turn() -> None:
    launcher = bc.LocalLauncher()
    for turn in range(2):
        async with bc.Controller(name=f"turn-{turn}", workers=1, launcher=launcher) as controller:
            assert (await controller.push(abs, -turn)).result == turn


async def test_worker_exits_are_reported_in_every_turn() -> None:
    # Workers that exit before they connect: each exit, reported, is a failed launch at once
    # (unreported, the controller would wait seconds_launch for them).
    false = shutil.which("false")
    assert false is not None
    launcher = bc.LocalLauncher(python=false)
    for turn in range(2):
        async with bc.Controller(
            name=f"turn-{turn}", launcher=launcher, launch_failures_max=1, seconds_launch=60
        ) as controller:
            with anyio.fail_after(20), pytest.raises(bc.LaunchError, match="exited with code 1"):
                await controller.push(abs, -1)


async def test_a_launcher_serving_a_running_controller_refuses_a_second() -> None:
    launcher = bc.LocalLauncher()
    async with bc.Controller(name="first", launcher=launcher):
        second = bc.Controller(name="second", launcher=launcher)
        with pytest.raises(RuntimeError, match="already serves a running controller"):
            await second.start()
        assert not second.running


def environment_variable(name: str) -> str | None:
    return os.environ.get(name)


async def test_a_prefix_runs_before_the_worker_command(controller: MakeController) -> None:
    # `env NAME=value command...` runs the command with one more variable: the worker's
    # process is the prefix's, as with `nice`, `taskset` or `ip netns exec`.
    launcher = bc.LocalLauncher(prefix=("env", "BATCHCREW_TEST_PREFIX=seen"))
    crew = await controller(workers=1, launcher=launcher)
    result = await crew.push(environment_variable, "BATCHCREW_TEST_PREFIX")
    assert result.result == "seen"
    assert "BATCHCREW_TEST_PREFIX" not in os.environ  # only the worker's command had it


@pytest.mark.parametrize("prefix", ["nice -n 10", ("nice", 10)])
def test_a_prefix_must_be_words(prefix: object) -> None:
    with pytest.raises(TypeError, match="prefix must be a sequence of strings"):
        bc.LocalLauncher(prefix=prefix)  # type: ignore[arg-type]
