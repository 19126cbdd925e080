"""Retries of tasks that raise: the backoff schedule and the policy as plain values, the wire,
and real workers over real sockets retrying, not retrying, waiting and being cancelled."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

import batchcrew as bc
from batchcrew import protocol
from batchcrew.retrying import Attempts, Backoff, check_backoff, dump_retry_on, matches
from batchcrew.testing.pytest_plugin import MakeController, MakeGroup
from batchcrew.worker import WorkerSettings
from tests.tasks import (
    HTTPError,
    add,
    answer_with,
    crash_then_raise,
    flaky,
    raise_crash_then_return,
    raise_then_hang,
    record_and_hang,
    refuse_to_judge,
    server_error,
)


def attempts_in(record: Path) -> list[int]:
    """The attempt numbers that the runs of a task wrote to `record`, in order."""
    if not record.exists():
        return []
    return [int(line.split()[0]) for line in record.read_text().splitlines()]


async def until(condition: object, within: float = 20.0) -> None:
    """Wait for `condition()` to hold (polling, under a deadline)."""
    with anyio.fail_after(within):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.01)


# -- the backoff schedule ------------------------------------------------------------------


def test_the_ceiling_doubles_from_seconds_retry_up_to_its_cap() -> None:
    backoff = Backoff(seconds=0.5, seconds_max=3.0, jitter="none")
    assert [backoff.delay(retry) for retry in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_full_jitter_draws_between_zero_and_the_ceiling() -> None:
    backoff = Backoff(seconds=1.0, seconds_max=60.0, jitter="full")
    assert backoff.delay(3, lambda: 0.0) == 0.0
    assert backoff.delay(3, lambda: 0.25) == 1.0
    assert backoff.delay(3, lambda: 0.999) == pytest.approx(3.996)


@given(
    seconds=st.floats(min_value=1e-3, max_value=100.0),
    spread=st.floats(min_value=1.0, max_value=1e4),
    retry=st.integers(min_value=1, max_value=100_000),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    jitter=st.sampled_from(["full", "none"]),
)
def test_every_wait_is_bounded_by_a_ceiling_that_never_shrinks(
    seconds: float, spread: float, retry: int, draw: float, jitter: str
) -> None:
    backoff = Backoff(seconds, seconds * spread, jitter)  # type: ignore[arg-type]
    ceiling = backoff.ceiling(retry)
    assert seconds <= ceiling <= backoff.seconds_max
    assert backoff.ceiling(retry + 1) >= ceiling
    if retry <= 60:
        assert ceiling == min(backoff.seconds_max, seconds * 2 ** (retry - 1))
    delay = backoff.delay(retry, lambda: draw)
    assert 0.0 <= delay <= ceiling
    assert delay == (ceiling * draw if jitter == "full" else ceiling)


def test_full_jitter_spreads_the_waits_of_tasks_that_failed_together() -> None:
    backoff, draws = Backoff(1.0, 60.0, "full"), random.Random(5)
    waits = [backoff.delay(4, draws.random) for _ in range(1000)]
    assert all(0.0 <= wait < 8.0 for wait in waits)
    assert min(waits) < 1.0  # spread over the whole range, not bunched
    assert max(waits) > 7.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seconds_retry": 0}, "seconds_retry must be a positive, finite number"),
        ({"seconds_retry": math.inf}, "seconds_retry must be a positive, finite number"),
        ({"seconds_retry_max": math.inf}, "seconds_retry_max must be a positive, finite"),
        ({"seconds_retry": 10, "seconds_retry_max": 5}, r"over seconds_retry_max=5"),
        ({"retry_jitter": "half"}, 'retry_jitter must be "full" or "none"'),
        ({"retries": -1}, "retries must be a whole number >= 0"),
        ({"retries": True}, "retries must be a whole number >= 0"),
        ({"retry_on": ()}, r"retry_on=\(\) matches no exception"),
    ],
)
def test_bad_retry_settings_on_the_controller_say_what_is_wrong(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        bc.Controller(**options)  # type: ignore[arg-type]


def test_check_backoff_makes_the_backoff_of_the_settings() -> None:
    assert check_backoff(2, 30, "none") == Backoff(2.0, 30.0, "none")


# -- the policy, as the worker applies it --------------------------------------------------


def test_types_tuples_and_predicates_match_the_exception_itself() -> None:
    assert matches(ConnectionError, ConnectionResetError("reset"))  # a subclass matches
    assert not matches(ConnectionError, ValueError("no"))
    assert matches((TimeoutError, ConnectionError), TimeoutError())
    assert matches(server_error, HTTPError(503))
    assert not matches(server_error, HTTPError(404))
    assert not matches(Exception, KeyboardInterrupt())  # the default spares these
    assert not matches(Exception, SystemExit(1))


def test_an_interruption_is_never_retried_whatever_retry_on_says() -> None:
    interrupted = bc.TaskInterrupted("the task was cancelled and interrupted")
    assert not matches(BaseException, interrupted)
    assert not matches(lambda error: True, interrupted)


def test_what_is_not_an_exception_type_or_a_predicate_is_refused() -> None:
    with pytest.raises(TypeError, match="not an exception type"):
        dump_retry_on(int)
    with pytest.raises(TypeError, match="holds 'ValueError', which is not an exception type"):
        dump_retry_on((ConnectionError, "ValueError"))
    with pytest.raises(TypeError, match="retry_on must be an exception type, a tuple"):
        dump_retry_on("ConnectionError")


def test_a_predicate_that_cannot_be_pickled_is_refused_clearly() -> None:
    lock = threading.Lock()
    with pytest.raises(bc.SerializationError, match=r"cannot pickle retry_on=.*for the workers"):
        dump_retry_on(lambda error: lock.locked())


# -- the wire ------------------------------------------------------------------------------


def roundtrip(message: protocol.Message) -> protocol.Message:
    return protocol.decode([bytes(frame) for frame in protocol.encode(message)])


@pytest.mark.parametrize("arguments", [b"args", b"a" * 70_000])  # inline, and apart
def test_a_task_carries_its_attempt_and_its_policy_as_the_last_frame(arguments: bytes) -> None:
    policy = dump_retry_on(ConnectionError)
    message = protocol.Task(7, b"fn", arguments, (b"buffer",), 2.5, 3, None, 2, policy)
    frames = protocol.encode(message)
    assert bytes(frames[-1]) == policy
    assert roundtrip(message) == message
    last = protocol.Task(7, b"fn", arguments, attempt=4)  # the last attempt: no policy
    assert roundtrip(last) == last


def test_a_task_without_retries_travels_as_before() -> None:
    plain = protocol.Task(7, b"fn", b"args")
    assert protocol.encode(plain) == protocol.encode(protocol.Task(7, b"fn", b"args", attempt=1))
    assert len(protocol.encode(plain)) == 1  # no options, no extra frame


def test_an_outcome_says_whether_to_retry() -> None:
    outcome = protocol.Outcome(9, "error", 1.5, "ConnectionError: reset", "Traceback", retry=True)
    assert roundtrip(outcome) == outcome
    plain = protocol.Outcome(9, "error", 1.5, "ValueError: no", "Traceback")
    assert roundtrip(plain) == plain
    assert b"retry" not in bytes(protocol.encode(plain)[0])


def _header(kind: int, extra: int = 0) -> bytes:
    return protocol._HEADER.pack(protocol.MAGIC, protocol.VERSION, kind, extra, 0)


@pytest.mark.parametrize(
    ("meta", "following", "message"),
    [
        (b'{"retry_on":true}', [], "announces a retry_on frame it does not have"),
        (b'{"retry_on":1}', [b"policy"], "'retry_on' must be true"),
        (b'{"attempt":0}', [], "task attempt 0 is not a whole number >= 1"),
        (b'{"attempt":true}', [], "task attempt True is not a whole number"),
        (b'{"attempt":"2"}', [], "'attempt' is missing or of the wrong type"),
    ],
)
def test_malformed_retry_options_raise_protocol_error(
    meta: bytes, following: list[bytes], message: str
) -> None:
    body = protocol._TASK_META.pack(0, len(meta)) + meta + protocol._LENGTH.pack(2) + b"fnargs"
    frames = [_header(protocol.Kind.TASK, len(following)) + body, *following]
    with pytest.raises(bc.ProtocolError, match=message):
        protocol.decode(frames)


def test_a_malformed_retry_flag_in_an_outcome_raises_protocol_error() -> None:
    extra = b'{"error":"E","trace":null,"warnings":[],"retry":"yes"}'
    meta = protocol._RESULT_META.pack(1, 1.0, 0, len(extra), 0, 0, 0.0)
    with pytest.raises(bc.ProtocolError, match="'retry' is not a boolean"):
        protocol.decode([_header(protocol.Kind.RESULT) + meta + extra])


# -- the worker, behind a bare ROUTER ------------------------------------------------------


@pytest.fixture
def router() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    """A bare ROUTER socket standing in for a controller (security off)."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(0)
    context.term()


def next_message(sock: zmq.Socket[bytes]) -> tuple[bytes, protocol.Message]:
    assert sock.poll(20_000), "no message from the worker in time"
    identity, *frames = sock.recv_multipart()
    (message,) = protocol.decode_all(frames)
    return identity, message


def run_on_worker(
    router: tuple[zmq.Socket[bytes], str], tasks: list[protocol.Task]
) -> list[protocol.Outcome]:
    """Start a worker, hand it `tasks` one at a time, and return their outcomes."""
    sock, address = router
    settings = WorkerSettings(controller=address, launch="L")
    environment = {**os.environ, **settings.environment(), "BATCHCREW_WORKER_INDEX": "0"}
    process = subprocess.Popen([sys.executable, "-m", "batchcrew.worker"], env=environment)
    try:
        identity, _ = next_message(sock)  # hello
        sock.send_multipart([identity, *protocol.encode(protocol.Setup())])
        next_message(sock)  # ready
        outcomes = []
        for task in tasks:
            sock.send_multipart([identity, *protocol.encode(task)])
            _, outcome = next_message(sock)
            assert isinstance(outcome, protocol.Outcome), outcome
            outcomes.append(outcome)
        sock.send_multipart([identity, *protocol.encode(protocol.Stop("done"))])
        assert process.wait(timeout=30) == 0
        return outcomes
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _task(task_id: int, function: object, *args: object, **options: object) -> protocol.Task:
    arguments, buffers = protocol.dump_arguments(args, {})
    return protocol.Task(
        task_id,
        protocol.dump_function(function),  # type: ignore[arg-type]
        arguments,
        tuple(buffers),
        **options,  # type: ignore[arg-type]
    )


def test_the_worker_applies_retry_on_and_says_why_when_it_cannot(
    router: tuple[zmq.Socket[bytes], str], tmp_path: Path
) -> None:
    record = str(tmp_path / "record")
    policy = dump_retry_on(server_error)
    matched, unmatched, raising, broken, none = run_on_worker(
        router,
        [
            _task(1, answer_with, record, [503], retry_on=policy),
            _task(2, answer_with, record, [503, 404], attempt=2, retry_on=policy),
            _task(3, answer_with, record, [503], retry_on=dump_retry_on(refuse_to_judge)),
            _task(4, answer_with, record, [503], retry_on=b"not a pickle"),
            _task(5, answer_with, record, [503]),  # no policy: nothing to ask
        ],
    )
    assert (matched.retry, matched.error) == (True, "HTTPError: HTTP 503")
    assert (unmatched.retry, unmatched.error) == (False, "HTTPError: HTTP 404")
    assert not raising.retry
    assert raising.error == (
        "HTTPError: HTTP 503 (not retried: its retry_on raised RuntimeError: this predicate "
        "cannot make up its mind)"
    )
    assert not broken.retry
    assert broken.error is not None
    assert "(not retried: its retry_on cannot be unpickled here: " in broken.error
    assert (none.retry, none.error) == (False, "HTTPError: HTTP 503")
    assert attempts_in(Path(record)) == [1, 2, 1, 1, 1]  # each run saw the attempt it was sent


# -- real workers: retried -----------------------------------------------------------------


async def test_a_task_that_raises_twice_succeeds_on_its_third_attempt(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, seed=11, seconds_retry=0.05, retry_jitter="none")
    record = tmp_path / "record"
    with anyio.fail_after(30):
        result = await crew.push(flaky, str(record), 2, retries=3, retry_on=ConnectionError)
    assert (result.status, result.error, result.attempts) == ("success", None, 3)
    assert [attempt for attempt, _, _ in result.result] == [1, 2, 3]  # bc.task_attempt()
    # Every attempt draws from the task's own seed, as a rerun after a crash does.
    assert len({seed for _, _, seed in result.result}) == 1
    assert result.result[0][2] is not None
    assert crew.counts()["success"] == 1
    assert crew.counts()["error"] == 0


async def test_the_default_retry_on_is_exception(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, retries=1, seconds_retry=0.05)
    with anyio.fail_after(30):
        result = await crew.push(flaky, str(tmp_path / "a"), 1, "ValueError")
        spared = await crew.push(flaky, str(tmp_path / "b"), 1, "SystemExit")
    assert (result.status, result.attempts) == ("success", 2)
    assert (spared.status, spared.attempts, spared.error) == ("error", 1, "SystemExit: attempt 1")


async def test_an_error_retry_on_does_not_match_is_not_retried(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, seconds_retry=0.05)
    record = tmp_path / "record"
    with anyio.fail_after(30):
        result = await crew.push(
            flaky, str(record), 5, "ValueError", retries=3, retry_on=(ConnectionError, OSError)
        )
    assert (result.status, result.attempts, result.error) == ("error", 1, "ValueError: attempt 1")
    assert result.trace is not None
    assert "ValueError: attempt 1" in result.trace
    assert attempts_in(record) == [1]


async def test_a_predicate_sees_the_exception_itself(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=2, seconds_retry=0.05)
    with anyio.fail_after(30):
        through = crew.push(
            answer_with, str(tmp_path / "a"), [503, 502], retries=5, retry_on=server_error
        )
        refused = crew.push(
            answer_with, str(tmp_path / "b"), [503, 404, 503], retries=5, retry_on=server_error
        )
        judged = crew.push(
            answer_with,
            str(tmp_path / "c"),
            [500],
            retries=5,
            retry_on=lambda error: error.status == 500,
        )
        got, stopped, lambda_got = await through, await refused, await judged
    assert (got.status, got.result, got.attempts) == ("success", 3, 3)
    assert (stopped.status, stopped.error, stopped.attempts) == ("error", "HTTPError: HTTP 404", 2)
    assert (lambda_got.status, lambda_got.attempts) == ("success", 2)


async def test_retries_exhausted_resolve_error_with_the_last_error(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, seconds_retry=0.05, retry_jitter="none")
    record = tmp_path / "record"
    with anyio.fail_after(30):
        result = await crew.push(flaky, str(record), 10, retries=2)
    assert (result.status, result.attempts) == ("error", 3)
    assert result.error == "ConnectionError: attempt 3"
    assert result.trace is not None
    assert "attempt 3" in result.trace
    assert attempts_in(record) == [1, 2, 3]
    assert crew.counts()["error"] == 1  # one resolution, whatever the number of attempts


async def test_the_backoff_shows_between_the_attempts(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, seconds_retry=0.2, retry_jitter="none")
    with anyio.fail_after(30):
        result = await crew.push(flaky, str(tmp_path / "record"), 3, retries=3)
    assert result.attempts == 4
    times = [at for _, at, _ in result.result]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # 0.2, 0.4 and 0.8 seconds at least (the controller waits that long after each error
    # reaches it); at most what a loaded machine could add to them.
    assert gaps[0] >= 0.2
    assert gaps[1] >= 0.4
    assert gaps[2] >= 0.8
    assert all(gap < 20 for gap in gaps)


async def test_a_task_being_retried_holds_no_worker(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, seconds_retry=30, retry_jitter="none")
    record = tmp_path / "record"
    waiting = crew.push(flaky, str(record), 1, retries=1)
    with anyio.fail_after(30):
        await until(lambda: attempts_in(record) == [1])
        assert (await crew.push(add, 1, 2)).result == 3  # the one worker is free meanwhile
    assert not waiting.done()
    assert crew.counts()["unresolved"] == 1


# -- real workers: not retried -------------------------------------------------------------


async def test_cancelling_a_task_waiting_for_its_retry_resolves_it_at_once(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, seconds_retry=0.5, retry_jitter="none")
    record = tmp_path / "record"
    task = crew.push(flaky, str(record), 5, retries=3, name="waiting")
    with anyio.fail_after(30):
        await until(lambda: attempts_in(record) == [1])
        # Once its worker is idle again, the controller has its error: it waits to retry.
        await until(lambda: "idle" in crew.workers()["state"].to_list())
    assert task.cancel()
    assert not task.cancel()  # resolved already
    result = task.peek()
    assert result is not None
    assert (result.status, result.attempts) == ("cancel", 1)
    assert result.error == "cancelled while it waited to be retried"
    assert (await task) is result
    await anyio.sleep(1.5)  # three times its backoff: no attempt began meanwhile
    assert attempts_in(record) == [1]
    assert crew.counts()["cancel"] == 1
    assert crew.counts()["unresolved"] == 0


async def test_closing_the_controller_resolves_waiting_retries_as_cancel(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, seconds_retry=30, retry_jitter="none")
    record = tmp_path / "record"
    task = crew.push(flaky, str(record), 5, retries=3)
    with anyio.fail_after(30):
        await until(lambda: attempts_in(record) == [1])
        await until(lambda: "idle" in crew.workers()["state"].to_list())
        await crew.aclose()
    result = task.peek()
    assert result is not None
    assert (result.status, result.error, result.attempts) == ("cancel", "the controller closed", 1)
    assert attempts_in(record) == [1]


async def test_a_timeout_is_not_retried(controller: MakeController, tmp_path: Path) -> None:
    crew = await controller(workers=1, seconds_retry=0.05)
    record = tmp_path / "record"
    with anyio.fail_after(30):
        result = await crew.push(
            record_and_hang, str(record), seconds_timeout=0.5, retries=3, retry_on=BaseException
        )
    assert (result.status, result.attempts) == ("error", 1)
    assert result.error is not None
    assert result.error.startswith("TimeoutError: the task ran longer than its seconds_timeout")
    assert attempts_in(record) == [1]


async def test_cancelling_a_retry_while_it_runs_interrupts_it_and_resolves_it_once(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, seconds_retry=0.05)
    record = tmp_path / "record"
    task = crew.push(raise_then_hang, str(record), retries=3)
    with anyio.fail_after(30):
        await until(lambda: attempts_in(record) == [1, 2])
        assert task.cancel()
        result = await task
        assert (result.status, result.error, result.attempts) == ("cancel", "cancelled", 2)
        # Interrupted, its worker goes on to the next task; the cancelled one is not retried.
        assert (await crew.push(add, 2, 2)).result == 4
    assert attempts_in(record) == [1, 2]
    assert crew.counts()["cancel"] == 1


async def test_a_crash_rerun_is_the_same_attempt(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=1, crashes_max=2, seconds_retry=0.05)
    record = tmp_path / "record"
    with anyio.fail_after(40):
        result = await crew.push(crash_then_raise, str(record), retries=2)
    assert (result.status, result.attempts) == ("success", 2)
    # The first run crashed; its rerun was attempt 1 again, and raised; attempt 2 returned.
    assert [attempt for attempt, _, _ in result.result] == [1, 1, 2]
    assert result.interruptions == 0


# -- push options through walk, map, a group and the Executor -------------------------------


async def test_map_retries_each_task_and_a_retried_task_stops_no_map(
    controller: MakeController, tmp_path: Path
) -> None:
    crew = await controller(workers=2, seconds_retry=0.05)
    records = [str(tmp_path / f"record-{n}") for n in range(3)]
    with anyio.fail_after(30):
        frame = await crew.map(flaky, records, [1, 1, 1], retries=1, retry_on=ConnectionError)
    assert frame["status"].to_list() == ["success"] * 3
    assert frame["attempts"].to_list() == [2, 2, 2]
    assert frame["interruptions"].to_list() == [0, 0, 0]
    tasks = await crew.walk(flaky, records, [5, 5, 5], retries=0)
    with anyio.fail_after(30):
        results = [await task for task in tasks]
    assert [result.attempts for result in results] == [1, 1, 1]


async def test_retry_options_refused_at_push(controller: MakeController) -> None:
    crew = await controller(workers=1)
    lock = threading.Lock()
    with pytest.raises(bc.SerializationError, match="cannot pickle retry_on"):
        crew.push(add, 1, 2, retries=1, retry_on=lambda error: lock.locked())
    with pytest.raises(ValueError, match="has no effect without retries"):
        crew.push(add, 1, 2, retry_on=ConnectionError)
    with pytest.raises(ValueError, match="retries must be a whole number >= 0"):
        crew.walk(add, [1], [2], retries=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not an exception type"):
        crew.push(add, 1, 2, retries=1, retry_on=int)  # type: ignore[arg-type]
    assert crew.counts()["tasks"] == 0


async def test_a_group_passes_retry_options_to_its_controller(
    controller_group: MakeGroup, tmp_path: Path
) -> None:
    group = await controller_group(
        bc.Controller("a", workers=1), bc.Controller("b", workers=1, seconds_retry=0.05)
    )
    with anyio.fail_after(30):
        result = await group.push(
            flaky, str(tmp_path / "record"), 2, retries=2, retry_on=ConnectionError, controller="b"
        )
    assert (result.controller, result.status, result.attempts) == ("b", "success", 3)


async def test_a_task_moved_to_its_backup_keeps_its_attempt(
    controller_group: MakeGroup, tmp_path: Path
) -> None:
    backup = bc.Controller("backup", workers=1, seconds_retry=0.05)
    first = bc.Controller("first", workers=1, crashes_max=0, backup=backup, seconds_retry=0.05)
    group = await controller_group(first, backup)
    with anyio.fail_after(40):
        result = await group.push(raise_crash_then_return, str(tmp_path / "record"), retries=2)
    # Attempt 1 raised on "first"; attempt 2 crashed there and ran again on the backup.
    assert [attempt for attempt, _, _ in result.result] == [1, 2, 2]
    assert (result.controller, result.status, result.attempts) == ("backup", "success", 2)


def test_the_executor_takes_retries_and_passes_a_task_its_own_retries_keyword(
    tmp_path: Path,
) -> None:
    with bc.Executor(workers=1, retries=2, seconds_retry=0.05) as executor:
        attempts = executor.submit(flaky, str(tmp_path / "record"), 2).result(timeout=30)
        assert [attempt for attempt, _, _ in attempts] == [1, 2, 3]
        # `retries=` to submit belongs to the function, as every keyword of submit does.
        assert executor.submit(dict, retries=7).result(timeout=30) == {"retries": 7}


# -- the result and the worker's context ---------------------------------------------------


def test_task_attempt_outside_a_task_says_where_it_works() -> None:
    with pytest.raises(bc.BatchcrewError, match="only inside a task running on a batchcrew"):
        bc.task_attempt()


def test_results_carry_their_attempts_and_interruptions_into_tables() -> None:
    result = bc.Result("t", 1, "success", None, None, (), 0.1, "w", "local", "c", None, 3, 1)
    assert result.to_dict()["attempts"] == 3
    assert result.to_dict()["interruptions"] == 1
    frame = bc.results_frame(
        [result, bc.Result("u", 2, "success", None, None, (), 0.1, "w", "local", "c")]
    )
    assert frame["attempts"].to_list() == [3, 1]
    assert frame["interruptions"].to_list() == [1, 0]


async def test_attempts_wait_on_the_loop_and_stop_when_told() -> None:
    attempts = Attempts(Backoff(0.01, 0.01, "none"))
    loop = asyncio.get_running_loop()
    ran: list[int] = []
    due = asyncio.Event()

    def run(task: int) -> None:
        ran.append(task)
        attempts.begin(task)
        due.set()

    assert attempts.wait(1, loop, run, crashes=2) == 0.01
    assert attempts.waiting(1)
    attempts.wait(2, loop, run)
    assert attempts.stop(2)
    assert not attempts.stop(2)
    with anyio.fail_after(10):
        await due.wait()
    assert ran == [1]
    assert not attempts.waiting(1)
    assert attempts.attempt(1) == 2
    assert attempts.take(1) == (2, 2, 0)
    assert attempts.take(2) == (1, 0, 0)  # stopped before its second attempt began
    assert attempts.take(3) is None
    assert attempts.stop_all() == []
