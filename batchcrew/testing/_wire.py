"""The AWS wire formats the emulator speaks, driven by botocore's own service models.

Requests are routed, parsed and validated against each operation's input shape, and responses
are built from its output shape, so the emulator and botocore cannot disagree on a field.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
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


class WireTypeError(Exception):
    """A request member of the wrong JSON type: AWS fails such a request as it deserializes it,
    before any constraint is checked, with a SerializationException."""


#: How a Coral-based AWS service names the JSON token it could not convert, and the type it
#: wanted: "STRING_VALUE can not be converted to an Integer" is the text AWS answers
#: (SerializationException, reported in async-aws/aws#1667). The other texts follow it.
_TOKENS = {str: "STRING_VALUE", bool: "BOOLEAN_VALUE", int: "NUMBER_VALUE", float: "NUMBER_VALUE"}
_TARGETS = {
    "string": "a String",
    "blob": "a ByteBuffer",
    "boolean": "a Boolean",
    "integer": "an Integer",
    "long": "a Long",
    "float": "a Float",
    "double": "a Double",
    "timestamp": "a Date",
}


def _type_error(value: Any, shape: botocore.model.Shape) -> WireTypeError:
    if isinstance(value, dict):
        return WireTypeError("Start of structure or map found where not expected.")
    if isinstance(value, list):
        return WireTypeError("Start of list found where not expected.")
    token = _TOKENS.get(type(value), "VALUE")
    target = _TARGETS.get(shape.type_name, f"a {shape.type_name}")
    return WireTypeError(f"{token} can not be converted to {target}")


def render(value: Any) -> str:
    """`value` as AWS prints it in a validation error (Java's toString of the deserialized
    value): lists as [a, b], maps and structures as {k=v}, booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(render(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}={render(item)}" for key, item in value.items()) + "}"
    if value is None:
        return "null"
    return str(value)


def constraint_problem(value: Any, path: str, constraint: str) -> str:
    """One problem in AWS's words: "Value 'x' at 'path' failed to satisfy constraint: ..."."""
    shown = "null" if value is None else f"'{render(value)}'"
    return f"Value {shown} at '{path}' failed to satisfy constraint: {constraint}"


def validation_message(problems: list[str]) -> str:
    """AWS's message for a request with `problems`: "2 validation errors detected: a; b"."""
    count = len(problems)
    return f"{count} validation error{'s' if count > 1 else ''} detected: " + "; ".join(problems)


# -- Java regular expressions ---------------------------------------------------------------
#
# AWS checks a model's `pattern` with Java's java.util.regex, against the whole value
# (String.matches): "testServiceName:latest-metrics" fails logGroupName's unanchored
# [\.\-_/#A-Za-z0-9]+ (awslabs/aws-embedded-metrics-java#65). Python's `re` differs from
# Java in three ways the models use: it has no Unicode category classes (\p{L}, \p{Z}, \p{N}
# in the tag patterns of CloudWatch Logs), its \w, \d and \s are Unicode unless told
# otherwise (Java's are ASCII), and it refuses a "-" after a class escape in brackets ([\w-_],
# which Java reads as a literal "-"). `java_pattern` translates: each \p{X} becomes the explicit
# ranges of the code points whose Unicode general category starts with X (read from
# `unicodedata`, so the ranges follow the interpreter's Unicode version rather than a list
# kept here), patterns compile with re.ASCII, and such a "-" is escaped. The third-party
# `regex` module knows \p{...}, but a test helper should not add a dependency for three
# classes.


#: Code points past the fourth plane hold no letter, number or separator (planes 4 to 13 are
#: unassigned, 14 holds tags and variation selectors, 15 and 16 private use), so the scan for
#: \p{...} stops there: it runs once, on the event loop, at the first pattern that needs it.
_SCANNED = 0x40000


@functools.cache
def _category_spans() -> dict[str, list[tuple[int, int]]]:
    """The runs of code points of each major Unicode general category ("L", "Z", "N", ...)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    category = unicodedata.category
    for point in range(_SCANNED):
        runs = spans.setdefault(category(chr(point))[0], [])
        if runs and runs[-1][1] == point - 1:
            runs[-1] = (runs[-1][0], point)
        else:
            runs.append((point, point))
    return spans


@functools.cache
def _category_ranges(category: str) -> str:
    """The code points of major Unicode general category `category` ("L", "Z", "N"), as the
    inside of a regex character class."""
    if len(category) != 1:
        raise ValueError(f"\\p{{{category}}} is not translated: only one-letter categories are")
    return "".join(
        re.escape(chr(low)) if low == high else f"{re.escape(chr(low))}-{re.escape(chr(high))}"
        for low, high in _category_spans().get(category, [])
    )


@functools.cache
def java_pattern(pattern: str) -> re.Pattern[str]:
    """`pattern`, a Java regular expression from an AWS model, as a Python one (see above)."""
    out: list[str] = []
    in_class = False
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            escape = pattern[index + 1]
            if escape in "pP" and pattern.startswith("{", index + 2):
                close = pattern.index("}", index + 2)
                ranges = _category_ranges(pattern[index + 3 : close])
                if escape == "P" and in_class:
                    raise ValueError(f"\\P{{...}} inside brackets is not translated: {pattern}")
                if in_class:
                    out.append(ranges)
                else:
                    out.append(f"[{'^' if escape == 'P' else ''}{ranges}]")
                index = close + 1
                continue
            out.append(pattern[index : index + 2])
            index += 2
            after = pattern[index : index + 2]
            if in_class and escape in "wWdDsS" and after[:1] == "-" and after != "-]":
                out.append("\\-")
                index += 1
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class:
            in_class = False
        out.append(char)
        index += 1
    return re.compile("".join(out), re.ASCII)


def compile_patterns() -> None:
    """Translate and compile every `pattern` of both models now (the Unicode scan of \\p{...}
    included), so that no request pays for it; LocalBatch runs this in a thread at start."""
    for service in ("batch", "logs"):
        model = service_model(service)
        for name in model.shape_names:
            pattern = model.shape_for(name).metadata.get("pattern")
            if pattern is not None:
                java_pattern(pattern)


# -- model validation --------------------------------------------------------------------------


def _case_insensitive(shape: botocore.model.Shape) -> bool:
    """Whether the model says this member's enum values "aren't case sensitive" (as it says of
    EvaluateOnExit.action); every other enum is matched exactly, as AWS matches it."""
    documentation = getattr(shape, "documentation", "") or ""
    return "aren't case sensitive" in documentation or "not case sensitive" in documentation


def _constraints(shape: botocore.model.Shape) -> list[tuple[str, Callable[[Any], bool]]]:
    """The model's constraints on a scalar or a collection's size, each as AWS words it and a
    test of a value, in the order AWS lists them (max, min, pattern, enum)."""
    metadata = shape.metadata
    found: list[tuple[str, Callable[[Any], bool]]] = []
    kind = shape.type_name
    if kind in ("integer", "long", "float", "double"):
        if "max" in metadata:
            most = metadata["max"]
            found.append(
                (f"Member must have value less than or equal to {most}", lambda v: v <= most)
            )
        if "min" in metadata:
            least = metadata["min"]
            found.append(
                (f"Member must have value greater than or equal to {least}", lambda v: v >= least)
            )
    elif kind in ("string", "list", "map"):
        if "max" in metadata:
            most = metadata["max"]
            found.append(
                (f"Member must have length less than or equal to {most}", lambda v: len(v) <= most)
            )
        if "min" in metadata:
            least = metadata["min"]
            found.append(
                (
                    f"Member must have length greater than or equal to {least}",
                    lambda v: len(v) >= least,
                )
            )
    if kind == "string":
        if "pattern" in metadata:
            compiled = java_pattern(metadata["pattern"])
            found.append(
                (
                    f"Member must satisfy regular expression pattern: {metadata['pattern']}",
                    lambda v: compiled.fullmatch(v) is not None,
                )
            )
        enum = metadata.get("enum")
        if enum:
            fold = _case_insensitive(shape)
            allowed = {member.upper() for member in enum} if fold else set(enum)
            found.append(
                (
                    f"Member must satisfy enum value set: [{', '.join(enum)}]",
                    lambda v: (v.upper() if fold else v) in allowed,
                )
            )
    return found


def _check_type(value: Any, shape: botocore.model.Shape) -> None:
    expected = _JSON_TYPES.get(shape.type_name, (object,))
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        raise _type_error(value, shape)


def _is_scalar(shape: botocore.model.Shape) -> bool:
    return shape.type_name not in ("structure", "list", "map")


def validate(value: Any, shape: botocore.model.Shape, path: str = "") -> list[str]:
    """What AWS's validation finds wrong with `value` as an instance of `shape`, each problem
    in AWS's words (required members, enums, ranges of numbers, lengths of strings, sizes of
    lists and maps, map keys as well as values, patterns); empty when it is valid.

    Raises WireTypeError for a member of the wrong JSON type, which AWS answers with a
    SerializationException of its own rather than a validation error. Unknown members are
    ignored, as AWS ignores them; a member sent as null counts as absent.
    """
    _check_type(value, shape)
    problems: list[str] = []
    if shape.type_name not in ("structure", "blob", "boolean", "timestamp"):
        for constraint, holds in _constraints(shape):
            if not holds(value):
                problems.append(_problem(value, shape, path, constraint))
    if isinstance(shape, botocore.model.StructureShape):
        for name in shape.required_members:
            if value.get(name) is None:
                problems.append(
                    constraint_problem(None, _join(path, name), "Member must not be null")
                )
        for name, member in shape.members.items():
            if value.get(name) is not None:
                problems += validate(value[name], member, _join(path, name))
    elif isinstance(shape, botocore.model.ListShape):
        items = [item for item in value if item is not None]
        if _is_scalar(shape.member):
            problems += _members_problems(items, shape.member, value, path, "Member")
        else:
            for index, item in enumerate(value):
                if item is not None:
                    problems += validate(item, shape.member, f"{path}.{index + 1}.member")
    elif isinstance(shape, botocore.model.MapShape):
        problems += _members_problems(list(value), shape.key, value, path, "Map keys")
        if _is_scalar(shape.value):
            values = [item for item in value.values() if item is not None]
            problems += _members_problems(values, shape.value, value, path, "Map value")
        else:
            for key, item in value.items():
                if item is not None:
                    problems += validate(item, shape.value, f"{path}.{key}")
    return problems


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _problem(value: Any, shape: botocore.model.Shape, path: str, constraint: str) -> str:
    if shape.metadata.get("sensitive"):
        # AWS leaves a sensitive member's value out of its message ("Value at
        # 'environment.variables' failed to satisfy constraint: ..." for Lambda's).
        return f"Value at '{path}' failed to satisfy constraint: {constraint}"
    return constraint_problem(value, path, constraint)


def _members_problems(
    items: list[Any], shape: botocore.model.Shape, whole: Any, path: str, what: str
) -> list[str]:
    """The problem of a list's members or a map's keys or values when one of them breaks a
    constraint of their shape: AWS reports it once, at the collection, listing every
    constraint of the shape ("Map keys must satisfy constraint: [Member must have length
    less than or equal to 128, ...]")."""
    # The format of AWS's answers: "Value '[...]' at 'subjectAlternativeNames' failed to
    # satisfy constraint: Member must satisfy constraint: [Member must have length less than
    # or equal to 253, ...]" (ACM), "Value '{...}' at 'targets.1.member.inputTransformer.
    # inputPathsMap' failed to satisfy constraint: Map keys must satisfy constraint: [...]"
    # (EventBridge), both in public reports; structures in a list are numbered from 1, as
    # 'tags.6.member.value' (SWO-GS/auto-tag#90).
    for item in items:
        _check_type(item, shape)
    constraints = _constraints(shape)
    if any(not holds(item) for item in items for _, holds in constraints):
        listed = ", ".join(constraint for constraint, _ in constraints)
        return [_problem(whole, shape, path, f"{what} must satisfy constraint: [{listed}]")]
    return []


def check_request(
    service: Service, operation: botocore.model.OperationModel, params: Params
) -> None:
    """Raise the ApiError `service` answers when `params` break `operation`'s input shape: a
    SerializationException for a member of the wrong type, else the service's client error
    with every problem found."""
    if operation.input_shape is None:
        return
    try:
        problems = validate(params, operation.input_shape)
    except WireTypeError as error:
        raise ApiError("SerializationException", str(error)) from None
    if problems:
        raise client_error(service, validation_message(problems))


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
