"""The wire protocol: every message round-trips, and anything malformed raises ProtocolError."""

from __future__ import annotations

import contextlib
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcrew import protocol
from batchcrew.errors import BatchcrewError, ProtocolError


def roundtrip(message: protocol.Message) -> protocol.Message:
    return protocol.decode([bytes(frame) for frame in protocol.encode(message)])


def test_every_message_kind_round_trips() -> None:
    messages: list[protocol.Message] = [
        protocol.Hello(pid=42, host="node-1", python="3.11.7", batchcrew="0.2.0", cloudpickle="3"),
        protocol.Ready(),
        protocol.Ready(error="ValueError: no", trace="Traceback..."),
        protocol.Setup(b"initializer", b"initargs"),
        protocol.Bye(reason="idle"),
        protocol.Bye(reason="a task would not stop", end=True),
        protocol.Stop(reason="closing"),
        protocol.Cancel(12, reason="cancelled"),
        protocol.Task(7, b"fn", b"args", (b"buffer",)),
        protocol.Task(7, b"fn", b"args", timeout=2.5),
        protocol.Task(7, b"fn", b"args", seed=2**127),
        protocol.Outcome(8, "success", 0.25, value=b"value", buffers=(b"b1", b"b2")),
        protocol.Outcome(9, "error", 1.5, "ValueError: no", "Traceback...", ("UserWarning: w",)),
    ]
    for message in messages:
        assert roundtrip(message) == message


def test_large_arrays_travel_as_separate_uncopied_frames() -> None:
    array = np.arange(1_000_000, dtype=np.float64)
    data, buffers = protocol.dump_arguments((array,), {"scale": 2})
    assert len(data) < 1000  # the array is not inside the pickle stream
    assert [buffer.nbytes for buffer in buffers] == [array.nbytes]
    assert np.shares_memory(np.frombuffer(buffers[0], dtype=np.float64), array)
    args, kwargs = protocol.load(data, buffers)
    np.testing.assert_array_equal(args[0], array)
    assert kwargs == {"scale": 2}


def test_lambdas_and_closures_pickle_by_value() -> None:
    offset = 10
    function = protocol.load(protocol.dump_function(lambda x: x + offset))
    assert function(1) == 11
    value, buffers = protocol.dump_value(lambda: "made on a worker")
    assert protocol.load(value, buffers)() == "made on a worker"


def test_the_error_types_belong_to_the_library_hierarchy() -> None:
    assert issubclass(ProtocolError, BatchcrewError)


def header(kind: int, version: int = protocol.VERSION, magic: bytes = b"bc") -> bytes:
    return struct.pack(">2sBBQ", magic, version, kind, 0)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "empty message"),
        ([b"short"], "header frame of 5 bytes"),
        ([header(1, magic=b"xx"), b"{}"], "bad magic"),
        ([header(1, version=1), b"{}"], "protocol version 1"),
        ([header(99)], "unknown message kind 99"),
        ([header(10), b"", b"fn"], "task message needs"),
        ([header(10), b'{"timeout": -1}', b"fn", b"args"], "timeout -1 is not a positive"),
        ([header(10), b'{"timeout": true}', b"fn", b"args"], "timeout True is not a positive"),
        ([header(10), b'{"timeout": "1"}', b"fn", b"args"], "'timeout'"),
        ([header(10), b'{"timeout": NaN}', b"fn", b"args"], "timeout nan is not a positive"),
        ([header(2), b"\x00", b""], "result metadata is truncated"),
        ([header(2), struct.pack(">Bd", 7, 0.0), b""], "status code"),
        ([header(1), b"not json"], "not JSON"),
        ([header(1), b"[1]"], "not a JSON object"),
        ([header(1), b'{"pid": "x", "host": "h"}'], "'pid'"),
        ([header(1), b'{"pid": 1, "host": "h", "python": 3}'], "'python'"),
        ([header(4), b'{"error": 1, "trace": null}'], "'error'"),
        ([header(13), b"initializer"], "setup message needs"),
        ([header(10), b'{"seed": -1}', b"fn", b"args"], "seed -1 is not a whole number"),
        ([header(10), b'{"seed": 1.5}', b"fn", b"args"], "'seed'"),
        ([header(3)], "exactly one metadata frame"),
        ([header(3), b'{"reason": "r", "end": 1}'], "'end' is not a boolean"),
        ([header(12), b'{"why": "r"}'], "'reason'"),
    ],
)
def test_malformed_frames_raise_protocol_error(frames: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol.decode(frames)


def test_a_future_version_says_what_to_do() -> None:
    header = struct.pack(">2sBBQ", b"bc", protocol.VERSION + 1, 2, 0)
    with pytest.raises(ProtocolError, match="run the same batchcrew version"):
        protocol.decode([header, b"", b""])


def _kinds() -> st.SearchStrategy[int]:
    return st.sampled_from([kind.value for kind in protocol.Kind] + [0, 4, 13, 255])


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_fuzzed_frames_raise_only_protocol_error(frames: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):
        protocol.decode(frames)


@settings(max_examples=2000, deadline=None)
@given(
    _kinds(),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.lists(st.binary(max_size=48), max_size=5),
    st.sampled_from(
        [
            b"",
            b"{}",
            b'{"pid": 1, "host": "h"}',
            b'{"reason": 3}',
            b'{"timeout": 1e309}',
            b'{"seed": 18446744073709551616, "timeout": 1}',
            b'{"error": null, "trace": null}',
        ]
    ),
)
def test_fuzzed_bodies_behind_a_valid_header_raise_only_protocol_error(
    kind: int, task_id: int, body: list[bytes], meta: bytes
) -> None:
    header = struct.pack(">2sBBQ", b"bc", protocol.VERSION, kind, task_id)
    for frames in ([header, *body], [header, meta, *body], [header, meta]):
        with contextlib.suppress(ProtocolError):
            protocol.decode(frames)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=9, max_size=200))
def test_fuzzed_result_metadata_raises_only_protocol_error(meta: bytes) -> None:
    header = struct.pack(">2sBBQ", b"bc", protocol.VERSION, protocol.Kind.RESULT, 1)
    with contextlib.suppress(ProtocolError):
        protocol.decode([header, meta, b""])
