"""The pytest plugin's fixtures, run the way a user's suite runs them: a test file of its own in
a pytest process of its own (pytester), with real controllers, workers and LocalBatch jobs."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(60)

ORDERS = """
import pytest

from batchcrew import aws

SEEN = {}


async def run_on_batch(key, controller, local_batch, monkeypatch):
    for name, value in local_batch.environment().items():
        monkeypatch.setenv(name, value)
    options = aws.BatchOptions(
        job_definition=local_batch.job_definition, job_queue=local_batch.job_queue
    )
    crew = await controller(launcher=aws.BatchLauncher(options), host="127.0.0.1")
    assert (await crew.push(sum, [1, 2])).result == 3
    local = await controller(workers=1)  # a second one, on local workers
    assert (await local.push(sum, [3, 4])).result == 7
    SEEN[key] = (crew, local, local_batch)


async def test_controller_named_first(controller, local_batch, monkeypatch):
    await run_on_batch("controller first", controller, local_batch, monkeypatch)


async def test_local_batch_named_first(local_batch, controller, monkeypatch):
    await run_on_batch("local_batch first", controller, local_batch, monkeypatch)


@pytest.mark.parametrize("key", ["controller first", "local_batch first"])
def test_every_controller_closed_while_the_emulator_still_answered(key):
    crew, local, batch = SEEN[key]
    assert not crew.running
    assert not local.running
    # The Batch controller was closed first, while the emulator served: every call it made to
    # end its jobs was answered (closed after it, it would have reached nothing). A launcher
    # ends only the jobs whose worker did not leave by itself, with CancelJob and TerminateJob
    # or with TerminateJobs, so there may be none.
    ends = [
        r
        for r in batch.requests
        if r.operation in ("CancelJob", "TerminateJob", "TerminateJobs")
    ]
    assert [r.error for r in ends] == [None] * len(ends)
    assert [r.error for r in batch.requests] == [None] * len(batch.requests)
    assert not batch.process_ids()
"""


def test_controllers_close_before_local_batch_whatever_the_order_of_the_fixtures(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_orders=ORDERS)
    # A short timeout of its own: a controller closed after its emulator would spend minutes
    # retrying to end its jobs, and fail the run rather than this test's whole budget.
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "timeout=30")
    result.assert_outcomes(passed=4)
