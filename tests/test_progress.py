"""Progress bars and logs: shown where a user looks, silent where nobody does."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from rich.console import Console

import batchcrew as bc
from batchcrew.progress import progress_bar
from tests.conftest import MakeController


def shout(text: str) -> str:
    print(text, flush=True)
    return text


async def test_a_terminal_gets_a_live_bar(controller: MakeController) -> None:
    crew = await controller(workers=2)
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=100)
    with progress_bar(crew, 10, console=console):
        await crew.map(shout, [str(i) for i in range(10)])
    text = output.getvalue()
    assert "10/10" in text
    assert "workers" in text
    assert crew.name[:20] in text


async def test_a_map_over_a_generator_counts_up_to_an_unknown_total(
    controller: MakeController,
) -> None:
    crew = await controller(workers=2)
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=100)
    with progress_bar(crew, None, console=console):
        await crew.map(shout, (str(i) for i in range(10)))
    assert "10/?" in output.getvalue()


async def test_failures_show_on_the_bar(controller: MakeController) -> None:
    crew = await controller(workers=1)
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=100)
    with progress_bar(crew, 2, console=console):
        await crew.map(int, ["1", "x"], error="ignore")
    assert "1 failed" in output.getvalue()
    assert "1 worker " in output.getvalue()  # one worker, not "1 workers"
    assert "1 workers" not in output.getvalue()


async def test_nothing_is_printed_off_a_terminal(
    controller: MakeController, capsys: pytest.CaptureFixture[str]
) -> None:
    crew = await controller(workers=1)
    output = io.StringIO()
    with progress_bar(crew, 1, console=Console(file=output)):
        await crew.push(shout, "quiet")
    assert output.getvalue() == ""
    await crew.map(int, ["1"], progress=True)  # pytest's capture is not a terminal
    captured = capsys.readouterr()
    assert "1/1" not in captured.err
    assert "1/1" not in captured.out


async def test_worker_output_goes_to_per_worker_log_files(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, launcher=bc.LocalLauncher(log_dir=tmp_path / "logs"))
    await crew.push(shout, "hello from a worker")
    await crew.aclose()
    (log,) = (tmp_path / "logs").iterdir()
    assert log.name.endswith("-0.log")
    assert "hello from a worker" in log.read_text()


async def test_the_library_logs_to_its_own_logger_only(
    controller: MakeController, caplog: pytest.LogCaptureFixture
) -> None:
    root_handlers = list(logging.getLogger().handlers)
    caplog.set_level(logging.INFO, logger="batchcrew")
    crew = await controller(workers=1)
    await crew.push(shout, "x")
    await crew.aclose()
    messages = [record.getMessage() for record in caplog.records if record.name == "batchcrew"]
    assert any(message.startswith("launching 1 worker(s)") for message in messages)
    assert any("connected (pid" in message for message in messages)
    assert any("left: stopped by the controller" in message for message in messages)
    assert logging.getLogger().handlers == root_handlers
