"""What AWS Batch accepts beyond the types botocore checks: resources on EC2 and on Fargate,
timeouts, tags. Each rule says where AWS states it; each refusal is a ValueError that names the
option, the value and the fix, raised before any request goes out.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal

logger = logging.getLogger("batchcrew.aws")

Platform = Literal["EC2", "FARGATE"]
MemoryUnits = Literal["gigabytes", "mebibytes"]

#: The vCPU values Fargate supports and the memory (MiB) each allows: the table in the
#: documentation of ResourceRequirement.value in botocore's Batch model (the API reference's
#: ResourceRequirement page says the same).
FARGATE_MEMORY: Mapping[float, tuple[int, ...]] = {
    0.25: (512, 1024, 2048),
    0.5: tuple(range(1024, 4096 + 1, 1024)),
    1: tuple(range(2048, 8192 + 1, 1024)),
    2: tuple(range(4096, 16384 + 1, 1024)),
    4: tuple(range(8192, 30720 + 1, 1024)),
    8: tuple(range(16384, 61440 + 1, 4096)),
    16: tuple(range(32768, 122880 + 1, 8192)),
    32: (61440, 122880, 249856),
}
#: "You must specify at least 4 MiB of memory for a job" (ResourceRequirement.value, MEMORY).
MEMORY_MIN_MIB = 4
#: "The minimum value for the timeout is 60 seconds" (JobTimeout.attemptDurationSeconds).
TIMEOUT_MIN_SECONDS = 60
#: Tags per resource (the TagrisTagsMap shape: max 50), key and value lengths (TagKey: 1 to
#: 128, TagValue: at most 256).
TAGS_MAX = 50
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
#: The characters AWS allows in tags: letters, digits, spaces and _ . : / = + - @ (AWS's
#: tagging rules; SubmitJob refuses others with BadRequestException "... is not a valid value
#: for TagValue - it contains illegal characters", as reported in Netflix/metaflow#1345).
_TAG_CHARACTERS = re.compile(r"[^\w .:/=+\-@]")


def mebibytes(value: float, units: MemoryUnits) -> int:
    """Memory in MiB as AWS Batch wants it: gigabytes x 5^9 / 2^11 (10^9 / 2^20), rounded."""
    if units == "gigabytes":
        return round(value * 5**9 / 2**11)
    return round(value)


def _amount(value: float) -> str:
    return f"{value:g}"


def check_platform(option: str, value: object) -> Platform | None:
    """`value` if it is "EC2", "FARGATE" or None; else ValueError naming `option`."""
    if value is None or value == "EC2" or value == "FARGATE":
        return value
    raise ValueError(f'{option} must be "EC2", "FARGATE" or None, not {value!r}')


def check_cpus(option: str, cpus: float, platform: Platform) -> None:
    """Refuse a vCPU count AWS refuses on `platform`."""
    if platform == "FARGATE":
        if cpus not in FARGATE_MEMORY:
            allowed = ", ".join(_amount(value) for value in FARGATE_MEMORY)
            raise ValueError(
                f"{option}={_amount(cpus)} is not a vCPU count Fargate offers: use one of "
                f"{allowed} (AWS Batch's ResourceRequirement rules)"
            )
    elif cpus < 1 or cpus != int(cpus):
        # "For Amazon EC2 resources, you must specify at least one vCPU" (ResourceRequirement),
        # and AWS refuses a VCPU that is not a whole number there.
        raise ValueError(
            f"{option}={_amount(cpus)} is not a vCPU count AWS Batch accepts on EC2: give a "
            f"whole number of at least 1 (fractions of a vCPU exist only on Fargate)"
        )


def fargate_memory(option: str, cpus: float, mib: int) -> int:
    """The smallest memory (MiB) Fargate allows with `cpus` vCPUs that holds `mib`; ValueError
    naming `option` and the allowed values when `mib` is more than any of them."""
    allowed = FARGATE_MEMORY[cpus]
    for value in allowed:
        if value >= mib:
            return value
    bigger = [
        f"{_amount(count)} vCPUs allow up to {values[-1]} MiB"
        for count, values in FARGATE_MEMORY.items()
        if values[-1] >= mib
    ]
    hint = f"; more vCPUs hold it: {bigger[0]}" if bigger else ""
    raise ValueError(
        f"{option}: {mib} MiB is more memory than Fargate allows with {_amount(cpus)} vCPU(s) "
        f"(at most {allowed[-1]} MiB; allowed: {', '.join(map(str, allowed))}){hint}"
    )


def requirements(
    *,
    cpus: float | None,
    gpus: float | None,
    memory_mib: int | None,
    platform: Platform,
    where: str,
) -> list[dict[str, str]]:
    """resourceRequirements AWS accepts on `platform` for these amounts (None: leave it out).

    On Fargate a memory is rounded up to the smallest value allowed with the vCPU count, so
    that `memory=8` (gigabytes: 7629 MiB) runs with 8192 MiB; the caller logs the rounding.
    `where` names the option in messages ("cpus", "level 2 (cpus=4, memory=16)", ...).
    """
    found: list[dict[str, str]] = []
    if cpus is not None:
        check_cpus(f"{where} cpus" if where else "cpus", cpus, platform)
        found.append({"type": "VCPU", "value": _amount(cpus)})
    if memory_mib is not None:
        if platform == "FARGATE":
            if cpus is None:
                raise ValueError(
                    f"{where + ': ' if where else ''}on Fargate the allowed memory depends on "
                    "the vCPU count: give cpus with memory"
                )
            memory_mib = fargate_memory(f"{where} memory" if where else "memory", cpus, memory_mib)
        elif memory_mib < MEMORY_MIN_MIB:
            raise ValueError(
                f"{where + ' ' if where else ''}memory: {memory_mib} MiB is less than the "
                f"{MEMORY_MIN_MIB} MiB AWS Batch requires"
            )
        found.append({"type": "MEMORY", "value": str(memory_mib)})
    elif platform == "FARGATE" and cpus is not None:
        raise ValueError(
            f"{where + ': ' if where else ''}on Fargate the allowed memory depends on the vCPU "
            "count: give memory with cpus"
        )
    if gpus:
        if platform == "FARGATE":
            # "GPUs aren't available for jobs that are running on Fargate resources."
            raise ValueError(
                f"{where + ' ' if where else ''}gpus={_amount(gpus)}: Fargate has no GPUs; "
                "run GPU workers on an EC2 compute environment with GPU instances"
            )
        found.append({"type": "GPU", "value": str(int(gpus))})
    return found


def check_timeout(option: str, seconds: float) -> int:
    """Whole seconds for AWS (rounded up, so a job never gets less than asked), refusing less
    than the 60 AWS requires."""
    if not (isinstance(seconds, int | float) and not isinstance(seconds, bool)):
        raise ValueError(f"{option} must be a number of seconds, not {seconds!r}")
    if not math.isfinite(seconds) or seconds < TIMEOUT_MIN_SECONDS:
        raise ValueError(
            f"{option}={seconds!r}: AWS Batch's job timeout is at least "
            f"{TIMEOUT_MIN_SECONDS} seconds; give {TIMEOUT_MIN_SECONDS} or more (or none). A "
            "task's own limit is seconds_timeout= on push, map or walk"
        )
    return math.ceil(seconds)


def check_tags(option: str, tags: Mapping[str, str], *, room: int = TAGS_MAX) -> None:
    """Refuse tags AWS refuses: more than `room` (50, less those batchcrew adds), a key of 0 or
    more than 128 characters or starting with "aws:", a value over 256 characters, or
    characters outside AWS's tag alphabet."""
    if len(tags) > room:
        taken = TAGS_MAX - room
        mine = f" batchcrew adds {taken} of its own, so" if taken else ""
        raise ValueError(
            f"{option} has {len(tags)} tags: AWS allows {TAGS_MAX} per job;{mine} give at most "
            f"{room}"
        )
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"{option} must map strings to strings, not {key!r}: {value!r}")
        if not 1 <= len(key) <= TAG_KEY_MAX:
            raise ValueError(
                f"{option}: the tag key {key[:40]!r}... has {len(key)} characters; AWS takes 1 "
                f"to {TAG_KEY_MAX}"
            )
        if key.lower().startswith("aws:"):
            raise ValueError(
                f"{option}: the tag key {key!r} starts with 'aws:', which AWS reserves"
            )
        if len(value) > TAG_VALUE_MAX:
            raise ValueError(
                f"{option}: the value of tag {key!r} has {len(value)} characters; AWS takes at "
                f"most {TAG_VALUE_MAX}"
            )
        for text, what in ((key, "key"), (value, "value")):
            bad = _TAG_CHARACTERS.search(text)
            if bad is not None:
                raise ValueError(
                    f"{option}: the tag {what} {text!r} holds {bad.group()!r}, which AWS does "
                    "not allow in tags: use letters, digits, spaces and _ . : / = + - @"
                )


def tag_text(text: str, limit: int) -> str:
    """`text` as a tag value AWS accepts: characters outside its tag alphabet become "_", and
    it is cut to `limit` characters."""
    return _TAG_CHARACTERS.sub("_", text)[:limit]


def listed(option: str, value: float | Sequence[float] | None) -> tuple[float, ...]:
    """A number or a list of numbers as a tuple (None: empty), each finite and >= 0."""
    if value is None:
        return ()
    values = (value,) if isinstance(value, int | float) else tuple(value)
    if not values:
        raise ValueError(f"{option} must be a number or a non-empty list of numbers, not []")
    for item in values:
        if isinstance(item, bool) or not isinstance(item, int | float) or not item >= 0:
            raise ValueError(f"{option} must hold numbers >= 0, not {item!r}")
        if not math.isfinite(item):
            raise ValueError(f"{option} must hold finite numbers, not {item!r}")
    return values
