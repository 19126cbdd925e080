"""The worker image: a Dockerfile that matches the controller's Python and batchcrew versions.

A worker must run the controller's Python minor version and batchcrew version (the controller
refuses others), so the image is pinned to the environment it is generated in.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable
from importlib import metadata

import cloudpickle
import zmq

from batchcrew import __version__

_PINNED = re.compile(r"[<>=!~@ ;\[]")


def worker_dockerfile(packages: Iterable[str] = (), *, base: str | None = None) -> str:
    """A Dockerfile for AWS Batch workers of controllers running in this environment.

    It starts from `python:<major>.<minor>-slim` (or `base`), installs this batchcrew version
    and the exact pyzmq and cloudpickle versions here, and each of `packages` at the version
    installed here (a requirement with its own version, such as "numpy>=2", is kept as given).
    Raises ValueError for a package not installed here and given without a version.
    """
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
    return f"""\
# A batchcrew worker image, made by `batchcrew dockerfile` for controllers that run
# Python {platform.python_version()} and batchcrew {__version__}. Controllers refuse workers of
# another Python minor version or batchcrew version: rebuild it when either changes.
FROM {base or f"python:{python}-slim"}

# The worker needs only pyzmq and cloudpickle: --no-deps keeps the controller's own
# dependencies (polars, aiobotocore, ...) out of the image.
RUN pip install --no-cache-dir --no-deps "batchcrew=={__version__}" \\
 && pip install --no-cache-dir \\
    {listed}

# Your own code: pass Controller(modules=[your_module]) to send it with every task (no rebuild
# when it changes), or copy it in here, where it is imported like an installed module:
# COPY analysis.py /app/
WORKDIR /app

# The launcher gives every job this command and its BATCHCREW_* settings.
CMD ["python", "-m", "batchcrew.worker"]
"""
