"""The worker's environment: set up once, local code shipped by value, versions checked at
connect, reproducible random numbers. Real workers (local and LocalBatch), real sockets."""

from __future__ import annotations

import importlib
import logging
import os
import platform
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import numpy as np
import pytest
import zmq

import batchcrew as bc
from batchcrew import aws, protocol
from batchcrew.testing import LocalBatch
from tests.conftest import MakeController
from tests.playing import HandLauncher, dealer, hello, receive

REPOSITORY = Path(__file__).parents[1]

# -- modules= --------------------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A module of the user's own, next to their script: importable here (on sys.path), but
    not where the workers run (not on their PYTHONPATH, not in their directory)."""
    name = f"analysis_{os.getpid()}_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            class Model:
                def __init__(self, scale):
                    self.scale = scale

                def score(self, values):
                    return sum(self.scale * v for v in values if v % 2 == 0)


            def helper(n):
                return [i * i for i in range(n)]


            def fit(n, scale=2):
                return Model(scale).score(helper(n))


            LOADED = None


            def load(value):
                global LOADED
                LOADED = value


            def loaded():
                return LOADED
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def batch_options(local_batch: LocalBatch) -> aws.BatchOptions:
    return aws.BatchOptions(
        job_definition=local_batch.job_definition, job_queue=local_batch.job_queue
    )


async def test_code_from_the_users_own_module_runs_on_batch_workers_with_modules(
    local_batch: LocalBatch, user_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in local_batch.environment().items():
        monkeypatch.setenv(name, value)
    options = batch_options(local_batch)
    expected = user_module.fit(10)
    async with aws.batch_controller(workers=1, options=options, host="127.0.0.1") as plain:
        result = await plain.push(user_module.fit, 10)
    assert result.status == "error"
    assert result.error is not None
    assert result.error.startswith("the task could not be unpickled on the worker")
    assert f"ModuleNotFoundError: No module named '{user_module.__name__}'" in result.error
    shipped = aws.batch_controller(
        workers=1, options=options, host="127.0.0.1", modules=[user_module]
    )
    async with shipped:
        result = await shipped.push(user_module.fit, 10)
        assert (result.status, result.result) == ("success", expected)
        # An object of the module's own class, as an argument, travels by value too.
        model = user_module.Model(3)
        assert (await shipped.push(model.score, [2, 3, 4])).result == 18
    # Shipping by value was this controller's business only: the registry is as it was.
    import cloudpickle

    assert user_module.__name__ not in cloudpickle.list_registry_pickle_by_value()


async def test_a_module_sent_by_value_keeps_what_its_initializer_set(
    controller: MakeController, user_module: ModuleType
) -> None:
    """`modules=`: the module's functions share one namespace on a worker, as if installed."""
    crew = await controller(
        workers=2, modules=[user_module], initializer=user_module.load, initargs=("model",)
    )
    frame = await crew.map(lambda _: user_module.loaded(), range(6))
    assert frame["result"].to_list() == ["model"] * 6
    assert user_module.LOADED is None  # the controller's own module is untouched


def test_modules_must_be_modules() -> None:
    with pytest.raises(TypeError, match="modules must hold modules"):
        bc.Controller(modules=["analysis"])  # type: ignore[list-item]


# -- initializer -----------------------------------------------------------------------------

MODEL: dict[str, Any] = {}


def load_model(path: str, size: int) -> None:
    """The initializer: count its runs in a file, one line per run, and set a global."""
    with open(path, "a") as log:
        log.write(f"{os.getpid()}\n")
    MODEL["weights"] = list(range(size))


def predict(x: int) -> tuple[int, int]:
    return os.getpid(), x + sum(MODEL["weights"])


def raise_on_load() -> None:
    raise RuntimeError("the model file is missing")


async def test_the_initializer_runs_once_per_worker_and_every_task_sees_what_it_loaded(
    controller: MakeController, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    crew = await controller(workers=3, initializer=load_model, initargs=(str(runs), 4))
    frame = await crew.map(predict, range(60))
    pids = {pid for pid, _ in frame["result"]}
    assert [value for _, value in frame["result"]] == [x + 6 for x in range(60)]
    lines = runs.read_text().split()
    assert len(lines) == len(set(lines))  # once per worker, no more
    # every worker that ran a task had run the initializer first; a worker that started
    # late may have run it and found no task left, so the lines may name more pids
    assert {str(pid) for pid in pids} <= set(lines)


async def test_an_initializer_that_raises_ends_in_launch_error_naming_it(
    controller: MakeController,
) -> None:
    crew = await controller(workers=2, initializer=raise_on_load, launch_failures_max=2)
    with anyio.fail_after(60), pytest.raises(bc.LaunchError) as raised:
        await crew.map(predict, range(4))
    message = str(raised.value)
    assert "2 launches in a row failed" in message
    assert "its initializer raised RuntimeError: the model file is missing" in message
    assert crew.counts()["success"] == 0


async def test_a_failing_initializer_shows_its_traceback_once(
    controller: MakeController,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Four workers over two launches fail the same way: one traceback in all, in the
    controller's log; each worker says a line of its own."""
    crew = await controller(workers=2, initializer=raise_on_load, launch_failures_max=2)
    with caplog.at_level(logging.INFO, "batchcrew"):
        with anyio.fail_after(60), pytest.raises(bc.LaunchError):
            await crew.map(predict, range(4))
        await crew.aclose()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    printed = capfd.readouterr().err
    assert (logged + printed).count("Traceback (most recent call last)") == 1
    assert "the same error again" in logged
    assert "the controller logs its traceback" in printed


def test_bad_initializer_options_are_refused_at_construction() -> None:
    with pytest.raises(TypeError, match="initializer must be callable"):
        bc.Controller(initializer="load")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initargs were given without an initializer"):
        bc.Controller(initargs=(1,))
    with pytest.raises(TypeError, match="initargs must be a tuple"):
        bc.Controller(initializer=print, initargs=[1])  # type: ignore[arg-type]
    with pytest.raises(bc.SerializationError, match="cannot pickle the initializer"):
        bc.Controller(initializer=print, initargs=(threading.Lock(),))


# -- versions ---------------------------------------------------------------------------------


async def test_a_worker_of_another_batchcrew_version_is_refused_and_ends_in_launch_error(
    controller: MakeController, context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    launcher = HandLauncher()
    crew = await controller(workers=1, launcher=launcher, launch_failures_max=1)
    task = crew.push(predict, 1)
    request = await launcher.requests.get()
    worker = dealer(
        context, crew.address, f"{request.launch}:0".encode(), dict(request.environment)
    )
    worker.send_multipart(hello(batchcrew="9.9.9"))
    stop = await receive(worker)
    assert isinstance(stop, protocol.Stop)
    assert "batchcrew 9.9.9" in stop.reason
    assert f"batchcrew {bc.__version__}" in stop.reason
    assert "build the worker image" in stop.reason
    with anyio.fail_after(30), pytest.raises(bc.LaunchError, match=r"batchcrew 9\.9\.9"):
        await task
    assert not worker.poll(100)  # no task was ever sent to it


def other_python() -> str | None:
    """An interpreter of another minor version that can run a worker from this source tree:
    BATCHCREW_TEST_OTHER_PYTHON (which .ci/run sets up), else none."""
    candidate = os.environ.get("BATCHCREW_TEST_OTHER_PYTHON")
    if not candidate:
        return None
    check = subprocess.run(
        [candidate, "-c", "import sys, zmq, cloudpickle; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check.returncode != 0 or check.stdout.strip() == str(sys.version_info[:2]):
        return None
    return candidate


async def test_a_worker_on_another_python_is_refused_before_any_task(
    controller: MakeController, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = other_python()
    if python is None:
        pytest.skip(
            "no Python of another minor version with pyzmq and cloudpickle: set "
            "BATCHCREW_TEST_OTHER_PYTHON (.ci/run makes one from pyenv's 3.12)"
        )
    monkeypatch.setenv("PYTHONPATH", str(REPOSITORY))  # batchcrew from this source tree
    ran = tmp_path / "ran"
    crew = await controller(
        workers=1, launcher=bc.LocalLauncher(python=python), launch_failures_max=2
    )
    with anyio.fail_after(60), pytest.raises(bc.LaunchError) as raised:
        await crew.push(Path.touch, ran)
    message = str(raised.value)
    mine = ".".join(platform.python_version_tuple()[:2])
    assert f"this controller runs Python {platform.python_version()}" in message
    assert f"build the worker image (or environment) with Python {mine}" in message
    assert not ran.exists()  # no task reached it
    assert crew.counts()["crash"] == 0


# -- seeds ------------------------------------------------------------------------------------


def draw(_: object = None) -> tuple[float, float]:
    return random.random(), float(np.random.random())


def draw_or_die(marker: str) -> tuple[float, float]:
    """Draw, then die the first time (as a worker killed mid-task)."""
    drawn = draw()
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    return drawn


def own_generator(_: object = None) -> float:
    return float(np.random.default_rng(bc.task_seed()).random())


async def draws(controller: MakeController, workers: int, **options: Any) -> list[Any]:
    crew = await controller(workers=workers, **options)
    frame = await crew.map(draw, range(30))
    await crew.aclose()
    return list(frame["result"])


async def test_seeded_draws_are_the_same_whatever_the_workers(
    controller: MakeController,
) -> None:
    one = await draws(controller, 1, seed=42)
    three = await draws(controller, 3, seed=42)
    again = await draws(controller, 2, seed=42)  # another controller, another run
    assert one == three == again
    assert len(set(one)) == 30  # every task its own stream
    other = await draws(controller, 1, seed=43)
    assert not set(one) & set(other)


async def test_unseeded_draws_differ_between_runs(controller: MakeController) -> None:
    first = await draws(controller, 1)
    second = await draws(controller, 1)
    assert first != second


async def test_a_retried_task_draws_what_it_would_have_drawn(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, seed=7, crashes_max=2)
    marker = str(tmp_path / "died")
    retried = await crew.push(draw_or_die, marker, name="unlucky")
    assert retried.status == "success"
    assert Path(marker).exists()  # it did die once
    calm = await controller(workers=1, seed=7)
    assert (await calm.push(draw, name="unlucky")).result == retried.result


async def test_task_seed_gives_each_task_its_own_generator(controller: MakeController) -> None:
    crew = await controller(workers=2, seed=11)
    frame = await crew.map(own_generator, range(10), names=[f"n{i}" for i in range(10)])
    again = await crew.map(own_generator, range(10), names=[f"n{i}" for i in range(10)])
    assert frame["result"].to_list() == again["result"].to_list()
    assert len(set(frame["result"])) == 10
    given = await crew.push(own_generator, seed=5)  # a seed of its own
    assert given.result == float(np.random.default_rng(5).random())


def test_a_bad_seed_is_refused() -> None:
    for bad in (-1, 1.5, "42", True):
        with pytest.raises(ValueError, match="seed must be a whole number >= 0"):
            bc.Controller(seed=bad)  # type: ignore[arg-type]
