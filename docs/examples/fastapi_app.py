"""A FastAPI backend that runs jobs on batchcrew workers for the life of the app.

    pip install "batchcrew[prometheus]" fastapi uvicorn
    uvicorn fastapi_app:app

The controller starts in the app's lifespan and closes with it (every worker with it).
POST /jobs pushes a task and returns its name; GET /jobs/{name} returns its status and, once
resolved, its result; DELETE /jobs/{name} cancels it (a running job is interrupted on its
worker, which goes on to the next job) or forgets its result; GET /workers returns the
controller's summary; /dashboard/ is batchcrew's live dashboard of the run, and /metrics/ its
Prometheus metrics. No job runs longer than `seconds_timeout` (ten minutes here).
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import prometheus_client
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

import batchcrew as bc
import batchcrew.metrics
from batchcrew import dashboard


def estimate_pi(draws: int, seed: int) -> float:
    """The job itself: a Monte Carlo estimate of pi. It runs on a worker, not in the app."""
    generator = random.Random(seed)
    inside = sum(generator.random() ** 2 + generator.random() ** 2 <= 1.0 for _ in range(draws))
    return 4 * inside / draws


class JobRequest(BaseModel):
    draws: int = Field(default=10_000, ge=1, le=1_000_000_000)
    seed: int = 0
    name: str | None = Field(default=None, min_length=1, max_length=100)


def create_app(**controller_options: Any) -> FastAPI:
    """The app, with its controller's options (workers, launcher, ...) as given."""
    options = {"name": "api", "workers": 2, "seconds_timeout": 600, **controller_options}
    crew = bc.Controller(**options)  # made here, started by the lifespan

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with crew:
            yield

    app = FastAPI(title="batchcrew jobs", lifespan=lifespan)
    app.state.controller = crew
    # The live dashboard at /dashboard/. It is read-only, but it shows job names and errors:
    # put it behind the app's authentication before the app leaves your own machine.
    app.mount("/dashboard", dashboard.asgi_app(crew))
    # Prometheus metrics at /metrics/: tasks by status, workers by state, launches, run times.
    # A registry of the app's own (an app made twice in one process registers nothing twice).
    registry = prometheus_client.CollectorRegistry()
    batchcrew.metrics.register(crew, registry)
    app.mount("/metrics", prometheus_client.make_asgi_app(registry))

    def controller() -> bc.Controller:
        return crew

    @app.post("/jobs", status_code=202)
    async def submit(job: JobRequest) -> dict[str, str]:
        try:
            task = controller().push(estimate_pi, job.draws, job.seed, name=job.name)
        except ValueError as error:  # a name held already: running, or its result not taken
            raise HTTPException(status_code=409, detail=str(error)) from error
        except bc.LaunchError as error:
            raise HTTPException(status_code=503, detail=str(error)) from error
        return {"name": task.name}

    @app.get("/jobs/{name}")
    async def status(name: str) -> dict[str, Any]:
        task = controller().task(name)
        if task is None:
            raise HTTPException(status_code=404, detail=f"no job named {name!r}")
        result = task.peek()
        if result is None:
            return {"name": name, "status": "unresolved"}
        return result.to_dict(jsonable=True)

    @app.delete("/jobs/{name}")
    async def forget(name: str) -> dict[str, Any]:
        crew = controller()
        task = crew.task(name)
        if task is None:
            raise HTTPException(status_code=404, detail=f"no job named {name!r}")
        task.cancel()  # if it is still running, its worker interrupts it
        result = await task  # takes it: the controller holds it no more
        return {"name": name, "status": result.status, "worker": result.worker}

    @app.get("/workers")
    async def workers() -> dict[str, Any]:
        row: dict[str, Any] = controller().summary().row(0, named=True)
        return {
            key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in row.items()
        }

    return app


app = create_app()
