"""The worker image: a Dockerfile that matches the controller's Python and batchcrew versions.

A worker must run the controller's Python minor version and batchcrew version (the controller
refuses others), so the image is pinned to the environment it is generated in. A batchcrew
installed from a clone is in no package registry: its image context carries a wheel of it.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import cloudpickle
import zmq

from batchcrew import __version__
from batchcrew.errors import BatchcrewError

_PINNED = re.compile(r"[<>=!~@ ;\[]")
_WHEEL_NAME = re.compile(r"[A-Za-z0-9_.+-]+\.whl")
#: Where the Dockerfile of an image context copies the batchcrew wheel to.
_WHEEL_IN_IMAGE = "/tmp/"
#: How long `pip wheel` may take to build batchcrew's wheel.
_SECONDS_BUILD = 300


def worker_dockerfile(
    packages: Iterable[str] = (), *, base: str | None = None, wheel: str | None = None
) -> str:
    """A Dockerfile for AWS Batch workers of controllers running in this environment.

    It starts from `python:<major>.<minor>-slim` (or `base`), installs this batchcrew version
    and the exact pyzmq and cloudpickle versions here, and each of `packages` at the version
    installed here (a requirement with its own version, such as "numpy>=2", is kept as given).
    batchcrew comes from the package registry (`batchcrew==<version>`), or with `wheel` (a
    file name) from that wheel, copied from the build context: `worker_context()` writes one
    beside the Dockerfile, as a batchcrew installed from a clone needs.
    Raises ValueError for a package not installed here and given without a version, or a
    `wheel` that is not a wheel's file name.
    """
    if wheel is not None and not _WHEEL_NAME.fullmatch(wheel):
        raise ValueError(
            f"wheel must be the file name of a wheel in the build context, such as "
            f"'batchcrew-{__version__}-py3-none-any.whl', not {wheel!r}"
        )
    python = ".".join(platform.python_version_tuple()[:2])
    requirements = [f"pyzmq=={zmq.__version__}", f"cloudpickle=={cloudpickle.__version__}"]
    for package in packages:
        requirement = package.strip()
        if not requirement:
            continue
        if not _PINNED.search(requirement):
            try:
                requirement = f"{requirement}=={metadata.version(requirement)}"
            except metadata.PackageNotFoundError:
                raise ValueError(
                    f"package {requirement!r} is not installed here, so its version is not "
                    f"known: install it, or give a version yourself ({requirement}==1.2.3)"
                ) from None
        requirements.append(requirement)
    listed = " \\\n    ".join(f'"{requirement}"' for requirement in requirements)
    if wheel is None:
        made, copied, batchcrew = "`batchcrew dockerfile`", "", f'"batchcrew=={__version__}"'
    else:
        made = "`batchcrew dockerfile --context`"
        copied = (
            "# batchcrew is the wheel beside this file: no package registry has this one.\n"
            f"COPY {wheel} {_WHEEL_IN_IMAGE}\n"
        )
        batchcrew = f"{_WHEEL_IN_IMAGE}{wheel}"
    return f"""\
# A batchcrew worker image, made by {made} for controllers that run
# Python {platform.python_version()} and batchcrew {__version__}. Controllers refuse workers of
# another Python minor version or batchcrew version: rebuild it when either changes.
FROM {base or f"python:{python}-slim"}

# The worker needs only pyzmq and cloudpickle: --no-deps keeps the controller's own
# dependencies (polars, aiobotocore, ...) out of the image.
{copied}RUN pip install --no-cache-dir --no-deps {batchcrew} \\
 && pip install --no-cache-dir \\
    {listed}

# Your own code: pass Controller(modules=[your_module]) to send it with every task (no rebuild
# when it changes), or copy it in here, where it is imported like an installed module:
# COPY analysis.py /app/
WORKDIR /app

# The launcher gives every job this command and its BATCHCREW_* settings.
CMD ["python", "-m", "batchcrew.worker"]
"""


def worker_context(
    directory: str | os.PathLike[str], packages: Iterable[str] = (), *, base: str | None = None
) -> list[Path]:
    """Write the build context of a worker image to `directory` (made if missing): its
    Dockerfile, as `worker_dockerfile(packages, base=base)` writes it, and, for a batchcrew
    not installed from a package registry (a clone installed with `pip install -e .`, another
    directory, an archive, a VCS URL), a wheel of this batchcrew built from where it was
    installed from, which the Dockerfile copies in and installs. Build the image with
    `docker build DIRECTORY`.

    Returns the paths written, the Dockerfile first. Building the wheel runs `pip wheel`
    (seconds; blocking, so call it in a thread from async code). Raises ValueError as
    `worker_dockerfile()` does or for a `directory` that is a file, and `BatchcrewError` when
    the wheel cannot be built or its version is not this batchcrew's (a clone changed since
    it was installed).
    """
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"the image context {str(folder)!r} is a file, not a directory")
    source = _installed_source()
    if source is None:
        dockerfile = worker_dockerfile(packages, base=base)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "Dockerfile").write_text(dockerfile)
        return [folder / "Dockerfile"]
    wheel = f"batchcrew-{__version__.replace('-', '_')}-py3-none-any.whl"
    dockerfile = worker_dockerfile(packages, base=base, wheel=wheel)  # checks them first
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".batchcrew-wheel-") as built:
        _build_wheel(source, Path(built))
        made = [path.name for path in Path(built).glob("batchcrew-*.whl")]
        if made != [wheel]:
            raise BatchcrewError(
                f"the wheel built from {source.location} is {', '.join(made) or 'missing'}, not "
                f"{wheel}: "
                f"this environment runs batchcrew {__version__}, and its workers need that "
                f"version; install batchcrew again from {source.location}, or bring it back to "
                f"batchcrew {__version__}"
            )
        os.replace(Path(built) / wheel, folder / wheel)
    (folder / "Dockerfile").write_text(dockerfile)
    return [folder / "Dockerfile", folder / wheel]


@dataclass(frozen=True)
class _Source:
    """Where this batchcrew was installed from, when not from a package registry (PEP 610's
    direct_url.json): `kind` is "editable" (a clone, `pip install -e`), "directory",
    "archive", "vcs" or "source tree" (a clone on sys.path, not installed); `location` is
    what `pip wheel` builds it from (a directory, an archive's path or URL, "git+URL@commit")."""

    kind: str
    location: str

    def __str__(self) -> str:
        """What this batchcrew is, to follow "this batchcrew is ..." in a message."""
        if self.kind == "editable":
            return f"an editable install of {self.location}"
        if self.kind == "source tree":
            return f"the source tree {self.location}, not installed"
        what = {"vcs": "the repository"}.get(self.kind, f"the {self.kind}")
        return f"installed from {what} {self.location}"


def _installed_source() -> _Source | None:
    """Where the batchcrew that runs here was installed from, or None for an install from a
    package registry (no direct_url.json in its distribution's metadata)."""
    here = Path(__file__).resolve().parents[2]  # the folder that holds the batchcrew package
    for distribution in metadata.distributions(name="batchcrew"):
        source = _direct_url(distribution)
        if Path(str(distribution.locate_file(""))).resolve() == here:
            return source  # the installed copy that runs
        clone = source.location if source is not None and source.kind == "editable" else None
        if clone is not None and Path(clone).resolve() == here:
            return source  # a clone, installed editable
    if (here / "pyproject.toml").is_file():
        # A clone on sys.path runs (PYTHONPATH, the current folder), whatever is installed.
        return _Source("source tree", str(here))
    return None


def _direct_url(distribution: metadata.Distribution) -> _Source | None:
    """What a distribution's direct_url.json (PEP 610) says it was installed from."""
    text = distribution.read_text("direct_url.json")
    if not text:
        return None
    direct = json.loads(text)
    url = str(direct.get("url", ""))
    subdirectory = direct.get("subdirectory")
    if "vcs_info" in direct:
        vcs = direct["vcs_info"]
        location = f"{vcs.get('vcs', 'git')}+{url}"
        if vcs.get("commit_id"):
            location += f"@{vcs['commit_id']}"
        if subdirectory:
            location += f"#subdirectory={subdirectory}"
        return _Source("vcs", location)
    parts = urlsplit(url)
    location = url2pathname(parts.path) if parts.scheme == "file" else url
    if "dir_info" in direct:
        if subdirectory:
            location = os.path.join(location, subdirectory)
        editable = bool(direct["dir_info"].get("editable"))
        return _Source("editable" if editable else "directory", location)
    return _Source("archive", location)


def _build_wheel(source: _Source, folder: Path) -> None:
    """`pip wheel` of batchcrew alone from `source` into `folder`. The build backend
    (hatchling, as pyproject.toml declares) is used from this environment when it is here,
    which needs no network; else pip fetches it into an isolated build environment."""
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(folder)]
    if find_spec("hatchling") is not None:
        command.append("--no-build-isolation")
    try:
        done = subprocess.run(
            [*command, source.location],
            capture_output=True,
            text=True,
            timeout=_SECONDS_BUILD,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BatchcrewError(
            f"building a wheel of batchcrew from {source.location}: {error}"
        ) from error
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-5:]
        raise BatchcrewError(
            f"building a wheel of batchcrew from {source.location} failed (pip wheel exited "
            f"{done.returncode}): {' / '.join(said) or 'no output'}"
        )
