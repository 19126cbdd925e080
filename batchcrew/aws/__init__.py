"""AWS Batch: a launcher whose workers are Batch jobs, job definitions, and a job monitor.

`aws.batch_controller(...)` makes a controller whose workers are AWS Batch jobs;
`aws.BatchLauncher` is its launcher and `aws.BatchOptions` what its jobs have in common.
`aws.JobDefinition` and `aws.BatchMonitor` manage definitions and watch and end jobs by hand.
`aws.worker_dockerfile()` writes a Dockerfile for the workers' image, and `aws.worker_context()`
its build context (with a wheel of this batchcrew, for one installed from a clone).
`aws.doctor()` checks a queue and a definition before a run, and launches one worker to see it work.
"""

from __future__ import annotations

from batchcrew.aws._doctor import DoctorReport, doctor
from batchcrew.aws.definition import JobDefinition
from batchcrew.aws.image import worker_context, worker_dockerfile
from batchcrew.aws.launcher import BatchLauncher, batch_controller
from batchcrew.aws.monitor import BatchMonitor
from batchcrew.aws.options import BatchOptions
from batchcrew.errors import BatchError

__all__ = [
    "BatchError",
    "BatchLauncher",
    "BatchMonitor",
    "BatchOptions",
    "DoctorReport",
    "JobDefinition",
    "batch_controller",
    "doctor",
    "worker_context",
    "worker_dockerfile",
]
