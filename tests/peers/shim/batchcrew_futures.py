"""`BatchcrewExecutor`: `bc.Executor` under `ProcessPoolExecutor`'s constructor, for CPython's
test_concurrent_futures. Only the constructor is mapped: the standard library's `mp_context`
has no meaning for batchcrew (its launcher starts the workers) and is dropped."""

from __future__ import annotations

import weakref
from typing import Any, ClassVar

import batchcrew as bc


class BatchcrewExecutor(bc.Executor):
    made: ClassVar[weakref.WeakSet[BatchcrewExecutor]] = weakref.WeakSet()

    @classmethod
    def shut_down_all(cls) -> None:
        """Shut down every executor made and still referenced (the adapter's teardown)."""
        for executor in list(cls.made):
            executor.shutdown(wait=True)

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Any = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
    ) -> None:
        super().__init__(
            max_workers,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
        )
        self.made.add(self)
