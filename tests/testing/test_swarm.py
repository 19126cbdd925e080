"""The swarm: many real workers per process, each its own CURVE connection, for scale tests."""

from __future__ import annotations

import anyio
import pytest

from batchcrew.testing import SwarmLauncher
from tests.conftest import MakeController


def double(x: int) -> int:
    return 2 * x


async def test_a_swarm_of_60_workers_in_3_processes_runs_a_map(controller: MakeController) -> None:
    launcher = SwarmLauncher(workers_per_process=20)
    crew = await controller(workers=60, launcher=launcher)
    with anyio.fail_after(60):
        frame = await crew.map(double, range(600))
        while crew.counts()["workers"] < 60:  # every one of them connected and set up
            await crew.map(double, range(60))
    assert frame["result"].to_list() == [2 * i for i in range(600)]
    assert len(set(frame["worker"])) > 20  # spread over many workers, not a few


def test_workers_per_process_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers_per_process must be a whole number"):
        SwarmLauncher(workers_per_process=0)
