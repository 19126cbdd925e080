"""The emulated CloudWatch Logs: log groups, streams and events, and the API calls that read them.

Pure bookkeeping with no I/O: the job runner appends each output line of a job as an event, and
the wire layer calls the operation methods with validated request parameters.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from batchcrew.testing._wire import ACCOUNT_ID, ApiError, Params

#: CloudWatch Logs counts 26 bytes of overhead per event against its 1 MB response limit.
_EVENT_OVERHEAD = 26
_RESPONSE_BYTES_MAX = 1_048_576
#: PutLogEvents accepts events at most 14 days old and 2 hours in the future.
_PAST_MS = 14 * 24 * 3600 * 1000
_FUTURE_MS = 2 * 3600 * 1000


def _invalid(message: str) -> ApiError:
    return ApiError("InvalidParameterException", message)


@dataclass(frozen=True)
class LogEvent:
    """One stored event; `index` is its position in its stream."""

    timestamp: int
    message: str
    ingestion_time: int
    index: int


@dataclass
class LogStream:
    """A log stream and its events, in the order they were put."""

    name: str
    arn: str
    creation_time: int
    events: list[LogEvent] = field(default_factory=list)
    stored_bytes: int = 0
    last_ingestion_time: int | None = None

    def describe(self) -> Params:
        return {
            "logStreamName": self.name,
            "creationTime": self.creation_time,
            "firstEventTimestamp": min((e.timestamp for e in self.events), default=None),
            "lastEventTimestamp": max((e.timestamp for e in self.events), default=None),
            "lastIngestionTime": self.last_ingestion_time,
            "uploadSequenceToken": f"{len(self.events):056d}",
            "arn": self.arn,
            "storedBytes": 0,
        }


@dataclass
class LogGroup:
    """A log group and its streams by name."""

    name: str
    region: str
    creation_time: int
    streams: dict[str, LogStream] = field(default_factory=dict)
    retention_in_days: int | None = None

    @property
    def arn(self) -> str:
        return f"arn:aws:logs:{self.region}:{ACCOUNT_ID}:log-group:{self.name}"

    def describe(self) -> Params:
        return {
            "logGroupName": self.name,
            "creationTime": self.creation_time,
            "retentionInDays": self.retention_in_days,
            "metricFilterCount": 0,
            "arn": f"{self.arn}:*",
            "logGroupArn": self.arn,
            "storedBytes": sum(stream.stored_bytes for stream in self.streams.values()),
            "logGroupClass": "STANDARD",
        }


def _encode_token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def _decode_token(token: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error):
        raise _invalid("The specified nextToken is invalid.") from None


def _matches(pattern: str, message: str) -> bool:
    """The unstructured-text subset of CloudWatch filter patterns: every term must appear;
    a double-quoted pattern is one exact phrase; an empty pattern matches every event."""
    pattern = pattern.strip()
    if not pattern:
        return True
    if len(pattern) >= 2 and pattern[0] == pattern[-1] == '"':
        return pattern[1:-1] in message
    return all(term.strip('"') in message for term in pattern.split())


class LogsState:
    """Every log group of the emulator, across regions, keyed by name."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self.groups: dict[str, LogGroup] = {}

    # -- used by the job runner -------------------------------------------------------------

    def ensure_stream(self, group_name: str, stream_name: str, region: str) -> LogStream:
        """The stream, created (with its group) if missing."""
        group = self.groups.get(group_name)
        if group is None:
            group = self.groups[group_name] = LogGroup(group_name, region, self._clock())
        stream = group.streams.get(stream_name)
        if stream is None:
            arn = f"{group.arn}:log-stream:{stream_name}"
            stream = group.streams[stream_name] = LogStream(stream_name, arn, self._clock())
        return stream

    def append(self, stream: LogStream, message: str, timestamp: int) -> None:
        """Store one event in `stream`, ingested now."""
        now = self._clock()
        stream.events.append(LogEvent(timestamp, message, now, len(stream.events)))
        stream.stored_bytes += len(message.encode()) + _EVENT_OVERHEAD
        stream.last_ingestion_time = now

    # -- lookups ----------------------------------------------------------------------------

    def _group(self, params: Params) -> LogGroup:
        name = params.get("logGroupName")
        identifier = params.get("logGroupIdentifier")
        if name is not None and identifier is not None:
            raise _invalid("LogGroup name and LogGroup ARN are mutually exclusive parameters.")
        if identifier is not None:
            name = (
                identifier.split(":log-group:", 1)[1] if ":log-group:" in identifier else identifier
            )
            name = name.removesuffix(":*")
        if name is None:
            raise _invalid("Either logGroupName or logGroupIdentifier is required.")
        group = self.groups.get(name)
        if group is None:
            raise ApiError("ResourceNotFoundException", "The specified log group does not exist.")
        return group

    @staticmethod
    def _stream(group: LogGroup, name: str) -> LogStream:
        stream = group.streams.get(name)
        if stream is None:
            raise ApiError("ResourceNotFoundException", "The specified log stream does not exist.")
        return stream

    # -- the API ----------------------------------------------------------------------------

    def create_log_group(self, params: Params, region: str) -> Params:
        name = params["logGroupName"]
        if name in self.groups:
            raise ApiError(
                "ResourceAlreadyExistsException", "The specified log group already exists"
            )
        self.groups[name] = LogGroup(name, region, self._clock())
        return {}

    def delete_log_group(self, params: Params, region: str) -> Params:
        group = self._group(params)
        del self.groups[group.name]
        return {}

    def create_log_stream(self, params: Params, region: str) -> Params:
        group = self._group(params)
        name = params["logStreamName"]
        if name in group.streams:
            raise ApiError(
                "ResourceAlreadyExistsException", "The specified log stream already exists"
            )
        self.ensure_stream(group.name, name, group.region)
        return {}

    def delete_log_stream(self, params: Params, region: str) -> Params:
        group = self._group(params)
        del group.streams[self._stream(group, params["logStreamName"]).name]
        return {}

    def put_log_events(self, params: Params, region: str) -> Params:
        stream = self._stream(self._group(params), params["logStreamName"])
        events = params["logEvents"]
        timestamps = [event["timestamp"] for event in events]
        if timestamps != sorted(timestamps):
            raise _invalid(
                "Log events in a single PutLogEvents request must be in chronological order."
            )
        # As AWS does, keep events within 14 days back and 2 hours ahead; report the others.
        now = self._clock()
        too_old = [i for i, t in enumerate(timestamps) if t < now - _PAST_MS]
        too_new = [i for i, t in enumerate(timestamps) if t > now + _FUTURE_MS]
        for index, event in enumerate(events):
            if index not in too_old and index not in too_new:
                self.append(stream, event["message"], event["timestamp"])
        rejected = {
            "tooOldLogEventEndIndex": too_old[-1] + 1 if too_old else None,
            "tooNewLogEventStartIndex": too_new[0] if too_new else None,
        }
        return {
            "nextSequenceToken": f"{len(stream.events):056d}",
            "rejectedLogEventsInfo": rejected if too_old or too_new else None,
        }

    def describe_log_groups(self, params: Params, region: str) -> Params:
        prefix = params.get("logGroupNamePrefix", "")
        pattern = params.get("logGroupNamePattern", "")
        groups = [
            group.describe()
            for name, group in sorted(self.groups.items())
            if name.startswith(prefix) and pattern.lower() in name.lower()
        ]
        page, token = _page(groups, params.get("nextToken"), params.get("limit", 50))
        return {"logGroups": page, "nextToken": token}

    def describe_log_streams(self, params: Params, region: str) -> Params:
        group = self._group(params)
        prefix = params.get("logStreamNamePrefix")
        order_by = params.get("orderBy", "LogStreamName")
        if prefix is not None and order_by == "LastEventTime":
            raise _invalid("Cannot order by LastEventTime with a logStreamNamePrefix.")
        streams = [s for s in group.streams.values() if s.name.startswith(prefix or "")]
        if order_by == "LastEventTime":
            streams.sort(key=lambda s: max((e.timestamp for e in s.events), default=0))
        else:
            streams.sort(key=lambda s: s.name)
        if params.get("descending", False):
            streams.reverse()
        described = [stream.describe() for stream in streams]
        page, token = _page(described, params.get("nextToken"), params.get("limit", 50))
        return {"logStreams": page, "nextToken": token}

    def get_log_events(self, params: Params, region: str) -> Params:
        """Events of one stream, a page at a time.

        Tokens are positions: `f/N` reads forward from event N, `b/N` backward from it. Reading
        forward at the end returns no events and the same forward token, as AWS does, so a loop
        `while token != previous_token` ends.
        """
        stream = self._stream(self._group(params), params["logStreamName"])
        events = _in_time_window(stream.events, params.get("startTime"), params.get("endTime"))
        limit = params.get("limit", 10_000)
        token = params.get("nextToken")
        if token is None:
            forward = bool(params.get("startFromHead", False))
            position = 0 if forward else len(events)
        else:
            direction, _, number = token.partition("/")
            if direction not in ("f", "b") or not number.isdigit():
                raise _invalid("The specified nextToken is invalid.")
            forward, position = direction == "f", min(int(number), len(events))
        if forward:
            start, end = position, position
            budget = _RESPONSE_BYTES_MAX
            while end < len(events) and end - start < limit:
                budget -= len(events[end].message.encode()) + _EVENT_OVERHEAD
                if budget < 0:
                    break
                end += 1
        else:
            start, end = position, position
            budget = _RESPONSE_BYTES_MAX
            while start > 0 and end - start < limit:
                budget -= len(events[start - 1].message.encode()) + _EVENT_OVERHEAD
                if budget < 0:
                    break
                start -= 1
        return {
            "events": [
                {"timestamp": e.timestamp, "message": e.message, "ingestionTime": e.ingestion_time}
                for e in events[start:end]
            ],
            "nextForwardToken": f"f/{end:020d}",
            "nextBackwardToken": f"b/{start:020d}",
        }

    def filter_log_events(self, params: Params, region: str) -> Params:
        """Matching events of a group's streams, oldest first, across streams by timestamp."""
        group = self._group(params)
        names = params.get("logStreamNames")
        prefix = params.get("logStreamNamePrefix")
        if names is not None and prefix is not None:
            raise _invalid("logStreamNames and logStreamNamePrefix are mutually exclusive.")
        if names is not None:
            streams = [self._stream(group, name) for name in names]
        else:
            streams = [s for s in group.streams.values() if s.name.startswith(prefix or "")]
        pattern = params.get("filterPattern", "")
        start_time, end_time = params.get("startTime"), params.get("endTime")
        after: tuple[int, str, int] | None = None
        if params.get("nextToken") is not None:
            decoded = _decode_token(params["nextToken"])
            if not (isinstance(decoded, list) and len(decoded) == 3):
                raise _invalid("The specified nextToken is invalid.")
            after = (int(decoded[0]), str(decoded[1]), int(decoded[2]))
        matched = sorted(
            (event.timestamp, stream.name, event.index, event)
            for stream in streams
            for event in _in_time_window(stream.events, start_time, end_time)
            if _matches(pattern, event.message)
        )
        if after is not None:
            matched = matched[bisect.bisect_right(matched, after, key=lambda m: m[:3]) :]
        limit = params.get("limit", 10_000)
        page = matched[:limit]
        token = _encode_token(list(page[-1][:3])) if len(matched) > limit else None
        return {
            "events": [
                {
                    "logStreamName": name,
                    "timestamp": ts,
                    "message": event.message,
                    "ingestionTime": event.ingestion_time,
                    "eventId": _event_id(ts, name, index),
                }
                for ts, name, index, event in page
            ],
            "searchedLogStreams": [
                {"logStreamName": stream.name, "searchedCompletely": token is None}
                for stream in streams
            ],
            "nextToken": token,
        }


def _in_time_window(events: list[LogEvent], start: int | None, end: int | None) -> list[LogEvent]:
    """Events with start <= timestamp < end (either bound may be absent), as AWS filters."""
    if start is None and end is None:
        return events
    return [
        e
        for e in events
        if (start is None or e.timestamp >= start) and (end is None or e.timestamp < end)
    ]


def _event_id(timestamp: int, stream: str, index: int) -> str:
    """A stable all-digit id, shaped like the long decimal ids AWS returns."""
    return f"{timestamp:020d}{zlib.crc32(stream.encode()):010d}{index:010d}"


def _page(items: list[Params], token: str | None, limit: int) -> tuple[list[Params], str | None]:
    """One page of `items` from the offset in `token`, and the token of the next page."""
    offset = 0
    if token is not None:
        decoded = _decode_token(token)
        if not isinstance(decoded, int) or decoded < 0:
            raise _invalid("The specified nextToken is invalid.")
        offset = decoded
    end = offset + limit
    return items[offset:end], (_encode_token(end) if end < len(items) else None)


def split_message(line: str, limit: int = 256 * 1024 - _EVENT_OVERHEAD) -> Iterable[str]:
    """`line` cut into pieces CloudWatch accepts as single events (at most 256 KB each)."""
    data = line.encode()
    if len(data) <= limit:
        return [line]
    return [data[i : i + limit].decode(errors="replace") for i in range(0, len(data), limit)]
