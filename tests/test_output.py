"""Task output: captured at the workers' descriptors, cut to output_max, relayed while it runs,
and shown in the workers table; on real worker processes."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

import batchcrew as bc
from batchcrew import dashboard
from batchcrew.output import Relay, cut, last_line
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
