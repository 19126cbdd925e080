"""The AWS wire formats the emulator speaks, driven by botocore's own service models.

Requests are routed, parsed and validated against each operation's input shape, and responses
are built from its output shape, so the emulator and botocore cannot disagree on a field.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import unquote

import botocore.loaders
import botocore.model

Service = Literal["batch", "logs"]
Params = dict[str, Any]

#: The account every emulated ARN belongs to (the placeholder AWS uses in its documentation).
ACCOUNT_ID = "123456789012"


class ApiError(Exception):
    """An error the emulated service returns to the client, as AWS shapes it.

    `code` becomes `ClientError.response["Error"]["Code"]` (and picks the modeled exception
    class, e.g. `client.exceptions.ClientException`), `status` the HTTP status.
    """

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def client_error(service: Service, message: str) -> ApiError:
    """The service's error for a request the caller got wrong."""
    if service == "batch":
        return ApiError("ClientException", message)
    return ApiError("InvalidParameterException", message)


@functools.cache
def service_model(service: Service) -> botocore.model.ServiceModel:
    """The model of `service` from the installed botocore (the one its clients are built from)."""
    loader = botocore.loaders.create_loader()
    return botocore.model.ServiceModel(
        loader.load_service_model(service, "service-2"), service_name=service
    )


@functools.cache
def operation_names() -> frozenset[str]:
    """Every AWS Batch and CloudWatch Logs operation name."""
    return frozenset(service_model("batch").operation_names) | frozenset(
        service_model("logs").operation_names
    )


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    operation: botocore.model.OperationModel


@functools.cache
def _rest_routes(service: Service) -> tuple[_Route, ...]:
    """One route per REST operation: its HTTP method and a regex of its request URI."""
    model = service_model(service)
    routes = []
    for name in model.operation_names:
        operation = model.operation_model(name)
        path = operation.http["requestUri"].split("?", 1)[0]
        regex = ""
        for literal, label in re.findall(r"([^{]*)(?:\{([^}]*)\})?", path):
            regex += re.escape(literal)
            if label.endswith("+"):
                regex += f"(?P<{label[:-1]}>.+)"
            elif label:
                regex += f"(?P<{label}>[^/]+)"
        routes.append(_Route(operation.http["method"], re.compile(f"^{regex}$"), operation))
    return tuple(routes)


def route_rest(
    service: Service, method: str, raw_path: str
) -> tuple[botocore.model.OperationModel, dict[str, str]] | None:
    """The operation a REST request calls and its URI labels (percent-decoded), or None."""
    for route in _rest_routes(service):
        match = route.pattern.match(raw_path)
        if match and route.method == method:
            labels = {key: unquote(value) for key, value in match.groupdict().items()}
            return route.operation, labels
    return None


def route_json(service: Service, target: str) -> botocore.model.OperationModel | None:
    """The operation a JSON 1.1 request names in its X-Amz-Target header, or None."""
    model = service_model(service)
    prefix, _, name = target.partition(".")
    if prefix != model.metadata.get("targetPrefix") or name not in model.operation_names:
        return None
    return model.operation_model(name)


def parse_body(body: bytes) -> Params:
    """The JSON object of a request body (an empty body is an empty object)."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(
            "SerializationException", f"Request body is not valid JSON: {error}"
        ) from None
    if not isinstance(value, dict):
        raise ApiError("SerializationException", "Request body must be a JSON object")
    return value


def parse_rest_request(
    operation: botocore.model.OperationModel,
    labels: Mapping[str, str],
    query: Mapping[str, list[str]],
    body: bytes,
) -> Params:
    """The parameters of a REST-JSON request, gathered from its URI, query string and body."""
    shape = operation.input_shape
    if shape is None:
        return {}
    params = parse_body(body)
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire_name = member.serialization.get("name", name)
        if location == "uri" and wire_name in labels:
            params[name] = labels[wire_name]
        elif location == "querystring" and wire_name in query:
            values = query[wire_name]
            params[name] = values if member.type_name == "list" else values[-1]
    return params


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "blob": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "long": (int,),
    "float": (int, float),
    "double": (int, float),
    "timestamp": (int, float, str),
    "structure": (dict,),
    "map": (dict,),
    "list": (list,),
}


def validate(value: Any, shape: botocore.model.Shape, path: str = "") -> list[str]:
    """What is wrong with `value` as an instance of `shape` (required members, types, enums,
    ranges); empty when it is valid. Unknown members are ignored, as AWS ignores them."""
    where = path or "input"
    expected = _JSON_TYPES.get(shape.type_name, (object,))
    wrong_bool = isinstance(value, bool) and bool not in expected
    if not isinstance(value, expected) or wrong_bool:
        return [f"{where} must be of type {shape.type_name}, got {type(value).__name__}"]
    value = cast(Any, value)  # its JSON type now matches the shape
    problems: list[str] = []
    metadata = shape.metadata
    if shape.type_name in ("integer", "long"):
        if "min" in metadata and value < metadata["min"]:
            problems.append(f"{where} must be >= {metadata['min']}, got {value}")
        if "max" in metadata and value > metadata["max"]:
            problems.append(f"{where} must be <= {metadata['max']}, got {value}")
    elif shape.type_name == "string":
        enum = metadata.get("enum")
        # Case-insensitively, as AWS accepts e.g. "exit" for a retry action.
        if enum and value.upper() not in {member.upper() for member in enum}:
            problems.append(f"{where} must be one of {', '.join(enum)}, got {value!r}")
    elif isinstance(shape, botocore.model.StructureShape):
        for name in shape.required_members:
            if value.get(name) is None:
                problems.append(f"{path + '.' if path else ''}{name} is required")
        for name, member in shape.members.items():
            if value.get(name) is not None:
                problems += validate(value[name], member, f"{path + '.' if path else ''}{name}")
    elif isinstance(shape, botocore.model.ListShape):
        for index, item in enumerate(value):
            problems += validate(item, shape.member, f"{where}[{index}]")
    elif isinstance(shape, botocore.model.MapShape):
        for key, item in value.items():
            problems += validate(item, shape.value, f"{where}[{key!r}]")
    return problems


def shape_output(value: Any, shape: botocore.model.Shape, path: str = "") -> Any:
    """`value` as the JSON of `shape`: None members dropped, every key checked against the model.

    Raises TypeError on a member the model does not define: an emulator bug, never silently sent.
    """
    if isinstance(shape, botocore.model.StructureShape):
        if not isinstance(value, Mapping):
            raise TypeError(f"{path or shape.name}: expected a structure, got {value!r}")
        out = {}
        for key, item in value.items():
            if item is None:
                continue
            if key not in shape.members:
                raise TypeError(f"{path or shape.name}: {shape.name} has no member {key!r}")
            out[key] = shape_output(item, shape.members[key], f"{path}.{key}")
        return out
    if isinstance(shape, botocore.model.ListShape):
        return [shape_output(item, shape.member, f"{path}[]") for item in value]
    if isinstance(shape, botocore.model.MapShape):
        return {str(k): shape_output(v, shape.value, f"{path}{{}}") for k, v in value.items()}
    expected = _JSON_TYPES.get(shape.type_name, (object,))
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        raise TypeError(f"{path}: expected {shape.type_name}, got {value!r}")
    return value
