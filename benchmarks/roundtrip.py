"""Where one round trip's time goes: batchcrew against the plain loop, step by step.

    python benchmarks/roundtrip.py [--trips 3000] [--runs 3] [--awake]

One task at a time on one worker, as `core.py` measures its round trip. Each hand-off is
timestamped (`time.perf_counter_ns`, which on Linux is one clock for every process):

- push: from the call until the task's frames are handed to ZeroMQ (batchcrew: the task, the
  function's pickle or the check that it can be reused, the scheduler, the message; the plain
  loop: cloudpickling the function and its arguments);
- out: until the worker has read and parsed it (ZeroMQ's threads, CURVE, TCP, wake-ups);
- worker: until its result is handed to ZeroMQ (unpickle, run, pickle, the message);
- back: until the controller starts reading it (the plain loop: until its awaited read
  returns, so its own reading is in here);
- read: until the awaiting coroutine has the result (batchcrew: the message, the scheduler,
  the records, the `Result`, waking the coroutine; the plain loop: unpickling).

batchcrew's steps are timed by wrapping a few of its own functions (the dispatcher's `_send`,
`_on_readable` and `_on_frames`, the worker's `_Channel.receive` and `_Channel.send`), in a
worker started through this script; the wrappers add about a microsecond. Figures are medians
over the trips of a run, then the median over --runs runs taken in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import cloudpickle
import zmq
import zmq.asyncio
from core import PLAIN_WORKER, awake  # the script's own directory is on the path
from rich.console import Console
from rich.table import Table


def noop(_: object = None) -> None:  # as in core.py: a script's function, sent by value
    return None


STEPS = ("push", "out", "worker", "back", "read", "total")
_OUT = "BATCHCREW_ROUNDTRIP_OUT"  # where a timed worker writes its timestamps
now = time.perf_counter_ns


def _steps(
    starts: list[int], sent: list[int], got: list[int], done: list[int], read: list[int],
    ends: list[int],
) -> dict[str, float]:  # fmt: skip
    """Median microseconds of each step, from each trip's timestamps."""
    rows = [
        (s1 - s0, g - s1, d - g, r - d, e - r, e - s0)
        for s0, s1, g, d, r, e in zip(starts, sent, got, done, read, ends, strict=True)
    ]
    return {step: statistics.median(row[i] for row in rows) / 1e3 for i, step in enumerate(STEPS)}


# -- batchcrew ---------------------------------------------------------------------------------


def timed_worker() -> None:
    """Run a batchcrew worker that records when it has read each task and sent each result."""
    from batchcrew import worker

    got: list[int] = []
    done: list[int] = []
    receive, send = worker._Channel.receive, worker._Channel.send

    def timed_receive(self: Any, timeout: float) -> Any:
        message = receive(self, timeout)
        if message is not None:
            got.append(now())
        if isinstance(message, worker.protocol.Stop):  # written now: the launcher may end it
            Path(os.environ[_OUT], f"{os.getpid()}.json").write_text(json.dumps([got, done]))
        return message

    def timed_send(self: Any, frames: Any) -> None:
        send(self, frames)
        done.append(now())

    worker._Channel.receive = timed_receive  # type: ignore[method-assign]
    worker._Channel.send = timed_send  # type: ignore[method-assign]
    worker.main([])


def batchcrew_steps(trips: int, security: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        os.environ[_OUT] = out
        starts, sent, read, ends = asyncio.run(_batchcrew_trips(trips, security))
        (path,) = Path(out).glob("*.json")
        got, done = json.loads(path.read_text())
    # The worker's last read is the controller's goodbye, and a send may follow the trips.
    got = got[-trips - 1 : -1]
    done = [stamp for stamp in done if stamp < ends[-1]][-trips:]
    return _steps(starts, sent, got, done, read, ends)


async def _batchcrew_trips(trips: int, security: str) -> tuple[list[int], ...]:
    import batchcrew as bc
    from batchcrew import dispatcher

    sent: list[int] = []
    read: list[int] = []
    reading = [0]
    send, readable, frames = (
        dispatcher.Dispatcher._send,
        dispatcher.Dispatcher._on_readable,
        dispatcher.Dispatcher._on_frames,
    )

    def timed_send(self: Any, worker: bytes, parts: Any) -> None:
        send(self, worker, parts)
        sent.append(now())

    def timed_readable(self: Any) -> None:
        reading[0] = now()
        readable(self)

    def timed_frames(self: Any, parts: Any) -> None:
        read.append(reading[0])  # a read that found a message (not every signal has one)
        frames(self, parts)

    starts: list[int] = []
    ends: list[int] = []
    with (
        mock.patch.object(dispatcher, "WORKER_COMMAND", (sys.executable, __file__, "--worker")),
        mock.patch.multiple(
            dispatcher.Dispatcher,
            _send=timed_send,
            _on_readable=timed_readable,
            _on_frames=timed_frames,
        ),
    ):
        async with bc.Controller(name="roundtrip", workers=1, security=security) as crew:  # type: ignore[arg-type]
            await crew.map(noop, range(400))
            sent.clear()
            read.clear()
            for _ in range(trips):
                starts.append(now())
                await crew.push(noop)
                ends.append(now())
    return starts, sent[:trips], read[:trips], ends


# -- the plain loop ----------------------------------------------------------------------------

_READ = "    task_id, payload = sock.recv_multipart()\n"
_SENT = "protocol=5)])\n"
assert _READ in PLAIN_WORKER, "core.py's plain worker changed"
assert _SENT in PLAIN_WORKER, "core.py's plain worker changed"
TIMED_PLAIN_WORKER = (
    PLAIN_WORKER.replace("import pickle, sys", "import json, pickle, sys, time\ngot, done = [], []")
    .replace(_READ, _READ + "    got.append(time.perf_counter_ns())\n")
    .replace(_SENT, _SENT + "    done.append(time.perf_counter_ns())\n")
    + "open(sys.argv[3], 'w').write(json.dumps([got, done]))\n"
)


def plain_steps(trips: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        path = Path(out, "plain.json")
        starts, sent, read, ends = asyncio.run(_plain_trips(trips, path))
        got, done = json.loads(path.read_text())
    # Its "back" runs to the awaited read's return: its own reading is in there.
    return _steps(starts, sent, got[400 : 400 + trips], done[400:], read, ends)


async def _plain_trips(trips: int, path: Path) -> tuple[list[int], ...]:
    context = zmq.asyncio.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    address = f"tcp://127.0.0.1:{port}"
    worker = subprocess.Popen([sys.executable, "-c", TIMED_PLAIN_WORKER, address, "w0", str(path)])
    starts: list[int] = []
    sent: list[int] = []
    read: list[int] = []
    ends: list[int] = []
    try:
        identity = (await router.recv_multipart())[0]
        for trip in range(400 + trips):
            start = now()
            payload = cloudpickle.dumps((noop, ()), protocol=5)
            await router.send_multipart([identity, b"0", payload])
            handed = now()
            frames = await router.recv_multipart()
            received = now()
            cloudpickle.loads(frames[2])
            if trip >= 400:
                starts.append(start)
                sent.append(handed)
                read.append(received)
                ends.append(now())
        await router.send_multipart([identity, b"stop", b""])
        await asyncio.to_thread(worker.wait, 30)
    finally:
        worker.kill()
        router.close(0)
        context.term()
    return starts, sent, read, ends


# -- the table ---------------------------------------------------------------------------------


def main() -> None:
    if sys.argv[1:] == ["--worker"]:
        timed_worker()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--awake", action="store_true", help="keep every core busy at idle priority"
    )
    args = parser.parse_args()
    systems = {
        "plain zmq loop": lambda: plain_steps(args.trips),
        'batchcrew, security="none"': lambda: batchcrew_steps(args.trips, "none"),
        'batchcrew, security="curve"': lambda: batchcrew_steps(args.trips, "curve"),
    }
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in systems}
    with awake() if args.awake else contextlib.nullcontext():
        for _ in range(args.runs):
            for label, run in systems.items():
                runs[label].append(run())
    table = Table(
        title=f"one round trip, step by step: us, medians of {args.trips:,} trips, "
        f"median of {args.runs} runs{' (cores awake)' if args.awake else ''}"
    )
    table.add_column("")
    for step in STEPS:
        table.add_column(step, justify="right")
    for label, figures in runs.items():
        table.add_row(
            label, *(f"{statistics.median(f[step] for f in figures):.1f}" for step in STEPS)
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
