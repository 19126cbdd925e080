"""Ending AWS Batch jobs with as few calls as AWS needs: TerminateJobs, up to 50 jobs a call.

TerminateJob ends a job in any state (one not yet STARTING is cancelled, one STARTING or
RUNNING is stopped), so no CancelJob goes before it; the bulk TerminateJobs does the same for
50 jobs at once. Both the launcher's close and `BatchMonitor.terminate` end jobs through here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio

from batchcrew.aws._client import map_errors
from batchcrew.errors import BatchError

#: Job ids per TerminateJobs call (botocore's Batch model: "An array of up to 50 Batch job IDs").
TERMINATE_JOBS_MAX = 50
#: The longest `reason` AWS takes ("This parameter has a limit of 1024 characters").
REASON_MAX = 1024
#: Per-job error codes of a TerminateJobs answer that are worth another call, and how often.
_TRANSIENT = frozenset({"ThrottlingException", "TooManyRequestsException", "ServerException"})
_ROUNDS = 4
_SECONDS_BACKOFF = 0.5


def fit_reason(reason: str) -> str:
    """`reason` cut to the 1024 characters TerminateJob and CancelJob accept."""
    return reason if len(reason) <= REASON_MAX else reason[: REASON_MAX - 1] + "…"


async def end_jobs(
    client: Any,
    job_ids: Sequence[str],
    reason: str,
    limiter: anyio.CapacityLimiter,
    on_done: Callable[[int], None] = lambda count: None,
    outcome: dict[str, str | None] | None = None,
) -> dict[str, str | None]:
    """End `job_ids` with TerminateJobs, 50 at a time, at most `limiter`'s calls at once.

    Returns, for each id, None if AWS accepted its termination (an id AWS does not know counts
    as ended, as AWS reports it), else why not: the error AWS gave for that job, or the error of
    the call that carried it. Jobs that AWS throttled or failed on its side are asked again a
    few times with backoff. `on_done(n)` is called as each call settles n jobs. Each answer
    is written into `outcome` (when given) as it comes, so a caller that gives up early still
    knows which jobs ended.
    """
    reason = fit_reason(reason)
    if outcome is None:
        outcome = {}
    pending = list(dict.fromkeys(job_ids))
    for round_ in range(_ROUNDS):
        if not pending:
            break
        if round_:
            await anyio.sleep(_SECONDS_BACKOFF * 2 ** (round_ - 1))
        retry: list[str] = []
        last_round = round_ == _ROUNDS - 1

        async def call(chunk: list[str], retry: list[str] = retry, last: bool = last_round) -> None:
            try:
                async with limiter:
                    what = chunk[0] if len(chunk) == 1 else f"{chunk[0]} and {len(chunk) - 1} more"
                    with map_errors(f"TerminateJobs {what}"):
                        answer = await client.terminate_jobs(jobs=chunk, reason=reason)
            except BatchError as error:
                for job_id in chunk:
                    outcome[job_id] = str(error)
                on_done(len(chunk))
                return
            failed = {item["job"]: item for item in answer.get("errors", [])}
            settled = 0
            for job_id in chunk:
                item = failed.get(job_id)
                if item is None:
                    outcome[job_id] = None
                    settled += 1
                elif item.get("code") in _TRANSIENT and not last:
                    retry.append(job_id)
                else:
                    outcome[job_id] = (
                        f"TerminateJobs {job_id}: {item.get('code')}: {item.get('message')}"
                    )
                    settled += 1
            on_done(settled)

        async with anyio.create_task_group() as group:
            for start in range(0, len(pending), TERMINATE_JOBS_MAX):
                group.start_soon(call, pending[start : start + TERMINATE_JOBS_MAX])
        pending = retry
    return outcome
