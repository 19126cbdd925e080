"""Throughput and round-trip latency of batchcrew against other task frameworks, in one run.

    python benchmarks/peers.py [--tasks 10000] [--latency 500] [--repeats 2] [--only ray dask]

Each system gets 2 worker processes on this machine: batchcrew (CURVE on and off), the plain
pyzmq loop of benchmarks/core.py, ProcessPoolExecutor, Ray, Parsl's HighThroughputExecutor and a
Dask LocalCluster. Each measurement runs in a fresh interpreter, in an order rotated between
rounds; each figure is the median of --repeats rounds, and ratios compare medians of this run.
A framework that is not installed (`pip install -e ".[bench]"`) gets a row that says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.metadata
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cloudpickle
import core
import psutil
from core import WORKERS, Figures, _latency
from rich.console import Console
from rich.table import Table

# core's runs send core.noop: by value, as for a script's own function, so that workers need
# not import benchmarks/core.py.
cloudpickle.register_pickle_by_value(core)

WARM_UP = 400  # tasks run before measuring, so that every worker is up and connected


def noop(_: object = None) -> None:
    """The peers' task; defined in this script, so their workers too get it by value."""
    return None


# -- Ray ---------------------------------------------------------------------------------------


def ray_run(tasks: int, latency: int) -> Figures:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report sent home
    import ray

    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as session_dir:
        ray.init(
            num_cpus=WORKERS,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            _node_ip_address="127.0.0.1",
            _temp_dir=session_dir,  # its logs and sockets, rather than /tmp/ray for good
        )
        try:
            remote = ray.remote(noop)
            ray.get([remote.remote(i) for i in range(WARM_UP)])
            start = time.perf_counter()
            ray.get([remote.remote(i) for i in range(tasks)])
            throughput = tasks / (time.perf_counter() - start)
            samples = []
            for _ in range(latency):
                start = time.perf_counter()
                ray.get(remote.remote())
                samples.append(time.perf_counter() - start)
        finally:
            ray.shutdown()
    return Figures(throughput, *_latency(samples))


# -- Parsl -------------------------------------------------------------------------------------


def parsl_run(tasks: int, latency: int) -> Figures:
    import parsl
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as run_dir:
        # The worker pool is killed at shutdown, before multiprocessing can remove its own
        # temporary directory: have it made in the run directory, which goes.
        provider = LocalProvider(
            init_blocks=1, min_blocks=1, max_blocks=1, worker_init=f"export TMPDIR={run_dir}"
        )
        executor = HighThroughputExecutor(
            max_workers_per_node=WORKERS, address="127.0.0.1", provider=provider
        )
        config = Config(
            executors=[executor], run_dir=run_dir, initialize_logging=False, usage_tracking=0
        )
        with parsl.load(config) as dfk:
            app = parsl.python_app(noop, data_flow_kernel=dfk)
            for future in [app(i) for i in range(WARM_UP)]:
                future.result()
            start = time.perf_counter()
            for future in [app(i) for i in range(tasks)]:
                future.result()
            throughput = tasks / (time.perf_counter() - start)
            samples = []
            for _ in range(latency):
                start = time.perf_counter()
                app().result()
                samples.append(time.perf_counter() - start)
    return Figures(throughput, *_latency(samples))


# -- Dask --------------------------------------------------------------------------------------


def dask_run(tasks: int, latency: int) -> Figures:
    import dask
    from distributed import Client, LocalCluster

    with (
        tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as scratch,
        dask.config.set({"temporary-directory": scratch}),  # not /tmp/dask-scratch-space
    ):
        cluster = LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        # pure=False: every call is a task of its own, never answered from an earlier result.
        with cluster, Client(cluster) as client:
            client.gather(client.map(noop, range(WARM_UP), pure=False))
            start = time.perf_counter()
            client.gather(client.map(noop, range(tasks), pure=False))
            throughput = tasks / (time.perf_counter() - start)
            samples = []
            for _ in range(latency):
                start = time.perf_counter()
                client.submit(noop, pure=False).result()
                samples.append(time.perf_counter() - start)
    return Figures(throughput, *_latency(samples))


# -- running each system in a fresh interpreter ------------------------------------------------


@dataclass(frozen=True)
class System:
    label: str
    run: Callable[[int, int], Figures | Coroutine[Any, Any, Figures]]
    package: str | None = None  # what must be installed, if not batchcrew's own dependencies
    target: float | None = None  # batchcrew's tasks/s over this system's, at least

    def installed(self) -> bool:
        return self.package is None or importlib.util.find_spec(self.package) is not None

    def title(self) -> str:
        if self.package is None or not self.installed():
            return self.label
        return f"{self.label} {importlib.metadata.version(self.package)}"


SYSTEMS = {
    "batchcrew-curve": System(
        'batchcrew, security="curve"', lambda n, m: core.batchcrew_run(n, m, "curve")
    ),
    "batchcrew-none": System(
        'batchcrew, security="none"', lambda n, m: core.batchcrew_run(n, m, "none")
    ),
    "zmq": System(
        f"plain zmq loop, {core.PIPELINE} in flight",
        lambda n, m: core.plain_run(n, m, core.PIPELINE),
    ),
    "pool": System(f"ProcessPoolExecutor({WORKERS})", core.pool_run),
    "ray": System("Ray", ray_run, "ray", target=4),
    "parsl": System("Parsl HighThroughputExecutor", parsl_run, "parsl", target=6),
    "dask": System("Dask LocalCluster", dask_run, "distributed", target=10),
}
BASELINE = "batchcrew-curve"


def measure(key: str, tasks: int, latency: int) -> Figures:
    """Run one system's measurement in this process (the child's side)."""
    outcome = SYSTEMS[key].run(tasks, latency)
    return outcome if isinstance(outcome, Figures) else asyncio.run(outcome)


def measure_in_child(key: str, tasks: int, latency: int) -> Figures:
    """Run one system's measurement in a fresh interpreter and return its figures.

    Raises RuntimeError if the child fails or runs past a generous deadline.
    """
    seconds_max = 60 + tasks / 50 + latency / 5
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "figures.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--measure", key]
        command += ["--out", str(out), "--tasks", str(tasks), "--latency", str(latency)]
        try:
            code = subprocess.run(command, timeout=seconds_max).returncode
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"timed out after {seconds_max:.0f} s") from None
        if code != 0:
            raise RuntimeError(f"failed with exit code {code}")
        return Figures(**json.loads(out.read_text()))


def adopt_orphans() -> None:
    """On Linux, become a child subreaper: a process that a framework detaches and leaves behind
    is then re-parented to this one, where `end_leftovers` sees it, rather than to init."""
    if sys.platform == "linux":
        pr_set_child_subreaper = 36
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def end_leftovers(seconds_grace: float = 10.0) -> list[str]:
    """Give this process's descendants `seconds_grace` to exit; kill and name the rest."""
    descendants = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(descendants, timeout=seconds_grace)
    names = []
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            names.append(f"{process.name()} (pid {process.pid})")
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    return names


# -- the table ---------------------------------------------------------------------------------


def median(rounds: list[Figures]) -> Figures:
    return Figures(
        statistics.median(f.throughput for f in rounds),
        statistics.median(f.median for f in rounds),
        statistics.median(f.p99 for f in rounds),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--latency", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--only", nargs="+", choices=SYSTEMS, metavar="SYSTEM", help=", ".join(SYSTEMS)
    )
    parser.add_argument("--measure", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    n, m, r = args.tasks, args.latency, args.repeats
    if args.measure is not None:  # a child: one system, once
        args.out.write_text(json.dumps(asdict(measure(args.measure, n, m))))
        return

    adopt_orphans()
    progress = Console(stderr=True)
    chosen = args.only or list(SYSTEMS)
    chosen = [key for key in SYSTEMS if key in chosen]
    runnable = [key for key in chosen if SYSTEMS[key].installed()]
    rounds: dict[str, list[Figures]] = {key: [] for key in runnable}
    failures: dict[str, str] = {}
    leftovers: list[str] = []
    for index in range(r):
        # Each round starts further along the list, so that no system always runs first.
        shift = index * len(runnable) // r
        for key in runnable[shift:] + runnable[:shift]:
            if key in failures:
                continue
            progress.print(f"round {index + 1} of {r}: {SYSTEMS[key].title()}", style="dim")
            try:
                rounds[key].append(measure_in_child(key, n, m))
            except RuntimeError as error:
                failures[key] = str(error)
            finally:  # on Ctrl-C too
                leftovers += [f"{key}: {name}" for name in end_leftovers()]

    figures = {key: median(rounds[key]) for key in runnable if key not in failures}
    baseline = figures.get(BASELINE)
    table = Table(
        title=f"{n:,} no-op tasks at once on {WORKERS} workers; round trip over {m:,} single "
        f"tasks; medians of {r} rounds"
    )
    columns = ("", "tasks/s", "RTT median", "RTT p99", "batchcrew ÷ this", "target")
    for column in columns:
        table.add_column(column, justify="left" if not column else "right")
    for key in chosen:
        system = SYSTEMS[key]
        target = f">= {system.target:g}x" if system.target else ""
        if key not in runnable:
            table.add_row(system.title(), "not installed", "-", "-", "-", target)
        elif key in failures:
            table.add_row(system.title(), failures[key], "-", "-", "-", target)
        else:
            row = figures[key]
            ratio = "-"
            if baseline is not None:
                ratio = f"{baseline.throughput / row.throughput:.2f}x"
                if system.target:
                    met = baseline.throughput >= system.target * row.throughput
                    target += ", met" if met else ", missed"
            table.add_row(
                system.title(),
                f"{row.throughput:,.0f}",
                f"{row.median * 1e6:,.0f} us",
                f"{row.p99 * 1e6:,.0f} us",
                ratio,
                target,
            )
    console = Console(width=130)
    console.print(table)
    console.print("batchcrew ÷ this: the tasks/s of batchcrew with CURVE over this row's")
    console.print(
        "processes left behind: " + ("; ".join(leftovers) if leftovers else "none"),
        markup=False,
    )


if __name__ == "__main__":
    main()
