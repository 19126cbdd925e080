"""docs/aws-batch.md's Fargate walkthrough, run as written on a Fargate queue of LocalBatch:
the definition registered through `JobDefinition.register`, then the controller example,
unchanged, in a process of its own (as a user runs it)."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchcrew.testing import LocalBatch

DOCS = Path(__file__).resolve().parents[2] / "docs" / "aws-batch.md"


def python_block(containing: str) -> str:
    """The docs' one ```python block that holds `containing`."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    (block,) = [block for block in blocks if containing in block]
    return str(block)


async def run_awaiting(code: str) -> None:
    """Run a docs block written with top-level `await`, as a notebook cell runs it."""
    namespace: dict[str, Any] = {}
    exec(f"async def cell():\n{textwrap.indent(code, '    ')}", namespace)
    await namespace["cell"]()


@pytest.mark.timeout(120)
async def test_the_docs_controller_runs_on_a_fargate_queue_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with LocalBatch(queues=(), fargate_queues=["my-queue"]) as batch:
        for name, value in batch.environment().items():
            monkeypatch.setenv(name, value)
        await run_awaiting(python_block('platform_capabilities="FARGATE"'))
        script = tmp_path / "pipeline.py"
        script.write_text(python_block('name="my_workflow"'))
        with anyio.fail_after(100):
            done = await anyio.run_process([sys.executable, str(script)], env=dict(os.environ))
        (definition,) = batch.requests_for("RegisterJobDefinition")
        submits = batch.requests_for("SubmitJob")
    assert definition["platformCapabilities"] == ["FARGATE"]
    assert definition["containerProperties"]["resourceRequirements"] == [
        {"type": "VCPU", "value": "2"},
        {"type": "MEMORY", "value": "8192"},  # 8 gigabytes, rounded up to what Fargate allows
    ]
    assert submits
    for submitted in submits:  # memory=[4, 8, 16] gigabytes, on 2 vCPUs: 4096 MiB first
        assert submitted["containerOverrides"]["resourceRequirements"] == [
            {"type": "VCPU", "value": "2"},
            {"type": "MEMORY", "value": "4096"},
        ]
    output = done.stdout.decode()
    assert "success" in output
    assert "1000" in output  # the summary counts the thousand tasks
