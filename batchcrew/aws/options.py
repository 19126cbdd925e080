"""`BatchOptions`: what every job a `BatchLauncher` submits has in common, validated once.

Options that AWS would refuse are refused here, when they are built, with the rule and the fix
(see `_rules`); what depends on the job definition (its platform, its vCPUs and memory) is
settled by `plan()` once the launcher has read the definition.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from batchcrew.aws import _rules
from batchcrew.aws._client import ClientSettings
from batchcrew.aws._rules import MemoryUnits, Platform, mebibytes

__all__ = ["BatchOptions", "MemoryUnits", "Platform", "Resources", "mebibytes"]

#: Tags batchcrew adds to every job it submits (its `batchcrew:controller` tag).
OWN_TAGS = 1
#: "This string is limited to 255 alphanumeric characters, and can be followed by an asterisk"
#: (SubmitJob's shareIdentifier, botocore's Batch model).
_SHARE_IDENTIFIER = re.compile(r"^[A-Za-z0-9]{1,255}\*?$")
#: evaluateOnExit: "You can specify up to 5 configuration objects"; each pattern "can contain
#: up to 512 characters" (RetryStrategy and EvaluateOnExit, botocore's Batch model).
_EVALUATE_ON_EXIT_MAX = 5
_PATTERN_MAX = 512
#: EvaluateOnExit.onExitCode "can contain only numbers, and can end with an asterisk";
#: onStatusReason and onReason "can contain letters, numbers, periods (.), colons (:), and
#: white spaces" and "can optionally end with an asterisk".
_PATTERNS = {
    "onExitCode": (re.compile(r"[0-9]*\*?"), "digits, optionally ending with *"),
    "onStatusReason": (
        re.compile(r"[A-Za-z0-9.:\s]*\*?"),
        "letters, digits, periods, colons and spaces, optionally ending with *",
    ),
    "onReason": (
        re.compile(r"[A-Za-z0-9.:\s]*\*?"),
        "letters, digits, periods, colons and spaces, optionally ending with *",
    ),
}


def sanitize_job_name(name: str) -> str:
    """A job name AWS Batch accepts, as crew.aws.batch makes it: characters outside
    [A-Za-z0-9_-] become "_", it starts with a letter or digit, at most 128 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    if not cleaned or not cleaned[0].isalnum():
        cleaned = "x" + cleaned
    return cleaned[:128]


@dataclass(frozen=True)
class Resources:
    """What a job definition's container reserves: vCPUs, memory in MiB and GPUs (None: not
    set), as read from DescribeJobDefinitions."""

    cpus: float | None = None
    memory_mib: int | None = None
    gpus: float | None = None

    @classmethod
    def of_container(cls, container: Mapping[str, Any]) -> Resources:
        """The resources of a definition's containerProperties: its resourceRequirements,
        else the deprecated vcpus and memory fields."""
        found: dict[str, str] = {
            str(item.get("type")): str(item.get("value"))
            for item in container.get("resourceRequirements") or []
        }
        cpus = found.get("VCPU", container.get("vcpus"))
        memory = found.get("MEMORY", container.get("memory"))
        gpus = found.get("GPU")
        return cls(
            None if cpus is None else float(cpus),
            None if memory is None else int(memory),
            None if gpus is None else float(gpus),
        )


@dataclass(frozen=True)
class Plan:
    """What `BatchOptions.plan` settled: resourceRequirements for each level, and a note of
    each memory Fargate rounded up (for the launcher to log once)."""

    platform: Platform
    levels: tuple[tuple[dict[str, str], ...], ...]
    rounded: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchOptions:
    """Settings for the AWS Batch jobs that run a controller's workers.

    `job_definition` and `job_queue` name existing resources (see `aws.JobDefinition`).
    `platform` is "EC2" or "FARGATE"; None (the default) reads it from the job definition when
    the launcher starts. `cpus`, `gpus` and `memory` (in `memory_units`, "gigabytes" or
    "mebibytes") set each job's resource requirements; `None` keeps the job definition's. Each
    may be a list: workers start with the first value, and a task whose worker crashed (the
    job died under it, e.g. out of memory) is retried on a worker with the next value, the last
    value holding after that. On Fargate a memory rounds up to the smallest value Fargate
    allows with the vCPU count (`memory=[4, 8, 16]` with `cpus=2` runs 4096, 8192 and 15360
    MiB), and a value more than it allows is refused with the allowed values.

    The other fields pass through to SubmitJob as AWS names them: `parameters`,
    `container_overrides` (its `environment` only: batchcrew sets the command and the
    resources), `retry_strategy`, `propagate_tags`, `timeout` (at least 60 seconds),
    `tags` (at most 49: batchcrew adds one), `share_identifier`,
    `scheduling_priority_override`. `node_overrides` and `eks_properties_override` are refused:
    batchcrew runs its workers as container jobs on ECS (EC2 or Fargate), not as multi-node
    parallel jobs or on EKS. `region`, `endpoint_url` and `profile` override the standard AWS
    resolution (environment, config files, AWS_ENDPOINT_URL); `retry_mode` and `max_attempts`
    configure botocore's retries of throttled calls.

    Raises ValueError, naming the option, the rule and the fix, for a value AWS would refuse.
    """

    job_definition: str
    job_queue: str
    cpus: float | Sequence[float] | None = None
    gpus: float | Sequence[float] | None = None
    memory: float | Sequence[float] | None = None
    memory_units: MemoryUnits = "gigabytes"
    platform: Platform | None = None
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
        _rules.check_platform("platform", self.platform)
        if self.retry_mode not in ("standard", "adaptive"):
            raise ValueError(
                f'retry_mode must be "standard" or "adaptive", not {self.retry_mode!r}'
            )
        if isinstance(self.max_attempts, bool) or not (
            isinstance(self.max_attempts, int) and self.max_attempts >= 1
        ):
            raise ValueError(f"max_attempts must be a whole number >= 1, not {self.max_attempts!r}")
        object.__setattr__(self, "_cpus", _rules.listed("cpus", self.cpus))
        object.__setattr__(self, "_gpus", _rules.listed("gpus", self.gpus))
        object.__setattr__(self, "_memory", _rules.listed("memory", self.memory))
        if any(value == 0 for value in self._cpus):
            raise ValueError("cpus must be > 0")
        if any(value == 0 for value in self._memory):
            raise ValueError("memory must be > 0")
        if any(value != int(value) for value in self._gpus):
            raise ValueError(f"gpus must hold whole numbers, not {self.gpus!r}")
        self._check_passthrough()
        if self.platform is not None:
            # Everything the definition cannot change is checked now, the rest at start.
            self.plan(self.platform, None)

    def _check_passthrough(self) -> None:
        for name in ("node_overrides", "eks_properties_override"):
            if getattr(self, name) is not None:
                what = "AWS Batch on EKS"
                if name == "node_overrides":
                    what = "multi-node parallel jobs"
                raise ValueError(
                    f"{name} is not supported: batchcrew runs each worker as a container job on "
                    f"ECS (EC2 or Fargate) and does not run {what}; use a job queue of an EC2 or "
                    "Fargate compute environment and a container job definition"
                )
        overrides = self.container_overrides
        if overrides is not None:
            if not isinstance(overrides, Mapping):
                raise ValueError(f"container_overrides must be a mapping, not {overrides!r}")
            for key in overrides:
                if key == "environment":
                    continue
                if key == "command":
                    fix = "batchcrew sets the worker's command itself"
                elif key in ("resourceRequirements", "vcpus", "memory"):
                    fix = "give cpus=, gpus= and memory= instead"
                elif key == "instanceType":
                    fix = "it applies to multi-node parallel jobs, which batchcrew does not run"
                else:
                    fix = "SubmitJob's containerOverrides has no such member"
                raise ValueError(
                    f"container_overrides[{key!r}] is not accepted: {fix}; container_overrides "
                    "may hold 'environment' only"
                )
            for item in overrides.get("environment") or []:
                variable = item.get("name") if isinstance(item, Mapping) else None
                if (
                    not isinstance(variable, str)
                    or not variable
                    or not isinstance(item.get("value"), str)
                ):
                    raise ValueError(
                        "container_overrides['environment'] must hold {'name': ..., 'value': "
                        f"...}} strings, not {item!r}"
                    )
                if variable.startswith("AWS_BATCH"):
                    # ContainerOverrides.environment: "Environment variables cannot start with
                    # "AWS_BATCH". This naming convention is reserved for variables that Batch
                    # sets."
                    raise ValueError(
                        f"container_overrides['environment']: {variable} starts with AWS_BATCH, "
                        "which AWS reserves for the variables Batch sets"
                    )
        if self.timeout is not None:
            if not isinstance(self.timeout, Mapping) or set(self.timeout) != {
                "attemptDurationSeconds"
            }:
                raise ValueError(
                    "timeout must be {'attemptDurationSeconds': seconds}, as SubmitJob takes it, "
                    f"not {self.timeout!r}"
                )
            seconds = self.timeout["attemptDurationSeconds"]
            if _rules.check_timeout("timeout['attemptDurationSeconds']", seconds) != seconds:
                raise ValueError(
                    f"timeout['attemptDurationSeconds'] must be a whole number of seconds, "
                    f"not {seconds!r}"
                )
        if self.tags is not None:
            if not isinstance(self.tags, Mapping):
                raise ValueError(f"tags must be a mapping of strings to strings, not {self.tags!r}")
            _rules.check_tags("tags", self.tags, room=_rules.TAGS_MAX - OWN_TAGS)
        if self.parameters is not None and not (
            isinstance(self.parameters, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in self.parameters.items())
        ):
            raise ValueError(
                f"parameters must be a mapping of strings to strings, not {self.parameters!r}"
            )
        if self.share_identifier is not None and not (
            isinstance(self.share_identifier, str)
            and _SHARE_IDENTIFIER.match(self.share_identifier)
        ):
            raise ValueError(
                f"share_identifier={self.share_identifier!r}: AWS takes up to 255 letters and "
                "digits, optionally followed by '*'"
            )
        priority = self.scheduling_priority_override
        if priority is not None and (
            isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9999
        ):
            raise ValueError(
                f"scheduling_priority_override must be a whole number from 0 to 9999, "
                f"not {priority!r}"
            )
        if self.propagate_tags is not None and not isinstance(self.propagate_tags, bool):
            raise ValueError(
                f"propagate_tags must be True, False or None, not {self.propagate_tags!r}"
            )
        if self.retry_strategy is not None:
            self._check_retry_strategy(self.retry_strategy)

    @staticmethod
    def _check_retry_strategy(strategy: Mapping[str, Any]) -> None:
        if not isinstance(strategy, Mapping) or not set(strategy) <= {
            "attempts",
            "evaluateOnExit",
        }:
            raise ValueError(
                "retry_strategy must be {'attempts': n, 'evaluateOnExit': [...]}, as SubmitJob "
                f"takes it, not {strategy!r}"
            )
        attempts = strategy.get("attempts")
        if attempts is not None and (
            isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 10
        ):
            # RetryStrategy.attempts: "You can specify between 1 and 10 attempts."
            raise ValueError(
                f"retry_strategy['attempts'] must be a whole number from 1 to 10, not {attempts!r}"
            )
        rules = strategy.get("evaluateOnExit") or []
        if not isinstance(rules, Sequence) or len(rules) > _EVALUATE_ON_EXIT_MAX:
            raise ValueError(
                f"retry_strategy['evaluateOnExit'] must be a list of at most "
                f"{_EVALUATE_ON_EXIT_MAX} rules, not {rules!r}"
            )
        if rules and attempts is None:
            # RetryStrategy.evaluateOnExit: "If this parameter is specified, then the attempts
            # parameter must also be specified."
            raise ValueError(
                "retry_strategy with 'evaluateOnExit' needs 'attempts' too, as AWS requires"
            )
        for rule in rules:
            if not isinstance(rule, Mapping) or str(rule.get("action", "")).upper() not in (
                "RETRY",
                "EXIT",
            ):
                raise ValueError(
                    "each retry_strategy['evaluateOnExit'] rule needs an 'action' of RETRY or "
                    f"EXIT, not {rule!r}"
                )
            for key, (allowed, words) in _PATTERNS.items():
                pattern = rule.get(key)
                if pattern is not None and (
                    not isinstance(pattern, str)
                    or len(pattern) > _PATTERN_MAX
                    or not allowed.fullmatch(pattern)
                ):
                    raise ValueError(
                        f"retry_strategy['evaluateOnExit'] {key} must be a pattern of at most "
                        f"{_PATTERN_MAX} characters of {words}, not {pattern!r}"
                    )

    def client_settings(self) -> ClientSettings:
        """How the launcher's client reaches AWS."""
        return ClientSettings(
            self.region, self.endpoint_url, self.profile, self.retry_mode, self.max_attempts
        )

    @property
    def levels(self) -> int:
        """How many resource levels the lists of cpus, gpus and memory define (at least 1)."""
        return max(1, len(self._cpus), len(self._gpus), len(self._memory))

    def _amounts(self, level: int) -> tuple[float | None, float | None, int | None]:
        """(cpus, gpus, memory in MiB) asked at escalation `level` (0 = the first values),
        before any platform rule; None where the job definition's value holds."""

        def pick(values: tuple[float, ...]) -> float | None:
            return values[min(level, len(values) - 1)] if values else None

        memory = pick(self._memory)
        return (
            pick(self._cpus),
            pick(self._gpus),
            None if memory is None else mebibytes(memory, self.memory_units),
        )

    def plan(self, platform: Platform, definition: Resources | None) -> Plan:
        """The resourceRequirements of every level on `platform`, given the resources of the
        job definition (None: not known yet, so a Fargate memory or vCPU count given without
        the other is checked later). Raises ValueError, naming the level, for amounts AWS
        refuses on `platform`."""
        levels: list[tuple[dict[str, str], ...]] = []
        rounded: list[str] = []
        for level in range(self.levels):
            cpus, gpus, memory = self._amounts(level)
            if platform == "FARGATE" and (cpus is None) != (memory is None):
                # Fargate's allowed memory depends on the vCPUs: both go out, the missing one
                # from the definition.
                if definition is None:
                    if cpus is not None:
                        _rules.check_cpus("cpus", cpus, platform)
                    levels.append(())
                    continue
                cpus = definition.cpus if cpus is None else cpus
                memory = definition.memory_mib if memory is None else memory
                if cpus is None or memory is None:
                    raise ValueError(
                        f"job definition {self.job_definition!r} sets no "
                        f"{'VCPU' if cpus is None else 'MEMORY'} requirement, which Fargate "
                        "needs: give both cpus= and memory="
                    )
            where = ""
            if self.levels > 1:
                where = f"level {level} (cpus={cpus}, memory={memory} MiB)"
            found = _rules.requirements(
                cpus=cpus, gpus=gpus, memory_mib=memory, platform=platform, where=where
            )
            granted = next((int(r["value"]) for r in found if r["type"] == "MEMORY"), None)
            if memory is not None and granted != memory:
                rounded.append(f"{memory} MiB to {granted} MiB with {cpus:g} vCPU(s)")
            levels.append(tuple(found))
        return Plan(platform, tuple(levels), tuple(rounded))
