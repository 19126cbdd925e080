"""The FastAPI example app (docs/examples/fastapi_app.py) with its workers on AWS Batch, built
for uvicorn: `uvicorn --factory tests.batch_app:create_app`.

The Batch endpoint, region and credentials come from the standard AWS variables (in the tests,
`LocalBatch.environment()`); the job queue and definition from BATCHCREW_TEST_JOB_QUEUE and
BATCHCREW_TEST_JOB_DEFINITION. docs/examples must be on PYTHONPATH: the app is imported as
`fastapi_app`, the module workers import its job function from.
"""

from __future__ import annotations

import os

import fastapi_app
from fastapi import FastAPI

from batchcrew import aws


def create_app() -> FastAPI:
    options = aws.BatchOptions(
        job_definition=os.environ["BATCHCREW_TEST_JOB_DEFINITION"],
        job_queue=os.environ["BATCHCREW_TEST_JOB_QUEUE"],
    )
    app: FastAPI = fastapi_app.create_app(
        launcher=aws.BatchLauncher(options), seconds_heartbeat=5.0
    )
    return app
