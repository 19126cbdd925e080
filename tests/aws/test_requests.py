"""Every request batchcrew builds, checked against what AWS accepts, without the emulator.

The checks here are written apart from both the library and LocalBatch, from the sources: the
installed botocore's Batch model (types, required members, enums, and the min/max limits that
botocore does not check on the client) and the rules AWS states in the model's documentation
(Fargate's vCPU and memory pairs are parsed from it here; EC2's whole vCPUs; the 60 s timeout
floor; 50 tags; arrays of 2 to 10,000; containerOverrides never beside EKS or node overrides).
So the emulator and the library cannot agree on a mistake: each option combination either
builds requests these checks pass, or is refused when it is built, naming the option.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import botocore.model
import botocore.session
import pytest
from aiohttp import web

from batchcrew import aws
from batchcrew.aws.definition import register_parameters
from batchcrew.aws.launcher import TAG
from batchcrew.errors import LaunchError
from batchcrew.launchers.base import LaunchRequest

pytestmark = pytest.mark.timeout(120)

MODEL = botocore.session.get_session().get_service_model("batch")


# -- the checks, from botocore's model ------------------------------------------------------


def _text(documentation: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", documentation))


@functools.cache
def fargate_pairs() -> dict[float, frozenset[int]]:
    """Fargate's vCPU counts and the memory (MiB) each allows, read from the documentation of
    ResourceRequirement.value ('value = 2 MEMORY = 4096, 5120, ... or 16384')."""
    member = MODEL.shape_for("ResourceRequirement").members["value"]  # type: ignore[attr-defined]
    text = _text(member.documentation)
    section = text[text.index('type="VCPU"') :]
    table = {}
    for chunk in section.split("value = ")[1:]:
        count, _, memory = chunk.partition(" MEMORY = ")
        if memory:
            table[float(count)] = frozenset(int(value) for value in re.findall(r"\d+", memory))
    assert len(table) == 8
    assert table[2] == frozenset(range(4096, 16385, 1024))
    return table


def model_problems(value: Any, shape: botocore.model.Shape, path: str) -> list[str]:
    """What botocore's model says is wrong with `value` as `shape`: types, unknown and
    required members, enums, and the min/max of numbers, strings, lists and maps."""
    kind = shape.type_name
    python = {
        "string": str,
        "integer": int,
        "long": int,
        "boolean": bool,
        "structure": Mapping,
        "map": Mapping,
        "list": list,
    }.get(kind, object)
    if not isinstance(value, python) or (isinstance(value, bool) and kind != "boolean"):
        return [f"{path}: {value!r} is not a {kind}"]
    found: list[str] = []
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    size = value if kind in ("integer", "long") else len(value) if kind != "boolean" else None
    if size is not None and low is not None and size < low:
        found.append(f"{path}: {size} under the model's min {low}")
    if size is not None and high is not None and size > high:
        found.append(f"{path}: {size} over the model's max {high}")
    enum = shape.metadata.get("enum")
    if enum and value not in enum:
        found.append(f"{path}: {value!r} not one of {enum}")
    if isinstance(shape, botocore.model.StructureShape):
        for name in shape.required_members:
            if name not in value:
                found.append(f"{path}.{name} is required")
        for name, item in value.items():
            if name not in shape.members:
                found.append(f"{path}.{name} is not a member of {shape.name}")
            else:
                found += model_problems(item, shape.members[name], f"{path}.{name}")
    elif isinstance(shape, botocore.model.ListShape):
        for index, item in enumerate(value):
            found += model_problems(item, shape.member, f"{path}[{index}]")
    elif isinstance(shape, botocore.model.MapShape):
        for key, item in value.items():
            found += model_problems(key, shape.key, f"{path} key")
            found += model_problems(item, shape.value, f"{path}[{key!r}]")
    return found


def resource_problems(requirements: list[dict[str, str]], platform: str, path: str) -> list[str]:
    """AWS's prose rules for a job's resourceRequirements on `platform`."""
    amounts = {item["type"]: item["value"] for item in requirements}
    found = []
    if len(amounts) != len(requirements):
        found.append(f"{path}: a resource type given twice")
    if platform == "FARGATE":
        # "GPUs aren't available for jobs that are running on Fargate resources."
        if "GPU" in amounts:
            found.append(f"{path}: GPU on Fargate")
        if "VCPU" in amounts or "MEMORY" in amounts:
            try:
                cpus, memory = float(amounts["VCPU"]), int(amounts["MEMORY"])
            except (KeyError, ValueError):
                return [*found, f"{path}: Fargate needs VCPU and MEMORY together: {amounts}"]
            if memory not in fargate_pairs().get(cpus, frozenset()):
                found.append(f"{path}: Fargate refuses {cpus} vCPU with {memory} MiB")
    else:
        # "For Amazon EC2 resources, you must specify at least one vCPU"; a whole number.
        if "VCPU" in amounts and not re.fullmatch(r"[1-9]\d*", amounts["VCPU"]):
            found.append(f"{path}: EC2 VCPU {amounts['VCPU']!r} is not a whole number >= 1")
        # "You must specify at least 4 MiB of memory for a job."
        if "MEMORY" in amounts and not (
            amounts["MEMORY"].isdigit() and int(amounts["MEMORY"]) >= 4
        ):
            found.append(f"{path}: MEMORY {amounts['MEMORY']!r} under 4 MiB")
    if "GPU" in amounts and not amounts["GPU"].isdigit():
        found.append(f"{path}: GPU {amounts['GPU']!r} is not a whole number")
    return found


def submit_problems(params: dict[str, Any], definition: dict[str, Any]) -> list[str]:
    """Why AWS would refuse SubmitJob `params` for a job of `definition`."""
    found = model_problems(params, MODEL.operation_model("SubmitJob").input_shape, "SubmitJob")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", params["jobName"]):
        found.append(f"jobName {params['jobName']!r}: up to 128 letters, digits, - and _")
    overrides = params.get("containerOverrides")
    if overrides is not None and ("eksPropertiesOverride" in params or "nodeOverrides" in params):
        found.append("containerOverrides beside eksPropertiesOverride or nodeOverrides")
    size = params.get("arrayProperties", {}).get("size")
    if size is not None and not 2 <= size <= 10_000:  # "between 2 and 10,000"
        found.append(f"array size {size}")
    seconds = params.get("timeout", {}).get("attemptDurationSeconds")
    if seconds is not None and seconds < 60:  # "The minimum value for the timeout is 60"
        found.append(f"timeout {seconds} s")
    strategy = params.get("retryStrategy", {})
    rules = strategy.get("evaluateOnExit", [])
    if len(rules) > 5 or (rules and "attempts" not in strategy):  # "up to 5"; "must also be"
        found.append(f"retryStrategy {strategy}")
    for rule in rules:  # "only numbers", "letters, numbers, periods, colons, white space"
        for key, allowed in (("onExitCode", r"\d*\*?"), ("onReason", r"[\w.:\s]*\*?")):
            if key in rule and not re.fullmatch(allowed, rule[key], flags=re.ASCII):
                found.append(f"evaluateOnExit {key} {rule[key]!r}")
        if "onStatusReason" in rule and not re.fullmatch(r"[\w.:\s]*\*?", rule["onStatusReason"]):
            found.append(f"evaluateOnExit onStatusReason {rule['onStatusReason']!r}")
    for variable in (overrides or {}).get("environment", []):
        if variable["name"].startswith("AWS_BATCH"):  # "cannot start with AWS_BATCH"
            found.append(f"environment variable {variable['name']}")
    if "" in (overrides or {}).get("command", []):  # "can't contain an empty string"
        found.append("an empty string in the command")
    platform = "FARGATE" if "FARGATE" in definition.get("platformCapabilities", []) else "EC2"
    merged = {
        item["type"]: item
        for item in definition["containerProperties"].get("resourceRequirements", [])
    }
    merged.update(
        {item["type"]: item for item in (overrides or {}).get("resourceRequirements", [])}
    )
    found += resource_problems(list(merged.values()), platform, "the job's resources")
    return found


def register_problems(params: dict[str, Any]) -> list[str]:
    """Why AWS would refuse RegisterJobDefinition `params`."""
    shape = MODEL.operation_model("RegisterJobDefinition").input_shape
    found = model_problems(params, shape, "RegisterJobDefinition")
    container = params["containerProperties"]
    platform = params.get("platformCapabilities", ["EC2"])[0]
    requirements = container.get("resourceRequirements", [])
    if not {"VCPU", "MEMORY"} <= {item["type"] for item in requirements}:
        found.append("no VCPU or no MEMORY")  # ResourceRequirement: "This is required"
    if platform == "FARGATE":
        if "executionRoleArn" not in container:  # "you must provide an execution role"
            found.append("Fargate without executionRoleArn")
    else:
        for key in ("networkConfiguration", "fargatePlatformConfiguration"):
            if key in container:  # "Jobs that are running on Amazon EC2 ... must not specify"
                found.append(f"{key} on EC2")
    found += resource_problems(container.get("resourceRequirements", []), platform, "resources")
    seconds = params.get("timeout", {}).get("attemptDurationSeconds")
    if seconds is not None and seconds < 60:
        found.append(f"timeout {seconds} s")
    return found


def definition_of(platform: str, cpus: str = "1", memory: str = "2048") -> dict[str, Any]:
    """A job definition as DescribeJobDefinitions answers it."""
    definition: dict[str, Any] = {
        "jobDefinitionName": "worker",
        "jobDefinitionArn": "arn:aws:batch:us-east-1:123456789012:job-definition/worker:1",
        "revision": 1,
        "status": "ACTIVE",
        "type": "container",
        "platformCapabilities": [platform],
        "containerProperties": {
            "image": "worker",
            "command": ["python", "-m", "batchcrew.worker"],
            "resourceRequirements": [
                {"type": "VCPU", "value": cpus},
                {"type": "MEMORY", "value": memory},
            ],
        },
    }
    if platform == "FARGATE":
        definition["containerProperties"]["executionRoleArn"] = "arn:aws:iam::1:role/exec"
    return definition


def request(count: int, level: int, controller: str = "run") -> LaunchRequest:
    return LaunchRequest(
        "a1b2c3-7",
        count,
        level,
        ("python", "-m", "batchcrew.worker"),
        {"BATCHCREW_CONTROLLER": "tcp://10.0.0.5:5555", "BATCHCREW_SECRET_KEY": "k" * 40},
        controller,
        "0123456789abcdef",
    )


def launcher_requests(
    options: aws.BatchOptions, definition: dict[str, Any], controller: str = "run"
) -> Iterator[dict[str, Any]]:
    """Every SubmitJob a launcher with `options` sends for a job of `definition`: each level,
    a single worker and the largest array, and a launch split past 10,000 workers."""
    launcher = aws.BatchLauncher(options)
    launcher.use_definition(definition)
    for level in range(options.levels):
        for count, offset in ((1, 0), (10_000, 0), (3, 10_000)):
            yield launcher.submit_job_request(request(count, level, controller), offset, count)


# -- the option grids -----------------------------------------------------------------------

CPUS: list[Any] = [None, 0.25, 0.5, 1, 1.5, 2, 3, 4, 8, 16, 32, [1, 2, 4], [0.5, 4]]
MEMORY_GB: list[Any] = [None, 0.5, 1, 4, 8, 16, 30, 64, 121, [4, 8, 16], [2, 60]]
MEMORY_MIB: list[Any] = [2, 512, 1000, 3000, 8192, 20000, [1024, 4096, 300000]]
GPUS: list[Any] = [None, 0, 1, [0, 2]]


@dataclass
class Tally:
    """How many combinations built valid requests, and how many were refused (by what)."""

    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def refuse(self, error: Exception) -> None:
        key = type(error).__name__
        self.refused[key] = self.refused.get(key, 0) + 1


def test_every_resource_combination_is_valid_on_its_platform_or_refused_when_built() -> None:
    tally = Tally()
    memories = [("gigabytes", m) for m in MEMORY_GB] + [("mebibytes", m) for m in MEMORY_MIB]
    for cpus, (units, memory), gpus, platform, defined in itertools.product(
        CPUS, memories, GPUS, ["EC2", "FARGATE", None], ["EC2", "FARGATE"]
    ):
        if platform is not None and platform != defined:
            continue  # a mismatch is refused at start, tested below
        definition = definition_of(defined)
        try:
            options = aws.BatchOptions(
                job_definition="worker",
                job_queue="q",
                cpus=cpus,
                gpus=gpus,
                memory=memory,
                memory_units=units,
                platform=platform,
            )
            sent = list(launcher_requests(options, definition))
        except ValueError as error:
            message = str(error)
            assert any(word in message for word in ("cpus", "memory", "gpus", "vCPU")), message
            tally.refuse(error)
            continue
        for params in sent:
            assert submit_problems(params, definition) == [], (options, params)
        tally.accepted += 1
    # Both outcomes happen, on both platforms: the grid is not all refusals.
    assert tally.accepted > 300, tally
    assert tally.refused["ValueError"] > 300, tally


def test_the_docs_example_runs_on_fargate_as_written() -> None:
    """docs/aws-batch.md's controller: cpus=2, memory=[4, 8, 16] (gigabytes)."""
    options = aws.BatchOptions(
        job_definition="worker", job_queue="fargate", cpus=2, memory=[4, 8, 16]
    )
    definition = definition_of("FARGATE", cpus="2", memory="8192")
    sent = list(launcher_requests(options, definition))
    memories = {
        item["value"]
        for params in sent
        for item in params["containerOverrides"]["resourceRequirements"]
        if item["type"] == "MEMORY"
    }
    assert memories == {"4096", "8192", "15360"}
    for params in sent:
        assert submit_problems(params, definition) == []


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"timeout": {"attemptDurationSeconds": 59}}, "at least 60 seconds"),
        ({"timeout": {"attemptDurationSeconds": 1.5}}, "at least 60 seconds"),
        ({"timeout": {"attemptDurationSeconds": 90.5}}, "whole number"),
        ({"timeout": 90}, "attemptDurationSeconds"),
        ({"tags": {f"k{i}": "v" for i in range(50)}}, "batchcrew adds 1"),
        ({"tags": {"k": "x" * 257}}, "at most 256"),
        ({"tags": {"aws:k": "v"}}, "AWS reserves"),
        ({"tags": {"k": "(v)"}}, "does not allow in tags"),
        ({"node_overrides": {"numNodes": 2}}, "multi-node"),
        ({"eks_properties_override": {"podProperties": {}}}, "EKS"),
        ({"container_overrides": {"command": ["x"]}}, "sets the worker's command"),
        ({"container_overrides": {"vcpus": 2}}, "cpus=, gpus= and memory="),
        ({"container_overrides": {"instanceType": "m5.large"}}, "multi-node"),
        ({"container_overrides": {"environment": [{"name": "AWS_BATCH_X", "value": "1"}]}}, "AWS"),
        ({"share_identifier": "a" * 256}, "255"),
        ({"scheduling_priority_override": 10_000}, "9999"),
        ({"retry_strategy": {"attempts": 11}}, "1 to 10"),
        ({"retry_strategy": {"evaluateOnExit": [{"action": "RETRY"}] * 6}}, "at most 5"),
        ({"retry_strategy": {"evaluateOnExit": [{"action": "RETRY"}]}}, "needs 'attempts'"),
        (
            {
                "retry_strategy": {
                    "attempts": 2,
                    "evaluateOnExit": [{"onReason": "a (b)*", "action": "EXIT"}],
                }
            },
            "onReason must be a pattern",
        ),
        ({"platform": "EKS"}, "platform"),
        ({"platform": "EC2", "cpus": 0.5}, "whole number of at least 1"),
        ({"platform": "FARGATE", "gpus": 1, "cpus": 1, "memory": 2}, "Fargate has no GPUs"),
        ({"platform": "FARGATE", "cpus": 2, "memory": 64}, "more memory than Fargate"),
    ],
)
def test_options_aws_would_refuse_are_refused_when_built(
    options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        aws.BatchOptions(job_definition="worker", job_queue="q", **options)


@pytest.mark.parametrize(
    "controller",
    ["run", "x" * 300, "my run (2024) #3 é/ü", "-leading dash", "a" * 240 + "/[]{}"],
)
@pytest.mark.parametrize("tags", [None, {"team": "stats", "cost center": "A-1"}, "49"])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"timeout": {"attemptDurationSeconds": 60}, "propagate_tags": True},
        {
            "retry_strategy": {
                "attempts": 3,
                "evaluateOnExit": [{"onStatusReason": "Host EC2*", "action": "RETRY"}],
            },
            "share_identifier": "teamA*",
            "scheduling_priority_override": 9999,
            "parameters": {"x": "1"},
            "container_overrides": {"environment": [{"name": "MY_SETTING", "value": "1"}]},
        },
    ],
)
def test_names_tags_and_passthrough_fields_make_valid_requests(
    controller: str, tags: dict[str, str] | str | None, extra: dict[str, Any]
) -> None:
    given = {f"key{i}": f"value {i}" for i in range(49)} if tags == "49" else tags
    options = aws.BatchOptions(job_definition="worker", job_queue="q", tags=given, **extra)
    definition = definition_of("EC2")
    for params in launcher_requests(options, definition, controller):
        assert submit_problems(params, definition) == []
        assert len(params["tags"]) <= 50
        assert params["tags"][TAG].endswith("/0123456789abcdef")  # the instance survives a cut


@pytest.mark.parametrize(
    ("definition", "options", "named"),
    [
        ({"type": "multinode", "nodeProperties": {"numNodes": 2}}, {}, "multi-node"),
        ({"eksProperties": {"podProperties": {}}, "containerProperties": None}, {}, "EKS"),
        ({"containerProperties": None}, {}, "containerProperties"),
        ({"platformCapabilities": ["FARGATE"]}, {"platform": "EC2"}, "for FARGATE"),
        ({}, {"platform": "FARGATE"}, "for EC2"),
        (
            {"tags": {f"d{i}": "v" for i in range(45)}, "propagateTags": True},
            {"tags": {f"j{i}": "v" for i in range(5)}},
            "over AWS's 50",
        ),
    ],
)
def test_a_definition_workers_cannot_run_on_is_refused_at_start(
    definition: dict[str, Any], options: dict[str, Any], named: str
) -> None:
    described = {**definition_of("EC2"), **definition}
    launcher = aws.BatchLauncher(
        aws.BatchOptions(job_definition="worker", job_queue="q", **options)
    )
    with pytest.raises(LaunchError, match=re.escape(named)):
        launcher.use_definition(described)


def test_fargate_resources_given_halfway_take_the_rest_from_the_definition() -> None:
    definition = definition_of("FARGATE", cpus="4", memory="16384")
    only_memory = aws.BatchOptions(job_definition="worker", job_queue="q", memory=[10, 20])
    only_cpus = aws.BatchOptions(job_definition="worker", job_queue="q", cpus=[2, 8])
    for options in (only_memory, only_cpus):
        for params in launcher_requests(options, definition):
            assert submit_problems(params, definition) == []
    # The definition's 16384 MiB do not fit one vCPU (at most 8192): refused, with the fix.
    one = aws.BatchLauncher(aws.BatchOptions(job_definition="worker", job_queue="q", cpus=1))
    with pytest.raises(ValueError, match="more memory than Fargate allows with 1 vCPU"):
        one.use_definition(definition)


REGISTER_GRID: dict[str, list[Any]] = {
    "platform_capabilities": ["EC2", "FARGATE"],
    "cpus": [None, 0.25, 1, 2, 3, 16],
    "memory": [None, 0.5, 4, 8, 31, 200],
    "gpus": [0, 1],
    "seconds_timeout": [None, 30, 60, 86_400.5],
    "execution_role_arn": [None, "arn:aws:iam::123456789012:role/exec"],
    "assign_public_ip": [None, True, False],
    "platform_version": [None, "LATEST"],
}


def test_every_register_combination_is_valid_or_refused_before_the_request() -> None:
    tally = Tally()
    for values in itertools.product(*REGISTER_GRID.values()):
        arguments = dict(zip(REGISTER_GRID, values, strict=True))
        try:
            params = register_parameters(
                "worker",
                image="worker:1",
                memory_units="gigabytes",
                scheduling_priority=None,
                tags={"team": "stats"},
                propagate_tags=None,
                parameters=None,
                job_role_arn=None,
                **arguments,
            )
        except ValueError as error:
            tally.refuse(error)
            continue
        assert register_problems(params) == [], (arguments, params)
        tally.accepted += 1
    assert tally.accepted > 100, tally
    assert tally.refused["ValueError"] > 100, tally


# -- the monitor's requests, as they leave through aiobotocore ---------------------------------


@dataclass
class Recorder:
    """An HTTP endpoint that records each Batch request (operation, parameters) and answers
    what AWS would for a queue with no jobs and one job definition: not AWS, not the emulator,
    only a recorder of what batchcrew sends."""

    platform: str = "EC2"
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def answer(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((operation, params))
        if operation == "DescribeJobDefinitions":
            return {"jobDefinitions": [definition_of(self.platform)]}
        if operation == "SubmitJob":
            return {"jobName": params["jobName"], "jobId": "1234", "jobArn": "arn:job/1234"}
        if operation == "TerminateJobs":
            return {"successful": params["jobs"], "errors": []}
        if operation == "ListJobs":
            return {"jobSummaryList": []}
        if operation == "DescribeJobs":
            return {
                "jobs": [
                    {"jobId": job, "jobName": "j", "jobQueue": "q", "status": "RUNNING"}
                    for job in params["jobs"]
                ]
            }
        raise AssertionError(f"unexpected {operation}")


@pytest.fixture
async def recorder(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Recorder]:
    routes = {
        MODEL.operation_model(name).http["requestUri"]: name for name in MODEL.operation_names
    }
    recorder = Recorder()

    async def handle(http: web.Request) -> web.Response:
        operation = routes[http.path]
        params = json.loads(await http.read() or b"{}")
        return web.json_response(recorder.answer(operation, params))

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "recorder")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "recorder")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    try:
        yield recorder
    finally:
        await runner.cleanup()


def operation_problems(operation: str, params: dict[str, Any]) -> list[str]:
    found = model_problems(params, MODEL.operation_model(operation).input_shape, operation)
    if operation == "TerminateJobs" and len(params["jobs"]) > 50:  # "up to 50 Batch job IDs"
        found.append(f"TerminateJobs of {len(params['jobs'])} jobs")
    if operation in ("TerminateJobs", "TerminateJob") and len(params["reason"]) > 1024:
        found.append("a reason over 1024 characters")  # "a limit of 1024 characters"
    if operation == "DescribeJobs" and len(params["jobs"]) > 100:  # "up to 100 job IDs"
        found.append(f"DescribeJobs of {len(params['jobs'])} jobs")
    if operation == "ListJobs" and params.get("maxResults", 0) > 1000:  # "up to 1000 values"
        found.append("ListJobs maxResults over 1000")
    return found


@pytest.mark.parametrize("platform", ["EC2", "FARGATE"])
async def test_the_monitor_sends_requests_aws_accepts(recorder: Recorder, platform: str) -> None:
    recorder.platform = platform
    refused = 0
    async with aws.BatchMonitor(job_queue="q", job_definition="worker") as monitor:
        for cpus, memory, gpus in itertools.product([None, 0.5, 1, 2, 3], [None, 1, 4, 64], [0, 1]):
            try:
                await monitor.submit(
                    "a job (1)", ["echo", "hi"], cpus=cpus, memory=memory, gpus=gpus
                )
            except ValueError:
                refused += 1
        await monitor.terminate([f"job-{i}" for i in range(120)], reason="r" * 2000)
        await monitor.jobs()
        await monitor.status("job-1")
    assert 0 < refused < 40
    submits = [params for operation, params in recorder.calls if operation == "SubmitJob"]
    assert len(submits) == 40 - refused
    for params in submits:
        assert submit_problems(params, definition_of(platform)) == []
    for operation, params in recorder.calls:
        assert operation_problems(operation, params) == [], (operation, params)
    ends = [params for operation, params in recorder.calls if operation == "TerminateJobs"]
    assert sorted(len(params["jobs"]) for params in ends) == [20, 50, 50]
