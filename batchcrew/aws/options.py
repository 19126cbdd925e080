"""`BatchOptions`: what every job a `BatchLauncher` submits has in common, validated once."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from batchcrew.aws._client import ClientSettings

MemoryUnits = Literal["gigabytes", "mebibytes"]


def mebibytes(value: float, units: MemoryUnits) -> int:
    """Memory in MiB as AWS Batch wants it: gigabytes x 5^9 / 2^11 (10^9 / 2^20), rounded."""
    if units == "gigabytes":
        return round(value * 5**9 / 2**11)
    return round(value)


def sanitize_job_name(name: str) -> str:
    """A job name AWS Batch accepts, as crew.aws.batch makes it: characters outside
    [A-Za-z0-9_-] become "_", it starts with a letter or digit, at most 128 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    if not cleaned or not cleaned[0].isalnum():
        cleaned = "x" + cleaned
    return cleaned[:128]


def _as_list(name: str, value: float | Sequence[float] | None) -> tuple[float, ...]:
    if value is None:
        return ()
    values = (value,) if isinstance(value, int | float) else tuple(value)
    if not values:
        raise ValueError(f"{name} must be a number or a non-empty list of numbers, not []")
    for item in values:
        if isinstance(item, bool) or not isinstance(item, int | float) or not item >= 0:
            raise ValueError(f"{name} must hold numbers >= 0, not {item!r}")
        if not math.isfinite(item):
            raise ValueError(f"{name} must hold finite numbers, not {item!r}")
    return values


@dataclass(frozen=True)
class BatchOptions:
    """Settings for the AWS Batch jobs that run a controller's workers.

    `job_definition` and `job_queue` name existing resources (see `aws.JobDefinition`).
    `cpus`, `gpus` and `memory` (in `memory_units`, "gigabytes" or "mebibytes") set each job's
    resource requirements; `None` keeps the job definition's. Each may be a list: workers start
    with the first value, and a task whose worker crashed (the job died under it, e.g. out of
    memory) is retried on a worker with the next value, the last value holding after that.
    The other fields pass through to SubmitJob as AWS names them (`parameters`,
    `container_overrides` merged under batchcrew's own, `node_overrides`, `retry_strategy`,
    `propagate_tags`, `timeout`, `tags`, `eks_properties_override`, `share_identifier`,
    `scheduling_priority_override`). `region`, `endpoint_url` and `profile` override the
    standard AWS resolution (environment, config files, AWS_ENDPOINT_URL);
    `retry_mode` and `max_attempts` configure botocore's retries of throttled calls.
    """

    job_definition: str
    job_queue: str
    cpus: float | Sequence[float] | None = None
    gpus: float | Sequence[float] | None = None
    memory: float | Sequence[float] | None = None
    memory_units: MemoryUnits = "gigabytes"
    share_identifier: str | None = None
    scheduling_priority_override: int | None = None
    parameters: Mapping[str, str] | None = None
    container_overrides: Mapping[str, Any] | None = None
    node_overrides: Mapping[str, Any] | None = None
    retry_strategy: Mapping[str, Any] | None = None
    propagate_tags: bool | None = None
    timeout: Mapping[str, Any] | None = None
    tags: Mapping[str, str] | None = None
    eks_properties_override: Mapping[str, Any] | None = None
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    retry_mode: Literal["standard", "adaptive"] = "adaptive"
    max_attempts: int = 10
    _cpus: tuple[float, ...] = field(init=False, repr=False)
    _gpus: tuple[float, ...] = field(init=False, repr=False)
    _memory: tuple[float, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("job_definition", "job_queue"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, not {value!r}")
        if self.memory_units not in ("gigabytes", "mebibytes"):
            raise ValueError(
                f'memory_units must be "gigabytes" or "mebibytes", not {self.memory_units!r}'
            )
        if self.retry_mode not in ("standard", "adaptive"):
            raise ValueError(
                f'retry_mode must be "standard" or "adaptive", not {self.retry_mode!r}'
            )
        if isinstance(self.max_attempts, bool) or not (
            isinstance(self.max_attempts, int) and self.max_attempts >= 1
        ):
            raise ValueError(f"max_attempts must be a whole number >= 1, not {self.max_attempts!r}")
        object.__setattr__(self, "_cpus", _as_list("cpus", self.cpus))
        object.__setattr__(self, "_gpus", _as_list("gpus", self.gpus))
        object.__setattr__(self, "_memory", _as_list("memory", self.memory))
        if any(value == 0 for value in self._cpus):
            raise ValueError("cpus must be > 0")
        if any(value == 0 for value in self._memory):
            raise ValueError("memory must be > 0")

    def client_settings(self) -> ClientSettings:
        """How the launcher's client reaches AWS."""
        return ClientSettings(
            self.region, self.endpoint_url, self.profile, self.retry_mode, self.max_attempts
        )

    @property
    def levels(self) -> int:
        """How many resource levels the lists of cpus, gpus and memory define (at least 1)."""
        return max(1, len(self._cpus), len(self._gpus), len(self._memory))

    def resource_requirements(self, level: int) -> list[dict[str, str]]:
        """SubmitJob's resourceRequirements at escalation `level` (0 = the first values)."""
        requirements = []
        for kind, values in (("VCPU", self._cpus), ("GPU", self._gpus), ("MEMORY", self._memory)):
            if not values:
                continue
            value = values[min(level, len(values) - 1)]
            if kind == "MEMORY":
                text = str(mebibytes(value, self.memory_units))
            elif kind == "VCPU":
                text = f"{value:g}"
            else:
                text = str(int(value))
            if kind == "GPU" and value == 0:
                continue
            requirements.append({"type": kind, "value": text})
        return requirements
