"""The conditions a `LocalBatch` emulates: capacity, start-up delay, latency, throttling, faults.

One frozen value, validated once at construction, so a test states its weather in one place.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from batchcrew.testing._rules import check_lenient
from batchcrew.testing._wire import operation_names

#: Per-operation values: one number for every operation, or a mapping from operation name
#: ("SubmitJob", "GetLogEvents", ...) to a number, where the key "*" is the default.
PerOperation = float | Mapping[str, float]


def _per_operation_value(setting: PerOperation, operation: str) -> float:
    if isinstance(setting, Mapping):
        return float(setting.get(operation, setting.get("*", 0.0)))
    return float(setting)


def _check_per_operation(name: str, setting: PerOperation, low: float, high: float) -> None:
    values = setting.items() if isinstance(setting, Mapping) else [("*", setting)]
    known = operation_names()
    for operation, value in values:
        if operation != "*" and operation not in known:
            raise ValueError(
                f"{name} names an unknown operation {operation!r}; use an AWS Batch or "
                f"CloudWatch Logs operation name such as 'SubmitJob', or '*' for the default"
            )
        if not (isinstance(value, int | float) and low <= value <= high):
            raise ValueError(
                f"{name}[{operation!r}] must be between {low} and {high}, got {value!r}"
            )


@dataclass(frozen=True)
class LocalBatchOptions:
    """How the emulated AWS Batch behaves. Every random choice comes from `seed`.

    - `vcpus`, `memory_mib`: the compute capacity shared by all queues. A job waits RUNNABLE
      until its VCPU and MEMORY requirements fit in what running jobs leave free (a job that can
      never fit waits forever, as on AWS).
    - `startup_delay`: seconds a job spends in STARTING before its process starts.
    - `latency`: seconds each API call takes, per operation or for all.
    - `throttle_rate`: probability that a call fails with a throttling error
      (TooManyRequestsException for Batch, ThrottlingException for Logs).
    - `fault_rate`: probability that a call fails with a server error
      (ServerException for Batch, ServiceUnavailableException for Logs).
    - `seed`: seeds the random draws of `throttle_rate` and `fault_rate`.
    - `region`: the region of pre-created resources and of requests that carry none.
    - `log_group`: the CloudWatch Logs group job output goes to.
    - `stop_timeout`: seconds between SIGTERM and SIGKILL when a running job is stopped
      (TerminateJob, a timeout, a reclaimed host), as ECS stops a container: 30 by default,
      ECS's own (ECS_CONTAINER_STOP_TIMEOUT; ContainerDefinition.stopTimeout in the ECS model:
      "If neither the stopTimeout parameter or the ECS_CONTAINER_STOP_TIMEOUT agent
      configuration variable are set, then the default values of 30 seconds for Linux
      containers ... are used", and 30 seconds on Fargate). Tests give a short one.
    - `memory_poll_interval`: seconds between two reads of the jobs' memory use.
    - `lenient`: names of AWS rules the emulator does not enforce (see
      `batchcrew.testing._rules.RULES`), such as {"timeout_minimum"} to let a test time a job
      out after 1 second. Empty by default: the emulator refuses what AWS refuses.
    """

    vcpus: float = 256.0
    memory_mib: int = 1024 * 1024
    startup_delay: float = 0.0
    latency: PerOperation = 0.0
    throttle_rate: PerOperation = 0.0
    fault_rate: PerOperation = 0.0
    seed: int = 0
    region: str = "us-east-1"
    log_group: str = "/aws/batch/job"
    stop_timeout: float = 30.0
    memory_poll_interval: float = 0.05
    lenient: Collection[str] = field(default=frozenset())

    def __post_init__(self) -> None:
        # A frozenset, however given: the options stay hashable and compare by value.
        object.__setattr__(self, "lenient", check_lenient(self.lenient))
        if not (self.vcpus > 0 and math.isfinite(self.vcpus)):
            raise ValueError(f"vcpus must be a positive number, got {self.vcpus!r}")
        if not self.memory_mib > 0:
            raise ValueError(
                f"memory_mib must be a positive number of MiB, got {self.memory_mib!r}"
            )
        for name in ("startup_delay", "stop_timeout"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if not self.memory_poll_interval > 0:
            raise ValueError(
                f"memory_poll_interval must be > 0 seconds, got {self.memory_poll_interval!r}"
            )
        _check_per_operation("latency", self.latency, 0.0, math.inf)
        _check_per_operation("throttle_rate", self.throttle_rate, 0.0, 1.0)
        _check_per_operation("fault_rate", self.fault_rate, 0.0, 1.0)
        if not self.region:
            raise ValueError("region must be a region name such as 'us-east-1', got ''")
        if not self.log_group:
            raise ValueError("log_group must be a log group name such as '/aws/batch/job'")

    def latency_of(self, operation: str) -> float:
        """Seconds the emulator waits before answering `operation`."""
        return _per_operation_value(self.latency, operation)

    def throttle_rate_of(self, operation: str) -> float:
        """Probability that a call of `operation` is throttled."""
        return _per_operation_value(self.throttle_rate, operation)

    def fault_rate_of(self, operation: str) -> float:
        """Probability that a call of `operation` fails with a server error."""
        return _per_operation_value(self.fault_rate, operation)
