"""`Journal`, a journal read from outside its controller, and `batchcrew journal`. Journals
are written here with the controller's own `JournalWriter`, record by record."""

from __future__ import annotations

import json
import pickle
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import batchcrew as bc

# What `main` imports to build its parser, whatever the command: imported with the module, so
# that the first test of the command does not take a second for it.
import batchcrew.aws._commands
import batchcrew.testing._command
from batchcrew.cli import main
from batchcrew.journal import JournalWriter

UTC = pl.Datetime("us", "UTC")


def started(path: Path) -> JournalWriter:
    writer = JournalWriter(path)
    writer.load()
    writer.start({"name": "demo", "address": "tcp://127.0.0.1:5555"})
    writer.record("function", (1, b"function"))
    return writer


def push(writer: JournalWriter, id: int, name: str | None) -> None:
    writer.record("task", (id, name, 1, b"args", None, None, None, 0, None, time.time()))


def resolve(
    writer: JournalWriter,
    id: int,
    name: str | None,
    status: str = "success",
    value: Any = None,
    *,
    pickled: bytes | None = None,
    error: str | None = None,
    exception: BaseException | None = None,
) -> None:
    writer.record(
        "result",
        (
            id, name, status, pickled or (None if value is None else pickle.dumps(value)), error,
            None if error is None else f"Traceback (most recent call last):\n{error}",
            json.dumps([]), 0.25, "launch:0", "local", "demo", 1 << 20, 1, 0, "printed\n",
            None if exception is None else pickle.dumps(exception), time.time(),
        ),
    )  # fmt: skip


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A journal: "square" succeeded, an unnamed task (task-2) raised, "slow" was cancelled,
    "held" runs on a worker and "queued" waits."""
    path = tmp_path / "run.journal"
    writer = started(path)
    for id, name in enumerate(["square", None, "slow", "held", "queued"], start=1):
        push(writer, id, name)
    resolve(writer, 1, "square", value={"area": 9})
    resolve(
        writer, 2, None, "error", error="ValueError: bad input", exception=ValueError("bad input")
    )
    resolve(writer, 3, "slow", "cancel", error="cancelled")
    writer.record("held", ("launch:0", 4))
    writer.close()
    return path


def test_an_empty_journal_has_every_table_with_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "empty.journal"
    started(path).close()
    with bc.Journal(path) as journal:
        summary = journal.summary()
        assert summary.row(0, named=True) == {
            "controller": "demo",
            **dict.fromkeys(["tasks", "resolved", "unresolved"], 0),
            **dict.fromkeys(["success", "error", "crash", "cancel"], 0),
            "first_resolved": None,
            "last_resolved": None,
        }
        assert summary.schema["first_resolved"] == UTC
        for frame in (journal.results(), journal.failed(), journal.results("crash")):
            assert frame.height == 0
            assert dict(frame.schema) == {
                "name": pl.String,
                "status": pl.String,
                "error": pl.String,
                "seconds": pl.Float64,
                "worker": pl.String,
                "attempts": pl.Int64,
                "interruptions": pl.Int64,
                "memory": pl.Int64,
                "resolved": UTC,
                "output": pl.String,
            }
        unresolved = journal.unresolved()
        assert unresolved.height == 0
        assert dict(unresolved.schema) == {
            "id": pl.Int64,
            "name": pl.String,
            "pushed": UTC,
            "worker": pl.String,
        }
        assert journal.result("anything") is None


def test_the_summary_counts_tasks_by_what_became_of_them(path: Path) -> None:
    with bc.Journal(path) as journal:
        row = journal.summary().row(0, named=True)
    assert row["controller"] == "demo"
    assert (row["tasks"], row["resolved"], row["unresolved"]) == (5, 3, 2)
    assert (row["success"], row["error"], row["crash"], row["cancel"]) == (1, 1, 0, 1)
    assert row["first_resolved"] <= row["last_resolved"]
    assert abs(row["last_resolved"].timestamp() - time.time()) < 60


def test_results_are_a_row_per_resolved_task_without_values(path: Path) -> None:
    with bc.Journal(path) as journal:
        results = journal.results()
        assert results["name"].to_list() == ["square", "task-2", "slow"]  # unnamed: from its id
        assert results["status"].to_list() == ["success", "error", "cancel"]
        assert results.row(0, named=True) | {"resolved": None} == {
            "name": "square",
            "status": "success",
            "error": None,
            "seconds": 0.25,
            "worker": "launch:0",
            "attempts": 1,
            "interruptions": 0,
            "memory": 1 << 20,
            "resolved": None,
            "output": "printed\n",
        }
        assert results.schema["resolved"] == UTC
        assert journal.results("cancel")["name"].to_list() == ["slow"]
        assert journal.failed()["name"].to_list() == ["task-2", "slow"]
        with pytest.raises(ValueError, match=r"status='failed' is not a status.*'crash'"):
            journal.results("failed")


def test_unresolved_tasks_say_which_worker_holds_them(path: Path) -> None:
    with bc.Journal(path) as journal:
        unresolved = journal.unresolved()
    assert unresolved.select("id", "name", "worker").rows() == [
        (4, "held", "launch:0"),
        (5, "queued", None),
    ]
    assert unresolved["pushed"].null_count() == 0


def test_a_result_comes_back_whole_with_its_value_and_exception(path: Path) -> None:
    with bc.Journal(path) as journal:
        square = journal.result("square")
        assert isinstance(square, bc.Result)
        assert (square.name, square.status, square.result) == ("square", "success", {"area": 9})
        assert (square.warnings, square.launcher, square.controller) == ((), "local", "demo")
        failed = journal.result("task-2")  # unnamed, found by its generated name
        assert failed is not None
        assert (failed.status, failed.result, failed.error) == (
            "error",
            None,
            "ValueError: bad input",
        )
        assert isinstance(failed.exception, ValueError)
        assert "ValueError: bad input" in str(failed.exception.__cause__)  # the worker's trace
        assert journal.result("held") is None  # not resolved yet
        assert journal.result("nobody") is None


def test_a_result_is_the_newest_of_its_name(tmp_path: Path) -> None:
    path = tmp_path / "again.journal"
    writer = started(path)
    push(writer, 1, "retried")
    resolve(writer, 1, "retried", "error", error="RuntimeError: first")
    push(writer, 2, "retried")
    resolve(writer, 2, "retried", value=2)
    writer.close()
    with bc.Journal(path) as journal:
        result = journal.result("retried")
    assert result is not None
    assert (result.status, result.result) == ("success", 2)


def test_a_value_that_does_not_unpickle_here_is_an_error_result(tmp_path: Path) -> None:
    path = tmp_path / "unimportable.journal"
    writer = started(path)
    push(writer, 1, "odd")
    # A pickle of a class from a module this side does not have (GLOBAL, then STOP).
    resolve(writer, 1, "odd", pickled=b"cno_such_module_for_batchcrew\nThing\n.")
    writer.close()
    with bc.Journal(path) as journal:
        result = journal.result("odd")
        assert journal.results()["status"].to_list() == ["success"]  # as it was recorded
    assert result is not None
    assert (result.status, result.result) == ("error", None)
    assert result.error == (
        "the stored result cannot be unpickled here: ModuleNotFoundError: No module named "
        "'no_such_module_for_batchcrew'"
    )


def test_it_reads_a_journal_its_controller_is_writing(tmp_path: Path) -> None:
    path = tmp_path / "live.journal"
    writer = started(path)
    try:
        push(writer, 1, "first")
        writer.flush()
        with bc.Journal(path) as journal:
            assert journal.unresolved()["name"].to_list() == ["first"]
            assert journal.results().height == 0
            resolve(writer, 1, "first", value=1)
            push(writer, 2, "second")
            writer.flush()
            assert journal.results()["name"].to_list() == ["first"]
            assert journal.unresolved()["name"].to_list() == ["second"]
            assert journal.summary()["tasks"].item() == 2
    finally:
        writer.close()


def test_a_journal_whose_controller_never_started_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "unstarted.journal"
    writer = JournalWriter(path)
    writer.load()
    writer.close()  # as a controller does when it fails to start
    with bc.Journal(path) as journal:
        assert journal.controller is None
        assert journal.summary()["tasks"].item() == 0
        assert journal.results().height == 0


def test_what_is_not_a_journal_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(bc.JournalError, match=r"no journal at .*missing.journal: check the path"):
        bc.Journal(tmp_path / "missing.journal")
    garbage = tmp_path / "garbage.journal"
    garbage.write_bytes(b"\x00\xffnot sqlite at all" * 64)
    with pytest.raises(bc.JournalError, match=r"garbage.journal is not a batchcrew journal"):
        bc.Journal(garbage)
    empty = tmp_path / "empty.journal"
    empty.touch()
    with pytest.raises(bc.JournalError, match=r"empty.journal is empty.*check the path"):
        bc.Journal(empty)
    with pytest.raises(bc.JournalError, match=r"is a directory: give the path of a journal file"):
        bc.Journal(tmp_path)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE people (name TEXT)")
    connection.close()
    with pytest.raises(bc.JournalError, match=r"not a batchcrew journal .*tables people"):
        bc.Journal(other)


def test_a_journal_of_another_layout_is_refused_by_name(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value = 99 WHERE key = 'format'")
    connection.close()
    with pytest.raises(bc.JournalError, match=r"has layout 99.*reads layout 1"):
        bc.Journal(path)


def test_a_closed_journal_says_so(path: Path) -> None:
    journal = bc.Journal(path)
    assert repr(journal) == f"Journal({str(path)!r}, controller='demo')"
    journal.close()
    journal.close()
    assert repr(journal).endswith(", closed)")
    with pytest.raises(bc.JournalError, match=r"is closed: open it again"):
        journal.results()


def test_the_command_prints_the_summary_then_the_results(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["journal", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"controller +demo", out)
    for name in ("square", "task-2", "slow", "ValueError"):
        assert name in out
    assert out.index("unresolved") < out.index("square")


def test_the_command_shows_only_failures_with_failed(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["journal", str(path), "--failed"]) == 0
    out = capsys.readouterr().out
    assert "task-2" in out
    assert "slow" in out
    assert "square" not in out


def test_the_command_limits_the_results_to_the_newest(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["journal", str(path), "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "slow" in out
    assert "square" not in out
    assert "the newest 1 of 3" in out


def test_the_command_says_what_is_wrong_with_a_bad_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["journal", str(tmp_path / "missing.journal")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "batchcrew: error: no journal at" in captured.err
    assert "check the path" in captured.err
    assert main(["journal", str(tmp_path / "missing.journal"), "--limit", "-1"]) == 2
    assert "--limit must be 0" in capsys.readouterr().err
