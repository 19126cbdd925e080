"""Task output: captured at the workers' descriptors, cut to output_max, relayed while it runs,
and shown in the workers table; on real worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteReceiveStream
from hypothesis import given
from hypothesis import strategies as st

import batchcrew as bc
from batchcrew import dashboard
from batchcrew.output import Relay, cut, last_line, split_by_stream
from tests.conftest import MakeController
from tests.output_tasks import (
    lines_until,
    pid,
    print_later,
    write,
    write_bytes,
    write_every_way,
    write_then_sleep,
)


def every_way(word: str) -> str:
    return f"print {word}\nstderr {word}\nfd {word}\necho {word}\nno newline"


async def wait_for(condition: object, within: float = 20.0) -> None:
    assert callable(condition)
    with anyio.fail_after(within):
        while not condition():
            await anyio.sleep(0.02)


class Streams:
    """What a controller script's process wrote to its stdout and to its stderr, apart."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""

    async def read(self, stream: ByteReceiveStream, name: str) -> None:
        async for chunk in stream:
            setattr(self, name, getattr(self, name) + chunk)


# A controller script: `main` pushes `TASKS` (defined above it, so pickled by value) to one
# local worker, which inherits the script's stdout and stderr, and writes the results'
# outputs to outputs.json, so that the script's own stdout holds only what the tasks wrote.
_MAIN = """

async def main():
    async with bc.Controller(workers=1) as crew:
        results = [await crew.push(task, *arguments) for task, *arguments in TASKS]
    assert all(result.status == "success" for result in results), results
    Path("outputs.json").write_text(json.dumps([result.output for result in results]))


asyncio.run(main())
"""


async def run_controller_script(
    tmp_path: Path, tasks: str, meanwhile: Callable[[Streams], Awaitable[None]] | None = None
) -> tuple[Streams, list[str]]:
    """Run a controller script of `tasks` (see `_MAIN`) with its stdout and stderr read apart,
    and `meanwhile` while it runs; return them and its results' outputs."""
    script = tmp_path / "script.py"
    imports = "import asyncio, json, os, subprocess, sys, time\nfrom pathlib import Path\n"
    script.write_text(f"{imports}\nimport batchcrew as bc\n\n{textwrap.dedent(tasks)}{_MAIN}")
    streams = Streams()
    with anyio.fail_after(50):
        async with await anyio.open_process(
            [sys.executable, str(script)], cwd=tmp_path, stdin=subprocess.DEVNULL
        ) as process:
            assert process.stdout is not None
            assert process.stderr is not None
            async with anyio.create_task_group() as group:
                group.start_soon(streams.read, process.stdout, "out")
                group.start_soon(streams.read, process.stderr, "err")
                if meanwhile is not None:
                    await meanwhile(streams)
            code = await process.wait()
    assert code == 0, streams.err.decode()
    return streams, json.loads((tmp_path / "outputs.json").read_text())


# -- what a result holds -----------------------------------------------------------------------


async def test_output_holds_a_tasks_writes_in_order_and_only_its_own(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1)
    first = await crew.push(write_every_way, "one")
    assert first.output == every_way("one")
    second = await crew.push(write_every_way, "two")
    assert second.output == every_way("two")  # nothing of the first
    assert (await crew.push(pid)).output == ""
    frame = await crew.map(write, ["a\n", "b"])
    assert frame["output"].to_list() == ["a\n", "b"]
    assert frame.columns[-1] == "output"
    assert first.to_dict()["output"] == every_way("one")


async def test_a_script_task_defined_in_main_has_its_output(tmp_path: Path) -> None:
    """A task function of a plain script (`__main__`, pickled by value) writes through
    `print`, `sys.stderr` and `os.write(1, ...)`: its result holds all three, in order."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, json, os, sys

            import batchcrew as bc


            def talk(word):
                print(f"print {word}")
                sys.stderr.write(f"stderr {word}\\n")
                os.write(1, f"fd {word}\\n".encode())
                return word


            async def main():
                async with bc.Controller(workers=1) as crew:
                    result = await crew.push(talk, "from a script")
                print(json.dumps([result.status, result.output]))


            asyncio.run(main())
            """
        )
    )
    with anyio.fail_after(50):
        done = await anyio.run_process([sys.executable, str(script)], cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr.decode()
    status, output = json.loads(done.stdout.decode().splitlines()[-1])
    assert status == "success"
    assert output == "print from a script\nstderr from a script\nfd from a script\n"


async def test_a_timed_out_task_keeps_what_it_wrote(controller: MakeController) -> None:
    crew = await controller(workers=1)
    result = await crew.push(write_then_sleep, "before the timeout", 60.0, seconds_timeout=0.5)
    assert result.error is not None
    assert result.error.startswith("TimeoutError")
    assert result.output == "before the timeout\n"


async def test_output_past_output_max_keeps_its_start_and_end_and_says_what_was_cut(
    controller: MakeController,
) -> None:
    crew = await controller(workers=1, output_max=1000)
    result = await crew.push(write, "A" * 2000 + "B" * 2000)
    cut_note = "\n[... 3,000 bytes of output cut: output_max=1000 ...]\n"
    assert result.output == "A" * 500 + cut_note + "B" * 500
    assert (await crew.push(write, "fits")).output == "fits"


async def test_output_max_0_keeps_no_output(controller: MakeController) -> None:
    crew = await controller(workers=1, output_max=0)
    result = await crew.push(write_every_way, "one")
    assert (result.status, result.output) == ("success", "")


async def test_a_flood_of_output_neither_ends_its_worker_nor_passes_max_message_size(
    controller: MakeController, tmp_path: Path
) -> None:
    # The worker's log is a file here: 20 MB in the test's own captured stderr would be slow.
    logs = tmp_path / "logs"
    crew = await controller(
        workers=1, max_message_size=300_000, launcher=bc.LocalLauncher(log_dir=logs)
    )
    before = await crew.push(pid)
    result = await crew.push(write_bytes, 20_000_000)
    assert (result.status, result.result) == ("success", 20_000_000)
    assert len(result.output) < 300_000
    assert "bytes of output cut: max_message_size=300000 ..." in result.output
    assert result.output.startswith("x" * 99 + "\n")
    after = await crew.push(pid)
    assert after.result == before.result  # the same worker process
    (log,) = logs.iterdir()
    assert log.stat().st_size >= 20_000_000  # the worker's log has all of it


async def test_output_written_between_tasks_goes_to_the_workers_log_only(
    controller: MakeController, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    crew = await controller(workers=1, launcher=bc.LocalLauncher(log_dir=logs))
    go = tmp_path / "go"
    assert (await crew.push(print_later, str(go), "from a thread left behind")).output == ""
    go.touch()
    await wait_for(lambda: any(logs.iterdir()))
    (log,) = logs.iterdir()
    await wait_for(lambda: "from a thread left behind" in log.read_text())
    assert (await crew.push(write, "next\n")).output == "next\n"


# -- where a local worker's tasks print ----------------------------------------------------------


async def test_a_local_workers_tasks_write_to_the_controllers_stdout_and_stderr_each_its_own(
    tmp_path: Path,
) -> None:
    """What a task (or its subprocess) writes to stdout shows on the controller's stdout, what
    it writes to stderr on its stderr, as with ProcessPoolExecutor; its result has both."""
    streams, outputs = await run_controller_script(
        tmp_path,
        """
        def talk(word):
            print(f"print {word}")
            sys.stderr.write(f"stderr {word}\\n")


        def shell(word):
            os.system(f"echo shell {word}")
            subprocess.run(["sh", "-c", f"echo out {word}; echo err {word} >&2"], check=True)


        def unfinished():
            print("no newline", end="")


        TASKS = [(talk, "one"), (shell, "two"), (unfinished,)]
        """,
    )
    assert outputs == ["print one\nstderr one\n", "shell two\nout two\nerr two\n", "no newline"]
    # The line a task left unfinished is ended on the stream it is on.
    assert streams.out.decode() == "print one\nshell two\nout two\nno newline\n"
    err = streams.err.decode()
    assert "stderr one\nerr two\n" in err
    assert not any(word in err for word in ("print", "shell", "out two", "no newline"))


async def test_a_running_tasks_writes_reach_the_controllers_stdout_and_stderr_as_they_come(
    tmp_path: Path,
) -> None:
    """A task that takes turns at stdout and stderr, each turn waiting until the last one
    showed on the controller's stream (so each is told apart from the next exactly)."""
    turns = [("out", b"out 1\n"), ("err", b"err 1\n"), ("out", b"out 2\n")]

    async def take_turns(streams: Streams) -> None:
        def shown(stream: str, text: bytes) -> Callable[[], bool]:
            return lambda: text in getattr(streams, stream)

        for turn, (stream, text) in enumerate(turns, 1):
            await wait_for(shown(stream, text))
            (tmp_path / f"turn-{turn}").touch()

    streams, outputs = await run_controller_script(
        tmp_path,
        """
        def take_turns(directory):
            print("out 1")
            wait_for_turn(directory, 1)
            sys.stderr.write("err 1\\n")
            wait_for_turn(directory, 2)
            os.write(1, b"out 2\\n")
            wait_for_turn(directory, 3)
            subprocess.run(["sh", "-c", "echo err 2 >&2"], check=True)


        def wait_for_turn(directory, turn):
            deadline = time.monotonic() + 30
            while not Path(directory, f"turn-{turn}").exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"turn {turn} did not come")
                time.sleep(0.01)  # told by a file the test makes


        TASKS = [(take_turns, os.getcwd())]
        """,
        take_turns,
    )
    assert outputs == ["out 1\nerr 1\nout 2\nerr 2\n"]
    assert streams.out == b"out 1\nout 2\n"
    assert b"err 1\nerr 2\n" in streams.err
    assert b"out " not in streams.err


# -- while it runs -----------------------------------------------------------------------------


async def test_output_relay_writes_a_running_tasks_lines_after_its_name(
    controller: MakeController, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    crew = await controller(
        workers=1, output_relay=True, launcher=bc.LocalLauncher(log_dir=tmp_path / "logs")
    )
    stop = tmp_path / "stop"
    task = crew.push(lines_until, str(stop), name="long")
    relayed = ""

    def seen() -> bool:
        nonlocal relayed
        relayed += capsys.readouterr().err
        return "[long] line 2\n" in relayed

    await wait_for(seen)
    assert not task.done()  # relayed while it runs
    stop.touch()
    result = await task
    relayed += capsys.readouterr().err
    # Every line, once and in order: the last ones relayed as it ended, before its result.
    lines = [line for line in relayed.splitlines() if line.startswith("[long] ")]
    assert lines == [f"[long] {line}" for line in result.output.splitlines()]
    quiet = await crew.push(pid)
    assert quiet.output == ""
    assert "[task-" not in capsys.readouterr().err


async def test_the_workers_table_and_the_dashboard_show_a_running_tasks_last_line(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, launcher=bc.LocalLauncher(log_dir=tmp_path / "logs"))
    assert crew.workers().columns[-1] == "output_tail"
    stop = tmp_path / "stop"
    task = crew.push(lines_until, str(stop))

    def tail() -> str | None:
        tails = crew.workers()["output_tail"].to_list()
        return tails[0] if tails else None

    await wait_for(lambda: (tail() or "").startswith("line "))
    (row,) = dashboard.snapshot(crew)["controllers"][0]["workers"]
    assert row["output_tail"].startswith("line ")
    stop.touch()
    await task
    assert tail() is None  # its task is over


# -- the pieces --------------------------------------------------------------------------------


def test_a_cut_keeps_whole_characters_and_counts_what_it_left_out() -> None:
    text = ("é" * 10).encode()  # two bytes each
    kept = cut(text[:3], text[-2:], len(text), 5, "output_max=5")
    assert kept.decode() == "é\n[... 16 bytes of output cut: output_max=5 ...]\né"


def test_the_last_line_is_the_last_with_text_on_it() -> None:
    assert last_line(b"first\nsecond\n\n") == "second"
    assert last_line(b"progress 10%\rprogress 20%") == "progress 20%"
    assert last_line(b"\n \n") == ""
    assert last_line(b"y" * 500) == "…" + "y" * 200


def test_the_relay_writes_whole_lines_after_the_tasks_name(
    capsys: pytest.CaptureFixture[str],
) -> None:
    relay = Relay()
    relay.write(1, "fit", b"epoch 1\nepo")
    relay.write(2, "other", b"unfinished")
    assert capsys.readouterr().err == "[fit] epoch 1\n"
    relay.write(1, "fit", b"ch 2\n")
    assert capsys.readouterr().err == "[fit] epoch 2\n"
    relay.end(1)
    relay.end(2)
    assert capsys.readouterr().err == "[other] unfinished\n"


def test_a_region_is_split_by_where_each_streams_last_write_ended() -> None:
    # Only stdout wrote (stderr's last write ended before the region): up to its end is its.
    assert split_by_stream(10, 30, 20, 5) == [(10, 20, 1), (20, 30, 2)]
    assert split_by_stream(10, 30, 30, 10) == [(10, 30, 1)]
    # Only stderr, or neither (another open file, such as /dev/stdout opened anew): stderr.
    assert split_by_stream(10, 30, 5, 25) == [(10, 30, 2)]
    assert split_by_stream(10, 30, 10, 0) == [(10, 30, 2)]
    # Both: the one that ended first up to its end, the other from there to its own end.
    assert split_by_stream(10, 30, 15, 25) == [(10, 15, 1), (15, 30, 2)]
    assert split_by_stream(10, 30, 25, 15) == [(10, 15, 2), (15, 25, 1), (25, 30, 2)]
    # Ends past the region (from before the file was emptied): not in it.
    assert split_by_stream(0, 30, 500, 600) == [(0, 30, 2)]
    assert split_by_stream(10, 10, 10, 10) == []


@given(
    st.integers(0, 100),
    st.integers(0, 100),
    st.integers(0, 200),
    st.integers(0, 200),
)
def test_a_regions_pieces_cover_it_once_in_order(
    start: int, length: int, stdout_end: int, stderr_end: int
) -> None:
    end = start + length
    pieces = split_by_stream(start, end, stdout_end, stderr_end)
    assert all(first < last for first, last, _ in pieces)
    edges = [start] + [last for _, last, _ in pieces]
    assert [first for first, _, _ in pieces] == edges[:-1]
    assert edges[-1] == end
    assert (start < stdout_end <= end) == any(stream == 1 for _, _, stream in pieces)
