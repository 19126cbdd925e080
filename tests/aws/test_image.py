"""The worker image from this clone: `aws.worker_context()` (and `batchcrew dockerfile
--context`) writes a Dockerfile and a wheel of this batchcrew, whose install works offline; a
batchcrew installed from a package registry still gets the Dockerfile that pins its version.
No Docker engine here: the Dockerfile's install command is run in a fresh virtual environment.
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import cloudpickle
import numpy
import pytest
import zmq

import batchcrew
from batchcrew import aws

WHEEL = f"batchcrew-{batchcrew.__version__}-py3-none-any.whl"
#: This clone: the folder that holds the batchcrew package the tests import.
CLONE = Path(batchcrew.__file__).resolve().parents[1]


def run(
    *command: str | Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=15,
        cwd=cwd,  # never this clone: `python -m` would import batchcrew from the folder it is in
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """An image context written from this clone (one wheel build for the module's tests)."""
    folder = tmp_path_factory.mktemp("image") / "context"  # made by worker_context
    return folder, aws.worker_context(folder, ["numpy", "scikit-learn>=1.5"])


def fresh_venv(where: Path) -> Path:
    """A new virtual environment without pip (this one's pip installs into it); its python."""
    done = run(sys.executable, "-m", "venv", "--without-pip", where / "venv", cwd=where)
    assert done.returncode == 0, done.stderr
    return where / "venv" / "bin" / "python"


def pip_into(python: Path, *arguments: str, cwd: Path) -> None:
    done = run(sys.executable, "-m", "pip", "--python", python, *arguments, cwd=cwd)
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(20)
def test_a_context_from_this_clone_holds_a_dockerfile_and_a_wheel_of_this_batchcrew(
    context: tuple[Path, list[Path]],
) -> None:
    folder, written = context
    assert written == [folder / "Dockerfile", folder / WHEEL]
    assert sorted(path.name for path in folder.iterdir()) == ["Dockerfile", WHEEL]  # no leftovers
    with zipfile.ZipFile(folder / WHEEL) as wheel:
        metadata = wheel.read(f"batchcrew-{batchcrew.__version__}.dist-info/METADATA").decode()
        names = wheel.namelist()
    assert f"\nVersion: {batchcrew.__version__}\n" in metadata
    assert "batchcrew/worker.py" in names
    assert not [name for name in names if "__pycache__" in name or name.startswith("tests/")]

    dockerfile = (folder / "Dockerfile").read_text()
    python = ".".join(platform.python_version_tuple()[:2])
    assert f"FROM python:{python}-slim\n" in dockerfile
    assert f"\nCOPY {WHEEL} /tmp/\n" in dockerfile
    assert f"RUN pip install --no-cache-dir --no-deps /tmp/{WHEEL} \\\n" in dockerfile
    assert "batchcrew==" not in dockerfile  # no package registry has this batchcrew
    for pinned in (
        f'"pyzmq=={zmq.__version__}"',
        f'"cloudpickle=={cloudpickle.__version__}"',
        f'"numpy=={numpy.__version__}"',
        '"scikit-learn>=1.5"',
    ):
        assert pinned in dockerfile
    assert dockerfile.rstrip().endswith('CMD ["python", "-m", "batchcrew.worker"]')


@pytest.mark.timeout(20)
def test_the_dockerfiles_batchcrew_install_works_offline(
    context: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    folder, _ = context
    dockerfile = (folder / "Dockerfile").read_text()
    # COPY puts the wheel in /tmp/; the RUN line's first command installs it.
    (copy,) = [line.split()[1:] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    assert copy == [WHEEL, "/tmp/"]
    (run_line,) = [line for line in dockerfile.splitlines() if line.startswith("RUN ")]
    command = shlex.split(run_line.removeprefix("RUN ").split("&&")[0].rstrip(" \\"))
    assert command == ["pip", "install", "--no-cache-dir", "--no-deps", f"/tmp/{WHEEL}"]
    install = [str(folder / WHEEL) if part == f"/tmp/{WHEEL}" else part for part in command[2:]]

    python = fresh_venv(tmp_path)
    pip_into(python, "install", "--no-index", *install, cwd=tmp_path)  # offline: the wheel only

    found = run(
        python,
        "-c",
        "import importlib.metadata as m; print(m.version('batchcrew')); "
        "print('batchcrew/worker.py' in {str(f) for f in m.files('batchcrew')})",
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [batchcrew.__version__, "True"]


@pytest.mark.timeout(20)
def test_a_batchcrew_from_a_package_registry_keeps_its_version_pinned(
    context: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    folder, _ = context
    python = fresh_venv(tmp_path)
    # Found through an index (the context as --find-links), as a registry install is: pip
    # writes no direct_url.json for it.
    pip_into(
        python,
        "install",
        "--no-index",
        "--no-deps",
        "--find-links",
        folder,
        "batchcrew",
        cwd=tmp_path,
    )
    # Its dependencies (rich, zmq, ...) from this environment; batchcrew from the new one.
    environment = {"PYTHONPATH": sysconfig.get_paths()["purelib"], "PATH": "/usr/bin:/bin"}

    def dockerfile(*arguments: str | Path) -> subprocess.CompletedProcess[str]:
        command = (python, "-m", "batchcrew.cli", "dockerfile", *arguments)
        return run(*command, cwd=tmp_path, env=environment)

    done = dockerfile("--package", "numpy")
    assert done.returncode == 0, done.stderr
    assert f'RUN pip install --no-cache-dir --no-deps "batchcrew=={batchcrew.__version__}"' in (
        done.stdout
    )
    assert f'"numpy=={numpy.__version__}"' in done.stdout
    assert "\nCOPY " not in done.stdout

    context_here = tmp_path / "registry-context"
    done = dockerfile("--context", context_here)
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in context_here.iterdir()) == ["Dockerfile"]  # no wheel
    assert f'"batchcrew=={batchcrew.__version__}"' in (context_here / "Dockerfile").read_text()


def test_worker_dockerfile_pins_this_batchcrew_and_the_packages_named() -> None:
    dockerfile = aws.worker_dockerfile(["numpy", "scikit-learn>=1.5"])
    python = ".".join(platform.python_version_tuple()[:2])
    assert f"FROM python:{python}-slim" in dockerfile
    assert f'"batchcrew=={batchcrew.__version__}"' in dockerfile
    assert f'"numpy=={numpy.__version__}"' in dockerfile
    assert '"scikit-learn>=1.5"' in dockerfile
    with pytest.raises(ValueError, match="is not installed here"):
        aws.worker_dockerfile(["no-such-package-here"])
    with pytest.raises(ValueError, match="wheel must be the file name of a wheel"):
        aws.worker_dockerfile(wheel="../batchcrew.whl")
