"""The dispatcher's handling of lost workers: late frames of a worker written off earlier.

The workers here are played by hand (tests/playing.py) so that a result can be made to arrive
after its worker was written off, every time.
"""

from __future__ import annotations

import logging

import anyio
import pytest
import zmq

from batchcrew import protocol
from tests.conftest import MakeController
from tests.playing import HandLauncher, dealer, hello, join, receive, reply, run_task


def add(x: int, y: int) -> int:
    return x + y


async def test_a_late_result_of_a_written_off_worker_is_dropped_as_such_and_it_is_told_to_go(
    controller: MakeController,
    context: zmq.Context[zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="batchcrew")
    launcher = HandLauncher()
    crew = await controller(workers=2, launcher=launcher)
    first, second = await crew.walk(add, [1, 2], [10, 20])  # one launch of two workers
    request = await launcher.requests.get()
    assert request.count == 2
    keys = dict(request.environment)
    lost_identity = f"{request.launch}:0".encode()
    lost = dealer(context, crew.address, lost_identity, keys)
    other = dealer(context, crew.address, f"{request.launch}:1".encode(), keys)
    await join(lost)
    await join(other)
    lost_task, other_task = await receive(lost), await receive(other)
    assert isinstance(lost_task, protocol.Task)
    lost.close(0)  # its connection closes with its task unfinished: it is written off
    replacement = await launcher.requests.get()  # and its task goes to a new worker
    worker = dealer(
        context, crew.address, f"{replacement.launch}:0".encode(), replacement.environment
    )
    await join(worker)
    retried = await receive(worker)
    assert isinstance(retried, protocol.Task)
    assert retried.task_id == lost_task.task_id
    # The written-off worker comes back (its launch's key is still live: its sibling works)
    # with the result it had finished meanwhile, then says more.
    back = dealer(context, crew.address, lost_identity, keys)
    back.send_multipart(reply(lost_task, "from the written-off worker"))
    for _ in range(119):
        back.send_multipart(hello())
    assert isinstance(await receive(back), protocol.Stop)  # told to leave
    dispatcher = crew._dispatcher
    assert dispatcher is not None
    with anyio.fail_after(10):
        while dispatcher.late < 120:
            await anyio.sleep(0.01)
    worker.send_multipart(reply(retried, run_task(retried)))
    other.send_multipart(reply(other_task, run_task(other_task)))
    results = [await first, await second]
    assert [result.result for result in results] == [11, 22]  # the retry's, not the late one's
    assert crew.counts()["success"] == 2
    assert dispatcher.dropped == 0  # none of it was taken for an unknown peer
    assert "unknown peer" not in caplog.text
    late = [r for r in caplog.records if "written off earlier" in r.getMessage()]
    assert len(late) == 120
    levels = [r.levelno for r in late]  # a result may have run twice; a hello is no harm
    assert levels == [logging.WARNING] + [logging.INFO] * 99 + [logging.DEBUG] * 20
    name = lost_identity.decode()
    assert late[0].getMessage() == (
        f"dropped the result of task {lost_task.task_id} from worker {name}, written off "
        "earlier: that task was retried on another worker (or resolved without this result), "
        "so it may have run twice; it resolves once (execution is at-least-once, resolution "
        "exactly-once)"
    )
    assert late[1].getMessage() == f"dropped a message from worker {name}, written off earlier"
    assert "further ones are counted and logged at DEBUG" in late[99].getMessage()
