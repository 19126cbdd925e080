"""The `batchcrew` command, run as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest


def batchcrew(*args: str, timeout: float = 55) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BATCHCREW_")}
    return subprocess.run(
        [sys.executable, "-m", "batchcrew.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


@pytest.mark.parametrize("where", [[], ["--aws-batch-emulator"]])
def test_the_demo_runs_and_prints_its_summary(where: list[str]) -> None:
    done = batchcrew("demo", "--tasks", "20", "--draws", "2000", *where)
    assert done.returncode == 0, done.stderr
    assert "pi ~ 3." in done.stdout
    assert "success    │ 20" in done.stdout
    if where:
        assert "1 SubmitJob call(s) launched 2 worker(s)" in done.stdout


def test_the_demo_serves_its_dashboard_until_told_to_stop() -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BATCHCREW_")}
    command = ["demo", "--tasks", "20", "--draws", "2000"]
    command += ["--dashboard", "--dashboard-seconds", "50"]
    demo = subprocess.Popen(
        [sys.executable, "-m", "batchcrew.cli", *command],
        stdout=subprocess.PIPE,
        text=True,
        env={**environment, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()  # printed before any task is pushed
        found = re.search(r"dashboard at (http://127\.0\.0\.1:\d+/)", first)
        assert found, first
        lines = []
        for line in demo.stdout:  # the estimate and the summary, then the wait
            lines.append(line)
            if "the dashboard stays up 50 s more" in line:
                break
        assert any("pi ~ 3." in line for line in lines), lines
        state = httpx.get(found[1] + "state.json", timeout=10).json()  # still up after the run
        (crew,) = state["controllers"]
        counts = crew["counts"]
        assert (crew["name"], counts["success"], counts["unresolved"]) == ("demo", 20, 0)
        demo.send_signal(signal.SIGINT)  # Ctrl-C ends the wait; the controller closes
        assert demo.wait(timeout=30) == 130
    finally:
        demo.kill()
        demo.wait()


def test_the_demo_draws_its_timeline(tmp_path: Path) -> None:
    picture = tmp_path / "run.png"
    done = batchcrew("demo", "--tasks", "12", "--draws", "2000", "--timeline", str(picture))
    assert done.returncode == 0, done.stderr
    assert f"timeline drawn to {picture}" in done.stdout
    assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("run.txt", "needs a picture suffix: one of"),
        ("missing/run.png", "does not exist"),
    ],
)
def test_a_timeline_that_cannot_be_drawn_is_refused_before_the_run(
    tmp_path: Path, where: str, message: str
) -> None:
    done = batchcrew("demo", "--timeline", str(tmp_path / where))
    assert done.returncode == 2
    assert message in done.stdout
    assert "pi ~" not in done.stdout  # said before any task ran


def test_bad_demo_arguments_say_so() -> None:
    done = batchcrew("demo", "--tasks", "0")
    assert done.returncode == 2
    assert "--tasks must be at least 1" in done.stdout
    done = batchcrew("demo", "--dashboard", "--dashboard-seconds", "-1")
    assert done.returncode == 2
    assert "--dashboard-seconds must be 0 or more" in done.stdout


def test_a_worker_started_by_hand_without_settings_explains() -> None:
    done = batchcrew("worker")
    assert done.returncode == 2
    assert "BATCHCREW_CONTROLLER is not set" in done.stderr


def test_dockerfile_pins_this_python_batchcrew_and_the_packages_named() -> None:
    import platform

    import numpy

    import batchcrew as bc

    done = batchcrew("dockerfile", "--package", "numpy", "--package", "scikit-learn>=1.5")
    assert done.returncode == 0, done.stderr
    python = ".".join(platform.python_version_tuple()[:2])
    assert f"FROM python:{python}-slim" in done.stdout
    assert f'"batchcrew=={bc.__version__}"' in done.stdout
    assert f'"numpy=={numpy.__version__}"' in done.stdout
    assert '"scikit-learn>=1.5"' in done.stdout
    assert 'CMD ["python", "-m", "batchcrew.worker"]' in done.stdout
    missing = batchcrew("dockerfile", "--package", "no-such-package-here")
    assert missing.returncode == 2
    assert "is not installed here" in missing.stderr
