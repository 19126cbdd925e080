"""The one place that makes aiobotocore clients and turns botocore's errors into `BatchError`.

Clients are async context managers created once per launcher, definition or monitor and reused
for its life. Credentials, region and endpoint resolve the standard AWS way (environment,
config files, AWS_ENDPOINT_URL), each overridable; botocore's retry modes handle throttling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore import exceptions as boto

from batchcrew.errors import BatchError

Service = Literal["batch", "logs", "ec2"]


@dataclass(frozen=True)
class ClientSettings:
    """How to reach AWS: None leaves each to the standard resolution."""

    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    retry_mode: Literal["standard", "adaptive"] = "adaptive"
    max_attempts: int = 10
    seconds_connect: float = 10.0  # botocore's connect_timeout, per attempt


def first_call(settings: ClientSettings) -> ClientSettings:
    """`settings` for the first call of a start (or a check): a few quick attempts, so that an
    endpoint nothing answers at (refused, no route, no such name) fails in seconds, not after
    botocore's ten attempts with backoff; throttling then is rare, and later calls retry as
    set."""
    return dataclasses.replace(settings, max_attempts=3, seconds_connect=3.0)


@asynccontextmanager
async def open_client(service: Service, settings: ClientSettings) -> AsyncIterator[Any]:
    """An aiobotocore client of `service`, closed on exit. Raises `BatchError` if no client
    can be made (no region, an unknown profile)."""
    config = AioConfig(
        retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
        connect_timeout=settings.seconds_connect,
        read_timeout=60,
    )
    with map_errors(f"creating the {service} client"):
        maker = _session(settings.profile).create_client(
            service,
            region_name=settings.region,
            endpoint_url=settings.endpoint_url,
            config=config,
        )
        client = await maker.__aenter__()
    try:
        yield client
    finally:
        await maker.__aexit__(None, None, None)


_loader: Any = None


def _session(profile: str | None) -> AioSession:
    # A fresh session per client, so that credentials and region resolve anew each time
    # (rotated keys, a changed environment), sharing one loader of the service models: each
    # session would otherwise parse them again, a few tenths of a second per client.
    global _loader
    session = AioSession(profile=profile)
    if _loader is None:
        _loader = session.get_component("data_loader")
    else:
        session.register_component("data_loader", _loader)
    return session


@contextmanager
def map_errors(action: str) -> Iterator[None]:
    """Re-raise botocore's exceptions as `BatchError`, saying what was being done."""
    try:
        yield
    except boto.ClientError as error:
        details = error.response.get("Error", {})
        code = str(details.get("Code", "Unknown"))
        message = str(details.get("Message", error))
        raise BatchError(f"{action}: {code}: {message}", code=code, message=message) from error
    except (boto.NoCredentialsError, boto.PartialCredentialsError) as error:
        raise BatchError(
            f"{action}: no AWS credentials found ({error}); set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where an IAM role provides them",
            code="NoCredentials",
            message=str(error),
        ) from error
    except boto.NoRegionError as error:
        raise BatchError(
            f"{action}: no AWS region; set AWS_DEFAULT_REGION or pass region=",
            code="NoRegion",
            message=str(error),
        ) from error
    except boto.ProfileNotFound as error:
        raise BatchError(
            f"{action}: {error}; check profile= or AWS_PROFILE",
            code="ProfileNotFound",
            message=str(error),
        ) from error
    except boto.ParamValidationError as error:
        raise BatchError(
            f"{action}: the request is not valid: {error}",
            code="ParamValidation",
            message=str(error),
        ) from error
    except (boto.EndpointConnectionError, boto.ConnectTimeoutError, boto.ReadTimeoutError) as error:
        raise BatchError(
            f"{action}: cannot reach AWS ({error}); check the network, region and endpoint_url",
            code="Connection",
            message=str(error),
        ) from error
    except boto.BotoCoreError as error:
        raise BatchError(
            f"{action}: {error}", code=type(error).__name__, message=str(error)
        ) from error
