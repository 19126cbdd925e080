"""Workers on another host: Linux network namespaces joined to the test's own by veth pairs.

A `Host` is a network namespace with one veth interface whose peer is in the test's namespace,
and a default route through it, so a worker inside reaches the controller as it would from a
Batch instance: over a real link, to a non-loopback address. `cut` partitions it, two ways:

- "link": its interface goes down. The kernel knows at once: its routes go, and a connection
  attempt fails with "Network is unreachable" (an instance losing its network interface);
- "drop": nftables in its namespace silently drops every packet, both ways. Nothing answers,
  nothing fails: only timeouts notice (a cloud network fault).

`heal` undoes either. Needs root, `ip` (iproute2) and, for "drop", `nft` (nftables); without
them `require_namespaces` skips the test, saying what is missing.
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import anyio
import pytest

import batchcrew as bc

Cut = Literal["link", "drop"]
_TABLE = "batchcrew_partition"


def require_namespaces(*, drops: bool = False) -> None:
    """Skip the calling test unless network namespaces can be made here (and, with `drops`,
    nftables rules set in them), saying why."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command: install iproute2 (`apt-get install iproute2`)")
    if drops and shutil.which("nft") is None:
        pytest.skip("no `nft` command: install nftables (`apt-get install nftables`)")


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")


@dataclass
class Host:
    """A network namespace joined to the test's by a veth pair, /30 between the two ends."""

    namespace: str
    outside: str  # the veth end in the test's namespace
    inside: str  # the veth end in `namespace`
    gateway: str  # the outside end's address, the inside's default route
    address: str  # the inside end's address

    @property
    def prefix(self) -> tuple[str, ...]:
        """What runs a command inside this host (`LocalLauncher(prefix=...)`)."""
        return ("ip", "netns", "exec", self.namespace)

    async def cut(self, how: Cut) -> None:
        """Partition this host from every other: its link down, or its packets dropped."""
        if how == "link":
            await self._ip("-n", self.namespace, "link", "set", self.inside, "down")
        else:
            await self._nft(f"add rule inet {_TABLE} input drop")
            await self._nft(f"add rule inet {_TABLE} output drop")

    async def heal(self) -> None:
        """End any partition: the link up with its default route, no packet dropped."""
        await self._ip("-n", self.namespace, "link", "set", self.inside, "up")
        await self._ip("-n", self.namespace, "route", "replace", "default", "via", self.gateway)
        if shutil.which("nft") is not None:
            await self._nft(f"flush chain inet {_TABLE} input")
            await self._nft(f"flush chain inet {_TABLE} output")

    async def run(self, *command: str) -> subprocess.CompletedProcess[bytes]:
        """Run `command` inside this host; return how it ended (it may fail)."""
        return await anyio.run_process([*self.prefix, *command], check=False)

    async def _ip(self, *arguments: str) -> None:
        await anyio.run_process(["ip", *arguments])

    async def _nft(self, rule: str) -> None:
        await anyio.run_process([*self.prefix, "nft", *rule.split()])


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.64.0.0/10 that no interface here uses (other tests may run at once)."""
    used = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True
    ).stdout
    while True:
        subnet = ipaddress.IPv4Network((random.randrange(0x0A400000, 0x0A800000, 4), 30))
        if f" {subnet[1]}/" not in used and f" {subnet[2]}/" not in used:
            return subnet


def _make_host() -> Host:
    tag = secrets.token_hex(4)
    subnet = _free_subnet()
    host = Host(
        namespace=f"batchcrew-{tag}",
        outside=f"bco{tag}",
        inside=f"bci{tag}",
        gateway=str(subnet[1]),
        address=str(subnet[2]),
    )
    try:
        _run("ip", "netns", "add", host.namespace)
    except RuntimeError as error:
        pytest.skip(f"cannot make a network namespace here: {error}")
    try:
        _run(*host.prefix, "true")  # `ip netns exec` needs to mount /sys: some containers refuse
        _run("ip", "link", "add", host.outside, "type", "veth", "peer", "name", host.inside)
        _run("ip", "link", "set", host.inside, "netns", host.namespace)
        _run("ip", "addr", "add", f"{host.gateway}/30", "dev", host.outside)
        _run("ip", "link", "set", host.outside, "up")
        _run("ip", "-n", host.namespace, "addr", "add", f"{host.address}/30", "dev", host.inside)
        _run("ip", "-n", host.namespace, "link", "set", host.inside, "up")
        _run("ip", "-n", host.namespace, "link", "set", "lo", "up")
        _run("ip", "-n", host.namespace, "route", "add", "default", "via", host.gateway)
        if shutil.which("nft") is not None:
            _run(*host.prefix, "nft", "add", "table", "inet", _TABLE)
            for chain in ("input", "output"):
                _run(
                    *host.prefix,
                    "nft",
                    f"add chain inet {_TABLE} {chain} "
                    f"{{ type filter hook {chain} priority 0 ; policy accept ; }}",
                )
    except RuntimeError as error:
        _remove_host(host)
        pytest.skip(f"cannot join a network namespace to this one here: {error}")
    except BaseException:
        _remove_host(host)
        raise
    return host


def _remove_host(host: Host) -> None:
    # Deleting the namespace deletes its end of the pair, which deletes the pair, and its
    # nftables table; the outside end is deleted too in case the pair was never moved in.
    subprocess.run(["ip", "netns", "delete", host.namespace], capture_output=True, timeout=30)
    subprocess.run(["ip", "link", "delete", host.outside], capture_output=True, timeout=30)


@contextmanager
def other_hosts(count: int) -> Iterator[list[Host]]:
    """`count` other hosts (network namespaces), removed on exit. Skips the test if they
    cannot be made here."""
    require_namespaces()
    made: list[Host] = []
    try:
        for _ in range(count):
            made.append(_make_host())
        yield made
    finally:
        for host in made:
            _remove_host(host)


class HostLauncher(bc.LocalLauncher):
    """Workers as local processes on another host: inside `host`'s network namespace.

    A plugin written against the public contract (the local launcher with a prefix). It is
    `remote`, as a launcher of workers on other machines is, so that the controller listens
    on an address they reach. `move_to` sends later launches to another host. `launched` and
    `exits` record when (`time.monotonic()`) each launch was asked for and each worker ended
    (with how: written-off workers' exits included); `ended` when the controller asked to end
    one. With `can_end=False` ending a worker fails, as TerminateJob does while AWS is out of
    reach: the worker must then leave by itself.
    """

    name = "netns"
    remote = True

    def __init__(self, host: Host, *, can_end: bool = True, **options: object) -> None:
        super().__init__(prefix=host.prefix, **options)  # type: ignore[arg-type]
        self.can_end = can_end
        self.launched: list[float] = []
        self.ended: list[float] = []
        self.exits: list[tuple[float, bc.WorkerExit]] = []

    def move_to(self, host: Host) -> None:
        self.prefix = host.prefix

    async def launch(self, request: bc.LaunchRequest) -> None:
        self.launched.append(time.monotonic())
        await super().launch(request)

    async def end_worker(self, launch: str, index: int, reason: str) -> None:
        self.ended.append(time.monotonic())
        if not self.can_end:
            raise ConnectionError("the launcher's API is out of reach")
        await super().end_worker(launch, index, reason)

    def report(self, exit: bc.WorkerExit) -> None:
        self.exits.append((time.monotonic(), exit))
        super().report(exit)
