"""Run Python tasks on auto-scaled workers, local or on AWS Batch, from asyncio.

The public names are imported lazily, so that `python -m batchcrew.worker` starts without
loading polars and the controller's other dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchcrew.controller import Controller, Task
    from batchcrew.errors import (
        BatchcrewError,
        ControllerClosedError,
        CrashError,
        JournalError,
        LaunchError,
        ProtocolError,
        SerializationError,
        TaskError,
        TaskInterrupted,
        TaskTooLargeError,
    )
    from batchcrew.executor import Executor
    from batchcrew.group import ControllerGroup
    from batchcrew.journal_view import Journal
    from batchcrew.launchers.base import Launcher, LaunchRequest, WorkerExit
    from batchcrew.launchers.inprocess import InProcessLauncher
    from batchcrew.launchers.local import LocalLauncher
    from batchcrew.results import Result, results_frame
    from batchcrew.seeding import task_attempt, task_seed
    from batchcrew.walking import Walk

__version__ = "0.2.0"

__all__ = [
    "BatchcrewError",
    "Controller",
    "ControllerClosedError",
    "ControllerGroup",
    "CrashError",
    "Executor",
    "InProcessLauncher",
    "Journal",
    "JournalError",
    "LaunchError",
    "LaunchRequest",
    "Launcher",
    "LocalLauncher",
    "ProtocolError",
    "Result",
    "SerializationError",
    "Task",
    "TaskError",
    "TaskInterrupted",
    "TaskTooLargeError",
    "Walk",
    "WorkerExit",
    "results_frame",
    "task_attempt",
    "task_seed",
]

_HOMES = {
    "Controller": "batchcrew.controller",
    "Result": "batchcrew.results",
    "Task": "batchcrew.controller",
    "results_frame": "batchcrew.results",
    "BatchcrewError": "batchcrew.errors",
    "ControllerClosedError": "batchcrew.errors",
    "CrashError": "batchcrew.errors",
    "JournalError": "batchcrew.errors",
    "Journal": "batchcrew.journal_view",
    "LaunchError": "batchcrew.errors",
    "ProtocolError": "batchcrew.errors",
    "SerializationError": "batchcrew.errors",
    "TaskError": "batchcrew.errors",
    "TaskInterrupted": "batchcrew.errors",
    "TaskTooLargeError": "batchcrew.errors",
    "Launcher": "batchcrew.launchers.base",
    "LaunchRequest": "batchcrew.launchers.base",
    "WorkerExit": "batchcrew.launchers.base",
    "LocalLauncher": "batchcrew.launchers.local",
    "InProcessLauncher": "batchcrew.launchers.inprocess",
    "Executor": "batchcrew.executor",
    "ControllerGroup": "batchcrew.group",
    "task_seed": "batchcrew.seeding",
    "task_attempt": "batchcrew.seeding",
    "Walk": "batchcrew.walking",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'batchcrew' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
