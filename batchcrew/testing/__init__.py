"""Test helpers: a local AWS Batch + CloudWatch Logs emulator that really runs jobs, the
pytest fixtures built on it (`local_batch`, in `batchcrew.testing.pytest_plugin`), and a swarm
launcher that runs many real workers per process (`SwarmLauncher`) to test at scale.

The names below are imported on first use, so that loading the pytest plugin (which every
pytest run does once batchcrew is installed) does not import the HTTP server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchcrew.testing._localbatch import LocalBatch
    from batchcrew.testing._options import LocalBatchOptions
    from batchcrew.testing._server import ApiRequest
    from batchcrew.testing._swarm import SwarmLauncher

__all__ = ["ApiRequest", "LocalBatch", "LocalBatchOptions", "SwarmLauncher"]

_MODULES = {
    "ApiRequest": "batchcrew.testing._server",
    "LocalBatch": "batchcrew.testing._localbatch",
    "LocalBatchOptions": "batchcrew.testing._options",
    "SwarmLauncher": "batchcrew.testing._swarm",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module 'batchcrew.testing' has no attribute {name!r}")
