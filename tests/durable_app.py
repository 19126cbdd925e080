"""A long run for the durable-run tests: `python tests/durable_app.py JOURNAL OUT LAUNCHER`.

It pushes 500 named tasks on 4 workers with a journal. Each task appends its name to OUT when it
finishes (one write to a file opened for appending: lines never mix). LAUNCHER is "local", or
"batch": AWS Batch through the standard AWS variables (in the tests, `LocalBatch.environment()`)
with the queue and definition from BATCHCREW_TEST_JOB_QUEUE and BATCHCREW_TEST_JOB_DEFINITION.
Once every task has resolved it prints one line of JSON: the statuses and how many workers of
an earlier run came back.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter

import batchcrew as bc

TASKS = 500
WORKERS = 4


def finish(name: str, out: str, seconds: float) -> str:
    time.sleep(seconds)
    with open(out, "a") as file:
        file.write(name + "\n")
    return name


def make_controller(journal: str, launcher: str) -> bc.Controller:
    options = {"journal": journal, "seconds_heartbeat": 5.0, "seconds_reconnect": 60.0}
    if launcher == "local":
        return bc.Controller("durable", WORKERS, **options)  # type: ignore[arg-type]
    from batchcrew import aws

    batch = aws.BatchOptions(
        job_definition=os.environ["BATCHCREW_TEST_JOB_DEFINITION"],
        job_queue=os.environ["BATCHCREW_TEST_JOB_QUEUE"],
    )
    return aws.batch_controller("durable", WORKERS, options=batch, seconds_close=20.0, **options)


async def main(journal: str, out: str, launcher: str) -> None:
    async with make_controller(journal, launcher) as controller:
        tasks = [
            controller.push(finish, f"t{i}", out, 0.02 + (i % 5) * 0.01, name=f"t{i}")
            for i in range(TASKS)
        ]
        results = [await task for task in tasks]
        dispatcher = controller._dispatcher
        said = {
            "statuses": Counter(result.status for result in results),
            "names": len({result.name for result in results}),
            "rejoined": 0 if dispatcher is None else dispatcher.rejoined,
        }
    print(json.dumps(said), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
