"""AWS Batch: a launcher whose workers are Batch jobs, its options, and the error type.

`aws.batch_controller(...)` makes a controller whose workers are AWS Batch jobs;
`aws.BatchLauncher` is its launcher and `aws.BatchOptions` what its jobs have in common.
"""

from __future__ import annotations

from batchcrew.aws.launcher import BatchLauncher, batch_controller
from batchcrew.aws.options import BatchOptions
from batchcrew.errors import BatchError

__all__ = ["BatchError", "BatchLauncher", "BatchOptions", "batch_controller"]
