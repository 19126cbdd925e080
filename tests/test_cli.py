"""The `batchcrew` command, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_bad_demo_arguments_say_so() -> None:
    done = batchcrew("demo", "--tasks", "0")
    assert done.returncode == 2
    assert "--tasks must be at least 1" in done.stdout


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
