"""CURVE keys and the ZAP handler that admits only the workers a controller launched.

The controller makes a fresh server key pair per start and a client key pair per launch. Its
ZAP handler (RFC 27, served on the controller's own event loop) admits a connection only if the
client key is one it issued and has not retired; the launch id becomes the connection's
User-Id, which the dispatcher checks against the identity the worker claims.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import cast

import zmq
from zmq.utils import z85

logger = logging.getLogger("batchcrew")

_ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_REFUSALS_LOGGED = 20  # refused handshakes logged at WARNING; the rest at DEBUG


@dataclass
class Keys:
    """The server key pair of one controller start and the client keys issued per launch."""

    server_public: bytes
    server_secret: bytes
    _clients: dict[bytes, str] = field(default_factory=dict)  # public key -> launch
    _launches: dict[str, bytes] = field(default_factory=dict)  # launch -> public key

    @classmethod
    def generate(cls) -> Keys:
        """A fresh server key pair."""
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    def issue(self, launch: str) -> dict[str, str]:
        """Make a client key pair for `launch`; return the worker environment that carries it."""
        public, secret = zmq.curve_keypair()
        self._clients[public] = launch
        self._launches[launch] = public
        return {
            "BATCHCREW_SERVER_KEY": self.server_public.decode(),
            "BATCHCREW_PUBLIC_KEY": public.decode(),
            "BATCHCREW_SECRET_KEY": secret.decode(),
        }

    def readmit(self, launch: str, public: bytes) -> None:
        """Admit again the key issued to `launch` by an earlier run (from its journal)."""
        self._clients[public] = launch
        self._launches[launch] = public

    def retire(self, launch: str) -> None:
        """Refuse `launch`'s key from now on (its workers are gone)."""
        public = self._launches.pop(launch, None)
        if public is not None:
            self._clients.pop(public, None)

    def admit(self, public_key: bytes) -> str | None:
        """The launch a client key (Z85) was issued for, or None if it is not admitted."""
        return self._clients.get(public_key)


class ZapHandler:
    """Answers libzmq's authentication requests from the controller's loop, without blocking."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], keys: Keys) -> None:
        self._keys = keys
        self._socket = context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(_ZAP_ENDPOINT)
        self.refused = 0
        """Handshakes refused because the client's key was not admitted."""

    def fileno(self) -> int:
        """The descriptor that signals when requests may be waiting."""
        return cast(int, self._socket.getsockopt(zmq.FD))

    def serve(self) -> None:
        """Answer every waiting request."""
        while True:
            try:
                request = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._socket.send_multipart(self._answer(request))

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            return [b"1.0", b"", b"500", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]
        if mechanism == b"CURVE" and len(credentials) == 1:
            launch = self._keys.admit(z85.encode(credentials[0]))
            if launch is not None:
                return [version, request_id, b"200", b"OK", launch.encode(), b""]
        # Counted, and logged at WARNING only for the first few: a flood of refused
        # handshakes neither fills the log nor grows any state.
        self.refused += 1
        level = logging.WARNING if self.refused <= _REFUSALS_LOGGED else logging.DEBUG
        logger.log(
            level,
            "refused a %s connection from %s: its key was not issued by this controller, "
            "or it was retired%s",
            mechanism.decode(errors="replace") or "plain",
            address.decode(errors="replace"),
            f" (refusal {_REFUSALS_LOGGED}: further ones are counted and logged at DEBUG)"
            if self.refused == _REFUSALS_LOGGED
            else "",
        )
        return [version, request_id, b"400", b"key not admitted", b"", b""]

    def close(self) -> None:
        """Stop answering (libzmq then refuses every handshake)."""
        self._socket.close(0)
