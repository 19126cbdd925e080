"""The in-process launcher: one worker on a thread of the controller's own process, for
debugging (`breakpoint()` and pdb in a task) and for tests and notebooks."""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from collections.abc import Sequence

import anyio
import anyio.to_thread

from batchcrew import worker
from batchcrew.launchers.base import Launcher, LaunchRequest, WorkerExit, logger

_SECONDS_CLOSE = 5.0  # how long close waits for a worker told to leave (its task may run on)


class InProcessLauncher(Launcher):
    """Run tasks in the controller's own process, one at a time, on a thread of their own.

    The worker is the usual one, over the usual socket, so Results, tables, timeouts and
    retries are those of any launcher; but its tasks see this process's live module globals
    (a function of your script reads and sets the script's own globals), `breakpoint()` and
    pdb work in a task (on this process's terminal), and a traceback names your own files.
    The controller's `workers` must be 1. What differs: a task's output is not captured
    (it goes to this process's terminal as it is written); a cancelled or timed-out task is
    interrupted by an asynchronous exception, which Python raises between bytecodes but not
    inside a long C call; and a task that ignores its interruption cannot be ended: the
    worker goes on when it returns. Use `LocalLauncher` for real runs.
    """

    name = "in-process"

    def __init__(self) -> None:
        super().__init__()
        self._threads: dict[tuple[str, int], threading.Thread] = {}

    async def open(self) -> None:
        """Begin serving a controller (again)."""
        self._threads.clear()

    async def launch(self, request: LaunchRequest) -> None:
        """Start the worker of `request` on a thread of this process."""
        loop = asyncio.get_running_loop()
        for index in range(request.count):
            environment = {**request.environment, "BATCHCREW_WORKER_INDEX": str(index)}
            settings = worker.WorkerSettings.from_environment(environment)
            thread = threading.Thread(
                target=self._run,
                args=(loop, request.launch, index, settings),
                name=f"batchcrew-in-process-{request.launch}:{index}",
                daemon=True,  # never holds the interpreter open at exit
            )
            self._threads[(request.launch, index)] = thread
            thread.start()

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        launch: str,
        index: int,
        settings: worker.WorkerSettings,
    ) -> None:
        code, how = 0, "the in-process worker returned"
        try:
            reason = worker.serve(settings, in_process=True)
            how = f"the in-process worker left: {reason}"
        except worker.SetupError as error:
            code, how = worker.EXIT_SETUP, f"the in-process worker stopped: {error}"
        except BaseException as error:
            traceback.print_exc(file=sys.stderr)
            code, how = 1, f"the in-process worker failed: {type(error).__name__}: {error}"
        finally:
            self._threads.pop((launch, index), None)
        if not loop.is_closed():
            exit = WorkerExit(launch, index, code, how)
            loop.call_soon_threadsafe(self.report, exit)

    async def close(self) -> None:
        """Wait, a little, for the worker to leave (the controller has told it to)."""
        for thread in list(self._threads.values()):
            await anyio.to_thread.run_sync(thread.join, _SECONDS_CLOSE)

    async def terminate(self, launch: str, indexes: Sequence[int] | None = None) -> None:
        """A thread cannot be ended from outside: it leaves when its controller tells it to
        (at close), or when its task returns."""
        for owner, index in list(self._threads):
            if owner == launch and (indexes is None or index in indexes):
                logger.warning(
                    "the in-process worker %s:%d cannot be ended: it leaves when its task returns",
                    owner,
                    index,
                )
