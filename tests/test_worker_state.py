"""State on the workers: by-value functions of a script share one namespace there, what
`everywhere()` sets reaches workers of now and later, warm `workers_min`, and the in-process
launcher for debugging."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import anyio
import cloudpickle
import pytest

import batchcrew as bc
from batchcrew import protocol
from batchcrew.namespaces import Namespaces
from tests.conftest import MakeController, RecordingLauncher
from tests.tasks import add


def run_script(folder: Path, source: str, stdin: str | None = None) -> str:
    """Run `source` as a script of its own (its functions are `__main__`'s); its output."""
    script = folder / "script.py"
    script.write_text(source)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        input=stdin,
        cwd=folder,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


# -- one namespace per module on a worker ----------------------------------------------------


def test_a_script_initializer_sets_a_global_every_task_sees(tmp_path: Path) -> None:
    """The issue's own script: `MODEL` set by the initializer, read by every task, and a
    global dict it fills; with ProcessPoolExecutor's behaviour, not a copy per task."""
    output = run_script(
        tmp_path,
        "import asyncio\n"
        "import batchcrew as bc\n"
        "MODEL = None\n"
        "CONFIG = {}\n"
        "def load(n):\n"
        "    global MODEL\n"
        "    MODEL = list(range(n))\n"
        "    CONFIG['n'] = n\n"
        "def predict(i):\n"
        "    return len(MODEL) + i\n"
        "def config(i):\n"
        "    return CONFIG.get('n')\n"
        "async def main():\n"
        "    async with bc.Controller(workers=2, initializer=load, initargs=(10,)) as crew:\n"
        "        frame = await crew.map(predict, range(20))\n"
        "        assert frame['status'].to_list() == ['success'] * 20, frame['error']\n"
        "        print(frame['result'].to_list() == [10 + i for i in range(20)])\n"
        "        print((await crew.map(config, range(20)))['result'].unique().to_list())\n"
        "        print((await crew.push(lambda: MODEL[-1])).result)\n"
        "asyncio.run(main())\n",
    )
    assert output.splitlines() == ["True", "[10]", "9"]


def test_everywhere_reaches_the_workers_of_now_and_later(tmp_path: Path) -> None:
    """A script sets a global with everywhere(): the worker connected now runs it at once,
    and one launched later runs it before its first task; a failure is that worker's row."""
    output = run_script(
        tmp_path,
        "import asyncio, os, time\n"
        "import batchcrew as bc\n"
        "DATA = None\n"
        "def load(n):\n"
        "    global DATA\n"
        "    DATA = n\n"
        "def read(wait):\n"
        "    time.sleep(wait)\n"
        "    return DATA, os.getpid()\n"
        "def fails():\n"
        "    raise OSError('disk full')\n"
        "async def main():\n"
        "    async with bc.Controller(workers=2) as crew:\n"
        "        first = (await crew.push(read, 0)).result[1]\n"
        "        table = await crew.everywhere(load, 7)\n"
        "        print(table.height, table['status'].to_list())\n"
        "        # More tasks than the first worker takes ahead: a second worker is launched,\n"
        "        # after the call.\n"
        "        results = await crew.map(read, [0.3] * 8)\n"
        "        seen = results['result'].to_list()\n"
        "        print(sorted({value for value, _ in seen}))\n"
        "        print(len({pid for _, pid in seen}), first in {pid for _, pid in seen})\n"
        "        table = await crew.everywhere(fails)\n"
        "        print(table.height, table['status'].unique().to_list())\n"
        "        print(table['error'].unique().to_list())\n"
        "        print((await crew.push(read, 0)).status)\n"
        "asyncio.run(main())\n",
    )
    assert output.splitlines() == [
        "1 ['success']",
        "[7]",
        "2 True",
        "2 ['error']",
        "['OSError: disk full']",
        "success",
    ]


def test_a_global_the_controller_changes_is_seen_but_one_the_worker_set_is_kept(
    tmp_path: Path,
) -> None:
    """The rule for a global both sides touch: the worker keeps its own value while the
    controller's stays the same, and takes the controller's once that changes."""
    output = run_script(
        tmp_path,
        "import asyncio\n"
        "import batchcrew as bc\n"
        "LIMIT = 1\n"
        "CACHE = {}\n"
        "def remember(key):\n"
        "    CACHE[key] = True\n"
        "    return sorted(CACHE), LIMIT\n"
        "async def main():\n"
        "    global LIMIT\n"
        "    async with bc.Controller(workers=1) as crew:\n"
        "        print((await crew.push(remember, 'a')).result)\n"
        "        print((await crew.push(remember, 'b')).result)\n"
        "        LIMIT = 5\n"
        "        print((await crew.push(remember, 'c')).result)\n"
        "        CACHE['controller'] = True\n"
        "        print((await crew.push(remember, 'd')).result)\n"
        "asyncio.run(main())\n",
    )
    assert output.splitlines() == [
        "(['a'], 1)",
        "(['a', 'b'], 1)",
        "(['a', 'b', 'c'], 5)",
        "(['controller', 'd'], 5)",
    ]


def notebook_functions() -> dict[str, types.FunctionType]:
    """Functions as a Jupyter kernel makes them: module `__main__`, no `__file__`."""
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(
        "STATE = None\n"
        "def set_state(value):\n"
        "    global STATE\n"
        "    STATE = value\n"
        "def get_state():\n"
        "    return STATE\n"
        "def helper_reads():\n"
        "    return get_state()\n",
        namespace,
    )
    return {name: value for name, value in namespace.items() if callable(value)}  # type: ignore[misc]


def load(namespaces: Namespaces, value: object) -> object:
    return namespaces.load(cloudpickle.dumps(value, protocol=5))


def test_notebook_functions_share_one_namespace_across_pickles() -> None:
    functions = notebook_functions()
    for function in functions.values():
        assert not protocol.pickles_by_reference(function)
    namespaces = Namespaces()
    set_state = load(namespaces, functions["set_state"])
    get_state = load(namespaces, functions["get_state"])
    helper = load(namespaces, functions["helper_reads"])
    set_state(41)  # type: ignore[operator]
    assert get_state() == 41  # type: ignore[operator]
    assert helper() == 41  # type: ignore[operator]  # and a helper it brought along
    space = namespaces.namespace("__main__")
    assert space is not None
    assert space["STATE"] == 41
    assert space is not sys.modules["__main__"].__dict__  # never the worker's own __main__


@pytest.fixture
def by_value_module() -> Iterator[types.ModuleType]:
    """A module that travels by value (as `modules=` makes it), not installed on workers."""
    module = types.ModuleType("batchcrew_test_by_value")
    module.__file__ = "/elsewhere/batchcrew_test_by_value.py"
    exec(
        "COUNT = 0\ndef bump():\n    global COUNT\n    COUNT += 1\n    return COUNT\n",
        module.__dict__,
    )
    sys.modules[module.__name__] = module
    cloudpickle.register_pickle_by_value(module)
    try:
        yield module
    finally:
        cloudpickle.unregister_pickle_by_value(module)
        del sys.modules[module.__name__]


def test_a_module_sent_by_value_keeps_one_namespace(by_value_module: types.ModuleType) -> None:
    namespaces = Namespaces()
    pickled = cloudpickle.dumps(by_value_module.bump, protocol=5)
    first, second = namespaces.load(pickled), namespaces.load(pickled)
    assert first is not second  # two pickles (as two pushes), one namespace
    assert [first(), second(), first()] == [1, 2, 3]
    assert by_value_module.COUNT == 0  # the controller's own is untouched
    # Tracebacks name the module's file, not cloudpickle's "<dynamic-code>".
    assert first.__code__.co_filename == "/elsewhere/batchcrew_test_by_value.py"


def test_plain_pickles_take_the_fast_path_and_still_load() -> None:
    namespaces = Namespaces()
    data, buffers = protocol.dump_arguments((1, "two"), {"three": 3.0})
    assert namespaces.load(data, buffers) == ((1, "two"), {"three": 3.0})
    assert namespaces.namespace("__main__") is None


# -- everywhere ------------------------------------------------------------------------------


async def test_everywhere_before_any_worker_gives_an_empty_table_and_reaches_later_ones(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1)
    table = await crew.everywhere(add, 1, 2)
    assert table.height == 0
    assert table.columns == ["worker", "status", "error", "trace", "seconds"]
    assert (await crew.push(add, 1, 1)).result == 2  # the later worker ran it, and goes on


async def test_everywhere_refuses_what_it_cannot_run(controller: MakeController) -> None:
    crew = await controller(workers=1)
    with pytest.raises(TypeError, match="must be callable"):
        await crew.everywhere("add")  # type: ignore[arg-type]
    lock = threading.Lock()
    with pytest.raises(bc.SerializationError, match="cannot pickle everywhere"):
        await crew.everywhere(add, lock, 1)
    closed = bc.Controller(workers=1)
    with pytest.raises(bc.ControllerClosedError, match="not started"):
        await closed.everywhere(add, 1, 2)


async def test_a_worker_that_dies_before_it_answers_is_a_lost_row(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1)
    assert (await crew.push(add, 1, 1)).result == 2
    table = await crew.everywhere(os._exit, 9)
    assert table["status"].to_list() == ["lost"]
    assert "exited with code 9" in table["error"][0]


# -- workers_min -----------------------------------------------------------------------------


async def test_workers_min_keeps_two_warm_workers_past_seconds_idle(
    controller: MakeController,
) -> None:
    launcher = RecordingLauncher()
    crew = await controller(workers=3, workers_min=2, seconds_idle=0.5, launcher=launcher)

    def connected() -> set[str]:
        table = crew.workers()
        return set(table.filter(table["state"].is_in(["idle", "busy"]))["worker"].to_list())

    with anyio.fail_after(30):
        while len(connected()) < 2:  # launched at start, with no task pushed
            await anyio.sleep(0.02)
    warm = connected()
    # Three tasks at once bring a third worker, which is beyond the floor.
    results = await crew.map(sleep_then, [1.0, 1.0, 1.0])
    assert results["status"].to_list() == ["success"] * 3
    with anyio.fail_after(30):
        while len(connected()) > 2:  # the third leaves once idle for seconds_idle ...
            await anyio.sleep(0.02)
    # ... and the two warm workers, idle at least as long, were kept; they stay on.
    await anyio.sleep(2.0)
    assert len(connected()) == 2
    assert len(connected() & warm) >= 1
    assert sum(request.count for request in launcher.requests) == 3  # nothing relaunched


def sleep_then(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_workers_min_is_checked_at_the_door() -> None:
    with pytest.raises(ValueError, match="workers_min=3 is more than workers=2"):
        bc.Controller(workers=2, workers_min=3)
    with pytest.raises(ValueError, match="workers_min"):
        bc.Controller(workers=2, workers_min=-1)


# -- the in-process launcher -----------------------------------------------------------------


def test_pdb_drives_a_task_on_the_in_process_launcher(tmp_path: Path) -> None:
    """`breakpoint()` in a task stops in the user's own file, pdb reads commands from
    stdin, and the task sees and sets the script's own globals."""
    output = run_script(
        tmp_path,
        "import asyncio\n"
        "import batchcrew as bc\n"
        "CALLS = 0\n"
        "def work(x):\n"
        "    global CALLS\n"
        "    CALLS += 1\n"
        "    doubled = x * 2\n"
        "    breakpoint()\n"
        "    return doubled + 1\n"
        "async def main():\n"
        "    async with bc.Controller(launcher=bc.InProcessLauncher()) as crew:\n"
        "        result = await crew.push(work, 20)\n"
        "        print('RESULT', result.result, result.status, result.launcher, CALLS)\n"
        "asyncio.run(main())\n",
        stdin="p doubled\np 'seen', x\nl\nc\n",
    )
    assert "script.py(9)work()" in output  # stopped in the script itself, at its line
    assert "40" in output
    assert "('seen', 20)" in output
    assert "return doubled + 1" in output  # `l` lists the user's own source
    assert output.endswith("RESULT 41 success in-process 1")


async def test_the_in_process_launcher_gives_the_same_results_and_tables(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1, launcher=bc.InProcessLauncher())
    frame = await crew.map(add, range(5), range(5))
    assert frame["result"].to_list() == [0, 2, 4, 6, 8]
    assert frame["launcher"].unique().to_list() == ["in-process"]
    failed = await crew.push(divide, 1, 0)
    assert failed.status == "error"
    assert "ZeroDivisionError" in (failed.error or "")
    assert "test_worker_state.py" in (failed.trace or "")  # a local traceback
    workers = crew.workers()
    assert workers.height == 1
    assert workers["pid"].to_list() == [os.getpid()]  # no process: a thread of this one


def divide(x: float, y: float) -> float:
    return x / y


async def test_a_timed_out_task_on_the_in_process_launcher_is_interrupted(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1, launcher=bc.InProcessLauncher())
    result = await crew.push(spin, seconds_timeout=0.5)
    assert result.status == "error"
    assert "TimeoutError" in (result.error or "")
    assert (await crew.push(add, 1, 2)).result == 3  # the same worker goes on


def spin() -> None:
    while True:
        sum(range(100))


def test_the_in_process_launcher_runs_one_task_at_a_time() -> None:
    with pytest.raises(ValueError, match="use workers=1"):
        bc.Controller(workers=2, launcher=bc.InProcessLauncher())
