"""The HTTP face of the emulator: one aiohttp application answering AWS Batch (REST-JSON) and
CloudWatch Logs (JSON 1.1) as botocore sends and parses them, with the emulated latency,
throttling and faults, a record of every request and, when it may be reached from other
machines, a check of each request's SigV4 signature.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import json
import logging
import random
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import botocore
import botocore.model
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from batchcrew.testing._batch import BatchState
from batchcrew.testing._logs import LogsState
from batchcrew.testing._options import LocalBatchOptions
from batchcrew.testing._wire import (
    ApiError,
    Params,
    Service,
    check_request,
    client_error,
    parse_body,
    parse_rest_request,
    route_json,
    route_rest,
    service_model,
    shape_output,
)

logger = logging.getLogger("batchcrew.testing")

_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]*/\d{8}/([^/,\s]+)/")
_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/"
    r"(?P<service>[^/,\s]+)/aws4_request,\s*SignedHeaders=(?P<headers>[a-z0-9;-]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})"
)
_TIMESTAMP = "%Y%m%dT%H%M%SZ"
_WHERE = "(printed by `batchcrew emulator` at start; LocalBatch.environment() in Python)"
#: How far a request's X-Amz-Date may be from the emulator's clock, as on AWS.
SIGNATURE_SKEW = datetime.timedelta(minutes=15)
_CONTENT_TYPE = {"batch": "application/json", "logs": "application/x-amz-json-1.1"}
#: The error each service answers when it is throttled or broken, with its HTTP status.
_THROTTLED = {
    "batch": ("TooManyRequestsException", "Too Many Requests", 429),
    "logs": ("ThrottlingException", "Rate exceeded", 400),
}
_FAULT = {
    "batch": ("ServerException", "An internal server error occurred; try again later.", 500),
    "logs": ("ServiceUnavailableException", "The service cannot complete the request.", 500),
}

Handler = Callable[[Params, str], Params]


@dataclass(frozen=True)
class ApiRequest:
    """One request the emulator received.

    `operation` is the AWS operation name ("SubmitJob", "GetLogEvents"; "" if the request named
    none), `params` its parsed parameters, `error` the error code it was answered with (None
    on success).
    """

    service: Service
    operation: str
    params: Params
    region: str
    error: str | None


def region_of(authorization: str, default: str) -> str:
    """The region in a SigV4 Authorization header's credential scope, else `default`."""
    match = _CREDENTIAL_SCOPE.search(authorization)
    return match.group(1) if match else default


def _refused(code: str, message: str) -> ApiError:
    return ApiError(code, message, 403)


def check_signature(
    method: str,
    raw_path: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: Credentials,
    now: datetime.datetime,
) -> None:
    """Raise `ApiError` (HTTP 403, with the code AWS answers) unless the request carries a
    SigV4 signature made with `credentials` less than `SIGNATURE_SKEW` from `now`.

    botocore's own signer recomputes the signature over the headers the request says it signed.
    """
    authorization = headers.get("Authorization", "")
    if not authorization:
        raise _refused(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token: this LocalBatch answers only requests signed with "
            f"its credentials {_WHERE}",
        )
    match = _AUTHORIZATION.fullmatch(authorization.strip())
    if match is None:
        raise _refused(
            "IncompleteSignatureException",
            "The Authorization header is not an AWS4-HMAC-SHA256 signature",
        )
    if not hmac.compare_digest(match["key"], credentials.access_key):
        raise _refused(
            "UnrecognizedClientException",
            "The security token included in the request is invalid: use the access key "
            f"of this LocalBatch {_WHERE}",
        )
    stamp = headers.get("X-Amz-Date", "")
    try:
        signed_at = datetime.datetime.strptime(stamp, _TIMESTAMP).replace(tzinfo=datetime.UTC)
    except ValueError:
        raise _refused(
            "IncompleteSignatureException", f"X-Amz-Date must be a time such as {_TIMESTAMP}"
        ) from None
    if abs(now - signed_at) > SIGNATURE_SKEW or stamp[:8] != match["date"]:
        raise _refused(
            "InvalidSignatureException",
            f"Signature expired: {stamp} is more than {SIGNATURE_SKEW} from the emulator's "
            f"time {now.strftime(_TIMESTAMP)}; check the clocks",
        )
    names = match["headers"].split(";")
    if "host" not in names or any(name not in headers for name in names):
        raise _refused(
            "IncompleteSignatureException",
            "SignedHeaders must include host, and every header it names must be present",
        )
    declared = headers.get("X-Amz-Content-SHA256")
    if declared is not None and declared != hashlib.sha256(body).hexdigest():
        # The signature covers this header instead of the body: a body that does not match
        # it would otherwise pass with another request's signature.
        raise _refused("InvalidSignatureException", "X-Amz-Content-SHA256 does not match the body")
    request = AWSRequest(
        method=method,
        url=f"http://{headers['host']}{raw_path}",
        headers={name: headers[name] for name in names},
        data=body,
    )
    request.context["timestamp"] = stamp
    signer = SigV4Auth(credentials, match["service"], match["region"])
    expected = signer.signature(
        signer.string_to_sign(request, signer.canonical_request(request)), request
    )
    if not hmac.compare_digest(expected, match["signature"]):
        raise _refused(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            f"Check your AWS Secret Access Key: use the one of this LocalBatch {_WHERE}",
        )


class ApiServer:
    """Routes each request to the `BatchState` or `LogsState` method of its operation.

    With `credentials`, only requests signed with them are answered; without, any are.
    """

    def __init__(
        self,
        batch: BatchState,
        logs: LogsState,
        options: LocalBatchOptions,
        requests: list[ApiRequest],
        credentials: Credentials | None = None,
    ) -> None:
        self._options = options
        self._credentials = credentials
        self._random = random.Random(options.seed)
        self._requests = requests
        self._handlers: dict[tuple[Service, str], Handler] = {}
        services: tuple[tuple[Service, Any], ...] = (("batch", batch), ("logs", logs))
        for service, state in services:
            for name in service_model(service).operation_names:
                method = getattr(state, botocore.xform_name(name), None)
                if method is not None:
                    self._handlers[(service, name)] = method

    def emulated_operations(self, service: Service) -> list[str]:
        """The operations of `service` this emulator answers."""
        return sorted(name for s, name in self._handlers if s == service)

    def application(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target")
        service: Service = "logs" if target else "batch"
        region = region_of(request.headers.get("Authorization", ""), self._options.region)
        operation: botocore.model.OperationModel | None = None
        params: Params = {}
        try:
            body = await request.read()
            if self._credentials is not None:
                check_signature(
                    request.method,
                    request.raw_path,
                    request.headers,
                    body,
                    self._credentials,
                    datetime.datetime.now(datetime.UTC),
                )
            if target:
                operation = route_json("logs", target)
                if operation is None:
                    raise ApiError("UnknownOperationException", f"Unknown X-Amz-Target {target!r}")
                params = parse_body(body)
            else:
                path = request.raw_path.split("?", 1)[0]
                routed = route_rest("batch", request.method, path)
                if routed is None:
                    raise ApiError(
                        "UnknownOperationException",
                        f"No AWS Batch operation answers {request.method} {path}",
                        404,
                    )
                operation, labels = routed
                query = {key: request.query.getall(key) for key in request.query}
                params = parse_rest_request(operation, labels, query, body)
            result = await self._call(service, operation, params, region)
            response = web.Response(
                body=json.dumps(result).encode(),
                headers={
                    "Content-Type": _CONTENT_TYPE[service],
                    "x-amzn-RequestId": str(uuid.uuid4()),
                },
            )
            error = None
        except ApiError as api_error:
            response, error = self._error_response(service, api_error), api_error.code
        except Exception as internal:
            logger.exception("LocalBatch failed to answer %s", operation and operation.name)
            code, _, status = _FAULT[service]
            message = f"LocalBatch internal error: {type(internal).__name__}: {internal}"
            response, error = self._error_response(service, ApiError(code, message, status)), code
        name = operation.name if operation is not None else ""
        self._requests.append(ApiRequest(service, name, params, region, error))
        return response

    async def _call(
        self,
        service: Service,
        operation: botocore.model.OperationModel,
        params: Params,
        region: str,
    ) -> Any:
        """Apply the emulated conditions, then run the operation and shape its output."""
        name = operation.name
        latency = self._options.latency_of(name)
        if latency > 0:
            await asyncio.sleep(latency)
        # Draw both numbers on every call, so one rate's setting never shifts the other's draws.
        throttle_draw, fault_draw = self._random.random(), self._random.random()
        if throttle_draw < self._options.throttle_rate_of(name):
            raise ApiError(*_THROTTLED[service])
        if fault_draw < self._options.fault_rate_of(name):
            raise ApiError(*_FAULT[service])
        check_request(service, operation, params)
        handler = self._handlers.get((service, name))
        if handler is None:
            raise client_error(
                service,
                f"LocalBatch does not emulate {name}; it answers "
                + ", ".join(self.emulated_operations(service)),
            )
        result = handler(params, region)
        if operation.output_shape is None:
            return {}
        return shape_output(result, operation.output_shape)

    @staticmethod
    def _error_response(service: Service, error: ApiError) -> web.Response:
        """An error as the service sends it: botocore reads the code from the body's __type
        (and, for REST-JSON, the x-amzn-ErrorType header) and the message from `message`."""
        headers = {"Content-Type": _CONTENT_TYPE[service], "x-amzn-RequestId": str(uuid.uuid4())}
        if service == "batch":
            headers["x-amzn-ErrorType"] = error.code
        body = json.dumps({"__type": error.code, "message": error.message}).encode()
        return web.Response(status=error.status, body=body, headers=headers)
