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
    assert re.search(r"success +│ 20 ", done.stdout)
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


def test_dockerfile_on_a_clone_asks_for_an_image_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import batchcrew as bc
    from batchcrew.cli import main

    clone = Path(bc.__file__).resolve().parents[1]  # the tests run from a clone, installed -e
    assert main(["dockerfile", "--package", "numpy"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"batchcrew: error: this batchcrew is an editable install of {clone}, and no package "
        f"registry has it, so an image cannot pip install batchcrew=={bc.__version__}: pass "
        "--context DIR to write DIR/Dockerfile with a wheel of this batchcrew beside it, then "
        "run docker build DIR\n"
    )


def test_dockerfile_context_refusals_come_before_the_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchcrew.cli import main

    image = tmp_path / "image"
    assert main(["dockerfile", "--context", str(image), "--package", "no-such-package"]) == 2
    assert "is not installed here" in capsys.readouterr().err
    assert not image.exists()  # nothing built, nothing written

    (tmp_path / "file").write_text("")
    assert main(["dockerfile", "--context", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == (
        f"batchcrew: error: the image context {str(tmp_path / 'file')!r} is a file, not a "
        "directory\n"
    )


@pytest.mark.timeout(20)
def test_dockerfile_context_writes_the_dockerfile_and_the_wheel(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import batchcrew as bc
    from batchcrew.cli import main

    image = tmp_path / "image"
    assert main(["dockerfile", "--context", str(image)]) == 0
    wheel = f"batchcrew-{bc.__version__}-py3-none-any.whl"
    assert capsys.readouterr().out == (
        f"wrote {image / 'Dockerfile'} and {image / wheel}; build the image with: docker "
        f"build -t IMAGE {image}\n"
    )
    assert sorted(path.name for path in image.iterdir()) == ["Dockerfile", wheel]
    assert f"COPY {wheel} /tmp/" in (image / "Dockerfile").read_text()
