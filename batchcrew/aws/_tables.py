"""What `JobDefinition` and `BatchMonitor` share: polars tables built from AWS answers, the
clients each object holds, and the checks of their arguments.

Nested fields keep the structure of botocore's model: a structure is a polars Struct, a list a
List, and a string-to-string map (tags, parameters) a List of {key, value} Structs, as Arrow
spells maps, so a column's dtype never depends on the rows in it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, cast

import anyio
import botocore.model
import polars as pl

from batchcrew.aws._client import ClientSettings, Service, open_client

if TYPE_CHECKING:
    from types_aiobotocore_batch import BatchClient
    from types_aiobotocore_logs import CloudWatchLogsClient

#: AWS reports times as milliseconds since the epoch, in UTC.
TIMESTAMP = pl.Datetime("ms", "UTC")

_SCALARS: dict[str, pl.DataType] = {
    "string": pl.String(),
    "integer": pl.Int64(),
    "long": pl.Int64(),
    "boolean": pl.Boolean(),
    "double": pl.Float64(),
    "float": pl.Float64(),
    "timestamp": TIMESTAMP,
    "blob": pl.Binary(),
}


def dtype_of(shape: botocore.model.Shape) -> pl.DataType:
    """The polars dtype that holds values of botocore `shape`."""
    if isinstance(shape, botocore.model.StructureShape):
        return pl.Struct({name: dtype_of(member) for name, member in shape.members.items()})
    if isinstance(shape, botocore.model.ListShape):
        return pl.List(dtype_of(shape.member))
    if isinstance(shape, botocore.model.MapShape):
        return pl.List(pl.Struct({"key": dtype_of(shape.key), "value": dtype_of(shape.value)}))
    return _SCALARS.get(shape.type_name, pl.String())


def value_of(value: Any, shape: botocore.model.Shape) -> Any:
    """`value` (as botocore parsed it for `shape`) in the form `dtype_of(shape)` takes: maps
    become lists of {key, value}, everything else keeps its structure."""
    if value is None:
        return None
    if isinstance(shape, botocore.model.StructureShape):
        return {
            name: value_of(value.get(name), member)
            for name, member in shape.members.items()
            if name in value
        }
    if isinstance(shape, botocore.model.ListShape):
        return [value_of(item, shape.member) for item in value]
    if isinstance(shape, botocore.model.MapShape):
        return [
            {"key": value_of(key, shape.key), "value": value_of(item, shape.value)}
            for key, item in value.items()
        ]
    return value


def table(rows: Sequence[Mapping[str, Any]], schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """A DataFrame of `rows` with exactly the columns and dtypes of `schema` (also when there are
    no rows). Datetime columns take milliseconds since the epoch."""
    columns = []
    for name, dtype in schema.items():
        values = [row.get(name) for row in rows]
        if isinstance(dtype, pl.Datetime):
            series = pl.Series(name, values, dtype=pl.Int64).cast(dtype)
        else:
            series = pl.Series(name, values, dtype=dtype)
        columns.append(series)
    return pl.DataFrame(columns)


# -- argument checks ------------------------------------------------------------------------


def check_text(argument: str, value: object) -> str:
    """`value` if it is a non-empty string; else ValueError naming `argument`."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{argument} must be a non-empty string, not {value!r}")
    return value


def check_optional_text(argument: str, value: object) -> str | None:
    """None, or `value` if it is a non-empty string; else ValueError naming `argument`."""
    return None if value is None else check_text(argument, value)


def check_amount(argument: str, value: object, *, zero: bool) -> float | None:
    """None, or `value` if it is a finite number > 0 (>= 0 when `zero`); else ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{argument} must be a number or None, not {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{argument} must be a finite number {bound}, not {value!r}")
    return float(value)


def check_strings(argument: str, value: object) -> dict[str, str] | None:
    """None, or a copy of `value` if it maps non-empty strings to strings; else ValueError."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{argument} must be a mapping of strings to strings, not {value!r}")
    for key, item in value.items():
        if not isinstance(key, str) or not key or not isinstance(item, str):
            raise ValueError(
                f"{argument} must map non-empty strings to strings; {key!r}: {item!r} does not"
            )
    return dict(value)


# -- clients --------------------------------------------------------------------------------


class ClientScope:
    """The AWS clients of one `JobDefinition` or `BatchMonitor`.

    Between `open()` and `close()` (the object's `async with` block) each service's client is
    made on first use and reused by every call, concurrent ones included; outside that block
    each call makes its own client and closes it before it returns. Either way no client
    outlives its user.
    """

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._stack: AsyncExitStack | None = None
        self._clients: dict[Service, Any] = {}
        self._lock = anyio.Lock()

    @property
    def is_open(self) -> bool:
        """Whether clients are being kept for reuse."""
        return self._stack is not None

    def open(self, owner: str) -> None:
        """Keep clients from now on until `close()`. RuntimeError if already open."""
        if self._stack is not None:
            raise RuntimeError(f"{owner} is already open: enter `async with` once at a time")
        self._stack = AsyncExitStack()

    async def close(self) -> None:
        """Close every kept client. Idempotent."""
        stack, self._stack = self._stack, None
        self._clients.clear()
        if stack is not None:
            await stack.aclose()

    @asynccontextmanager
    async def _client(self, service: Service) -> AsyncIterator[Any]:
        stack = self._stack
        if stack is None:
            async with open_client(service, self.settings) as client:
                yield client
            return
        async with self._lock:  # two first calls at once must not make two clients
            if service not in self._clients:
                made = await stack.enter_async_context(open_client(service, self.settings))
                self._clients[service] = made
            client = self._clients[service]
        yield client

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[BatchClient]:
        """The AWS Batch client for one call."""
        async with self._client("batch") as client:
            yield cast("BatchClient", client)

    @asynccontextmanager
    async def logs(self) -> AsyncIterator[CloudWatchLogsClient]:
        """The CloudWatch Logs client for one call."""
        async with self._client("logs") as client:
            yield cast("CloudWatchLogsClient", client)


def client_settings(region: object, endpoint_url: object, profile: object) -> ClientSettings:
    """Checked `ClientSettings` (None leaves each to the standard AWS resolution)."""
    return ClientSettings(
        region=check_optional_text("region", region),
        endpoint_url=check_optional_text("endpoint_url", endpoint_url),
        profile=check_optional_text("profile", profile),
    )


class ScopedClients:
    """`async with` for objects whose AWS clients live in `self._scope`: inside the block,
    their clients are kept and reused; outside it, each call makes its own."""

    _scope: ClientScope

    async def __aenter__(self) -> Self:
        self._scope.open(f"this {type(self).__name__}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._scope.close()
