"""The pytest plugin: fixtures for testing code that uses batchcrew.

Registered through the `pytest11` entry point. Importing it starts nothing and imports the
emulator only when a test asks for a fixture. Fixtures:

- `local_batch_options`: the `LocalBatchOptions` of `local_batch`; override it in a conftest.py
  (or a test module), or parametrize it for one test, to change capacity, delays, injected
  failures or the AWS rules not enforced (`LocalBatchOptions(lenient={"timeout_minimum"})`
  for a job timeout under AWS's 60 seconds).
- `local_batch`: a started `LocalBatch` with queue `local_batch.job_queue` ("batchcrew-test",
  on EC2) and job definition `local_batch.job_definition` ("batchcrew-test", EC2, 1 vCPU and
  2048 MiB) registered; closed, with every job process killed, after the test. It refuses what
  AWS refuses unless `local_batch_options` names a rule lenient.
- `controller`: a factory, `await controller(**options)`, of started controllers (local
  launcher, two workers, a short heartbeat unless told otherwise), every one closed after the
  test, its workers with it.
- `controller_group`: a factory, `await controller_group(a, b, ...)`, that starts a
  `ControllerGroup` of the controllers given (backups set as you like) and closes it after the
  test.

Whatever order a test names them in, the test's controllers are closed before its
`local_batch`: a controller on emulated Batch ends its jobs through the emulator as it closes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from batchcrew.controller import Controller
    from batchcrew.group import ControllerGroup
    from batchcrew.testing import LocalBatch, LocalBatchOptions

MakeController = Callable[..., Awaitable["Controller"]]
"""The type of the `controller` fixture: `await controller(**options)` gives a started one."""

MakeGroup = Callable[..., Awaitable["ControllerGroup"]]
"""The type of the `controller_group` fixture: `await controller_group(a, b)` starts a group."""

#: The names `local_batch` gives its pre-created queue and job definition.
TEST_JOB_QUEUE = "batchcrew-test"
TEST_JOB_DEFINITION = "batchcrew-test"

#: The controllers the `controller` fixture made for a test, in its item's stash: whichever of
#: `controller` and `local_batch` pytest tears down first closes them.
CONTROLLERS = pytest.StashKey["list[Controller | ControllerGroup]"]()


def _made_controllers(request: pytest.FixtureRequest) -> list[Controller | ControllerGroup]:
    made: list[Controller | ControllerGroup] = request.node.stash.setdefault(CONTROLLERS, [])
    return made


async def _close_controllers(request: pytest.FixtureRequest) -> None:
    """Close the test's controllers, newest first (closing twice does nothing)."""
    for made in reversed(_made_controllers(request)):
        await made.aclose()


def _async_fixture() -> Callable[[Any], Any]:
    """`pytest_asyncio.fixture` when pytest-asyncio is installed (so the fixtures work in its
    strict mode too), else `pytest.fixture` for other async plugins."""
    try:
        import pytest_asyncio
    except ImportError:
        return pytest.fixture
    return pytest_asyncio.fixture


@pytest.fixture
def local_batch_options() -> LocalBatchOptions:
    """Options of the `local_batch` emulator; override this fixture to change them."""
    from batchcrew.testing import LocalBatchOptions

    return LocalBatchOptions()


@_async_fixture()
async def local_batch(
    local_batch_options: LocalBatchOptions, request: pytest.FixtureRequest
) -> AsyncIterator[LocalBatch]:
    """A running `LocalBatch` with a queue and a job definition, closed after the test, once
    the test's controllers are closed."""
    from batchcrew.testing import LocalBatch

    async with LocalBatch(
        queues=[TEST_JOB_QUEUE],
        job_definition=TEST_JOB_DEFINITION,
        options=local_batch_options,
    ) as batch:
        try:
            yield batch
        finally:
            # pytest ends fixtures in the reverse order of their setup, so with
            # `test(controller, local_batch)` this runs first: a controller closed after the
            # emulator would spend minutes retrying to end its jobs against nothing.
            await _close_controllers(request)


@_async_fixture()
async def controller(request: pytest.FixtureRequest) -> AsyncIterator[MakeController]:
    """`await controller(**options)`: a started `batchcrew.Controller`, closed after the test.

    Defaults, each overridable: named after the test, `workers=2`, `seconds_heartbeat=5`, the
    local launcher. Pass `launcher=` for another (an `aws.BatchLauncher` on `local_batch`, say).
    """
    from batchcrew.controller import Controller

    made = _made_controllers(request)

    async def make(**options: Any) -> Controller:
        options.setdefault("name", request.node.name[:60])
        options.setdefault("workers", 2)
        options.setdefault("seconds_heartbeat", 5.0)
        started = Controller(**options)
        await started.start()
        made.append(started)
        return started

    try:
        yield make
    finally:
        await _close_controllers(request)


@_async_fixture()
async def controller_group(request: pytest.FixtureRequest) -> AsyncIterator[MakeGroup]:
    """`await controller_group(a, b, ...)`: a started `batchcrew.ControllerGroup` of the
    controllers given (not started yet; set their backups first), closed after the test."""
    from batchcrew.group import ControllerGroup

    made = _made_controllers(request)

    async def make(*controllers: Controller) -> ControllerGroup:
        group = ControllerGroup(*controllers)
        await group.start()
        made.append(group)
        return group

    try:
        yield make
    finally:
        await _close_controllers(request)
