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
        protocol.Busy(12, rss=2**30, cpu=1.5),
        protocol.Everywhere(3, b"fn", b"args"),
        protocol.Ran(3, 0.5),
        protocol.Ran(3, 0.5, "OSError: disk full", "Traceback..."),
        protocol.Idle(),
        protocol.Stay(),
        protocol.Busy(12, rss=2**30, cpu=1.5, tail="epoch 3: loss 0.25 ✓"),
        protocol.Output(12, b"line one\nline \xff two"),
        protocol.Task(7, b"fn", b"args", (b"buffer",)),
        protocol.Task(7, b"fn", b"args", timeout=2.5),
        protocol.Task(7, b"fn", b"args", seed=2**127),
        protocol.Outcome(8, "success", 0.25, value=b"value", buffers=(b"b1", b"b2")),
        protocol.Outcome(8, "success", 0.25, value=b"v", memory=2**31, rss=2**30, cpu=0.5),
        protocol.Outcome(9, "error", 1.5, "ValueError: no", "Traceback...", ("UserWarning: w",)),
        protocol.Outcome(10, "success", 0.1, value=b"v", output=b"printed\n\xff"),
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


def header(
    kind: int, version: int = protocol.VERSION, magic: bytes = b"bc", extra: int = 0
) -> bytes:
    return struct.pack(">2sBBHQ", magic, version, kind, extra, 0)


def frame(kind: int, body: bytes = b"", **header_fields: int | bytes) -> bytes:
    return header(kind, **header_fields) + body  # type: ignore[arg-type]


def result_meta(details: bytes) -> bytes:
    return struct.pack(">BdBIQQd", 0, 0.0, 0, len(details), 0, 0, 0.0) + details


def task_body(meta: bytes = b"", layout: int = 0, function: bytes = b"fn") -> bytes:
    inline = struct.pack(">I", len(function)) + function + b"args" if layout == 0 else b""
    return struct.pack(">BI", layout, len(meta)) + meta + inline


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "empty message"),
        ([b"short"], "first frame of 5 bytes"),
        ([frame(1, b"{}", magic=b"xx")], "bad magic"),
        ([frame(1, b"{}", version=1)], "protocol version 1"),
        ([frame(99)], "unknown message kind 99"),
        ([frame(10, b"\x00")], "task metadata is truncated"),
        ([frame(10, task_body(b'{"timeout": -1}'))], "timeout -1 is not a positive"),
        ([frame(10, task_body(b'{"timeout": true}'))], "timeout True is not a positive"),
        ([frame(10, task_body(b'{"timeout": "1"}'))], "'timeout'"),
        ([frame(10, task_body(b'{"timeout": NaN}'))], "timeout nan is not a positive"),
        ([frame(10, task_body(b'{"seed": -1}'))], "seed -1 is not a whole number"),
        ([frame(10, task_body(b'{"seed": 1.5}'))], "'seed'"),
        ([frame(10, task_body(function=b"function")[:-7])], "task function is truncated"),
        ([frame(10, task_body()[:-8])], "task function length is truncated"),
        ([frame(10, task_body(layout=1))], "neither inline nor apart"),
        ([frame(10, task_body(layout=7), extra=2), b"fn", b"args"], "neither inline nor apart"),
        ([frame(2, b"\x00")], "result metadata is truncated"),
        ([frame(2, struct.pack(">BdBIQQd", 7, 0.0, 0, 0, 0, 0, 0.0))], "status code"),
        ([frame(2, struct.pack(">BdBIQQd", 0, 0.0, 0, 9, 0, 0, 0.0))], "result metadata is trunc"),
        ([frame(2, struct.pack(">BdBIQQd", 0, 0.0, 1, 0, 0, 0, 0.0))], "neither inline nor apart"),
        ([frame(1, b"not json")], "not JSON"),
        ([frame(1, b"[1]")], "not a JSON object"),
        ([frame(1, b'{"pid": "x", "host": "h"}')], "'pid'"),
        ([frame(1, b'{"pid": 1, "host": "h", "python": 3}')], "'python'"),
        ([frame(4, b'{"error": 1, "trace": null}')], "'error'"),
        ([frame(13, extra=1), b"initializer"], "setup message needs"),
        ([frame(3, b"{}", extra=2), b"x"], "announces 2 more frames than it has"),
        ([frame(3, b'{"reason": "r"}', extra=1), b"x"], "BYE message has frames it should"),
        ([frame(3, b'{"reason": "r", "end": 1}')], "'end' is not a boolean"),
        ([frame(12, b'{"why": "r"}')], "'reason'"),
        ([frame(5, b"{}")], "a busy message's body is at least 16 bytes, not 2"),
        (
            [frame(2, result_meta(b'{"error": null, "trace": null, "warnings": [], "output": 5}'))],
            "result output of 5 bytes is not there",
        ),
        (
            [frame(2, result_meta(b'{"error": null, "trace": null, "warnings": [], "output": 0}'))],
            "result output of 0 bytes is not there",
        ),
    ],
)
def test_malformed_frames_raise_protocol_error(frames: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol.decode(frames)


def test_several_messages_travel_in_one_and_large_parts_apart() -> None:
    big = b"x" * 100_000
    messages: list[protocol.Message] = [
        protocol.Task(1, b"fn", b"args", timeout=1.0),
        protocol.Task(2, big, b"args", (b"buffer",)),
        protocol.Outcome(1, "success", 0.1, value=big),
        protocol.Cancel(2, "cancelled"),
    ]
    frames = [bytes(f) for message in messages for f in protocol.encode(message)]
    assert len(protocol.encode(messages[0])) == 1  # small: one frame
    assert len(protocol.encode(messages[1])) == 4  # the function and arguments apart
    assert len(protocol.encode(messages[2])) == 2  # the value apart
    assert protocol.decode_all(frames) == messages
    with pytest.raises(ProtocolError, match="4 messages where one was expected"):
        protocol.decode(frames)
    with pytest.raises(ProtocolError):
        protocol.decode_all(frames[:4] + frames[5:])  # one frame lost spoils them all


@settings(max_examples=500, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.binary(max_size=200),
    st.binary(max_size=100_000),
    st.text(max_size=100),
)
def test_output_round_trips_as_written(
    task_id: int, output: bytes, value: bytes, tail: str
) -> None:
    """A task's output travels byte for byte, whatever it holds, beside a value of any size
    (inline or apart), and so does a relayed part or a busy message's last line."""
    outcome = protocol.Outcome(task_id, "success", 0.5, value=value, output=output)
    assert roundtrip(outcome) == outcome
    assert roundtrip(protocol.Output(task_id, output)) == protocol.Output(task_id, output)
    busy = protocol.Busy(task_id, 1, 2.0, tail)
    assert roundtrip(busy) == busy


def test_a_future_version_says_what_to_do() -> None:
    with pytest.raises(ProtocolError, match="run the same batchcrew version"):
        protocol.decode([frame(2, version=protocol.VERSION + 1)])


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
    for extra in (0, len(body), len(body) + 1):
        first = struct.pack(">2sBBHQ", b"bc", protocol.VERSION, kind, extra, task_id)
        for frames in ([first, *body], [first + meta, *body], [first + meta]):
            with contextlib.suppress(ProtocolError):
                protocol.decode_all(frames)
        for layout in (0, 1, 2):
            for frames in (
                [first + struct.pack(">BI", layout, len(meta)) + meta, *body],
                [
                    first + struct.pack(">BdBIQQd", 0, 1.0, layout, len(meta), 1, 1, 1.0) + meta,
                    *body,
                ],
            ):
                with contextlib.suppress(ProtocolError):
                    protocol.decode_all(frames)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=9, max_size=200))
def test_fuzzed_result_metadata_raises_only_protocol_error(meta: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        protocol.decode([frame(protocol.Kind.RESULT, meta)])


# -- reusing a by-value pickle -----------------------------------------------------------------


def _script(source: str) -> dict[str, object]:
    """Run `source` as a script's top level would (its functions travel by value)."""
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(source, namespace)
    return namespace


def _inputs(function: object) -> tuple[object, ...]:
    found = protocol.by_value_inputs(function)
    assert found is not None
    return found


def test_a_plain_script_function_can_reuse_its_pickle_until_a_global_it_names_changes() -> None:
    found = _script(
        "import math\n"
        "LIMIT = 3\n"
        "def below(x, scale=2.0):\n"
        "    return [math.sqrt(v) for v in range(x)] if x * scale < LIMIT else len([])\n"
    )
    below = found["below"]
    before = _inputs(below)
    assert protocol.same_inputs(before, _inputs(below))
    found["LIMIT"] = 4
    assert not protocol.same_inputs(before, _inputs(below))
    again = _inputs(below)
    found["len"] = 0  # shadows the builtin it named
    assert not protocol.same_inputs(again, _inputs(below))


def test_a_global_named_only_in_nested_code_counts_too() -> None:
    found = _script("SCALE = 2\ndef f(xs):\n    return list(map(lambda v: v * SCALE, xs))\n")
    before = _inputs(found["f"])
    found["SCALE"] = 3
    assert not protocol.same_inputs(before, _inputs(found["f"]))


def test_annotations_of_classes_and_text_count_and_a_change_in_place_is_seen() -> None:
    for source in (
        "def f(x: int = 1, *, k: str = 'a') -> float:\n    return x\n",
        "from __future__ import annotations\ndef f(x: object = None) -> None:\n    return None\n",
    ):
        f = _script(source)["f"]
        before = _inputs(f)
        assert protocol.same_inputs(before, _inputs(f))
        f.__annotations__["x"] = bytes  # type: ignore[attr-defined]
        assert not protocol.same_inputs(before, _inputs(f))


def test_a_keyword_default_changed_in_place_is_seen() -> None:
    f = _script("def f(*, k=1):\n    return k\n")["f"]
    before = _inputs(f)
    f.__kwdefaults__["k"] = 2  # type: ignore[attr-defined]
    assert not protocol.same_inputs(before, _inputs(f))


@pytest.mark.parametrize(
    "source",
    [
        "DATA = [1]\ndef f():\n    return DATA[0]\n",  # a global that can change in place
        "def g():\n    return 1\ndef f():\n    return g()\n",  # a function that travels by value
        "def f(x=[]):\n    return x\n",  # a default that can change in place
        "def outer():\n    y = 1\n    def f():\n        return y\n    return f\nf = outer()\n",
        "def f():\n    return 1\nf.tag = 'x'\n",  # attributes travel with it
        # Annotations set as objects (this file's source has them as text): one that can change
        # in place, and a class that travels by value.
        "def f(x):\n    return x\nf.__annotations__['x'] = [int]\n",
        "class Local: pass\ndef f(x):\n    return x\nf.__annotations__['x'] = Local\n",
        "import types\nm = types.ModuleType('m')\ndef f():\n    return m\n",  # not importable
    ],
)
def test_a_function_whose_pickle_could_change_in_place_is_pickled_every_time(
    source: str,
) -> None:
    assert protocol.by_value_inputs(_script(source)["f"]) is None


def test_only_plain_functions_are_considered() -> None:
    assert protocol.by_value_inputs(len) is None
    assert protocol.by_value_inputs(contextlib.suppress) is None


@pytest.mark.parametrize("value", [None, True, 7, 2.5, 1j, "made in __main__", b"\x00" * 100_000])
def test_plain_values_pickle_in_band_and_come_back_equal(value: object) -> None:
    data, buffers = protocol.dump_value(value)
    assert buffers == []
    assert protocol.load(data) == value


def test_no_arguments_pickle_to_empty_args_and_kwargs() -> None:
    data, buffers = protocol.dump_arguments((), {})
    assert buffers == []
    assert protocol.load(data) == ((), {})
