"""The Sparkplug payload codec: every datatype round-trips; bad bytes give a clear error."""

from __future__ import annotations

import pytest

from uns.sparkplug import sparkplug_b_pb2 as pb
from uns.sparkplug.payload import DataType, Metric, Payload, PayloadError, decode, encode

CASES = [
    (DataType.INT8, -128),
    (DataType.INT16, -300),
    (DataType.INT32, -(2**31)),
    (DataType.INT64, -(2**63)),
    (DataType.UINT8, 255),
    (DataType.UINT16, 65535),
    (DataType.UINT32, 2**32 - 1),
    (DataType.UINT64, 2**64 - 1),
    (DataType.FLOAT, 1.5),
    (DataType.DOUBLE, 3.141592653589793),
    (DataType.BOOLEAN, True),
    (DataType.STRING, "FEED_HOLD"),
    (DataType.TEXT, "ü"),
    (DataType.DATETIME, 1_795_000_000_000),
    (DataType.BYTES, b"\x00\x01"),
    (DataType.INT32, None),
]


@pytest.mark.parametrize(("datatype", "value"), CASES)
def test_round_trip(datatype: DataType, value: object) -> None:
    metric = Metric("m", 7, 1_700_000_000_123, datatype, value, quality=192)  # type: ignore[arg-type]
    back = decode(encode(Payload(1_700_000_000_000, (metric,), seq=5)))
    assert back == Payload(1_700_000_000_000, (metric,), 5)


def test_data_without_datatype_keeps_the_raw_value() -> None:
    metric = Metric(None, 3, 1, DataType.INT32, -1)
    [back] = decode(encode(Payload(1, (metric,), 1), with_datatypes=False)).metrics
    assert back.datatype is None
    assert back.value == 2**32 - 1  # typed by the host from the birth


def test_field_numbers_match_the_sparkplug_specification() -> None:
    fields = {f.name: f.number for f in pb.SpbMetric.DESCRIPTOR.fields}
    assert fields == {
        "name": 1,
        "alias": 2,
        "timestamp": 3,
        "datatype": 4,
        "is_historical": 5,
        "is_transient": 6,
        "is_null": 7,
        "metadata": 8,
        "properties": 9,
        "int_value": 10,
        "long_value": 11,
        "float_value": 12,
        "double_value": 13,
        "boolean_value": 14,
        "string_value": 15,
        "bytes_value": 16,
    }
    assert {f.name: f.number for f in pb.SpbPayload.DESCRIPTOR.fields} == {
        "timestamp": 1,
        "metrics": 2,
        "seq": 3,
        "uuid": 4,
        "body": 5,
    }


def test_known_wire_bytes() -> None:
    # Payload{timestamp=1, seq=0, metrics=[{name="bdSeq", timestamp=1, datatype=Int64, long_value=3}]}
    wire = encode(Payload(1, (Metric("bdSeq", None, 1, DataType.INT64, 3),), seq=0))
    assert wire == bytes.fromhex("0801120d0a0562645365711801200458031800")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff\xff\xff", "not a Sparkplug B protobuf payload"),
        (pb.SpbPayload(seq=1).SerializeToString(), "payload has no timestamp"),
        (
            pb.SpbPayload(timestamp=1, metrics=[pb.SpbMetric(timestamp=1, int_value=1)]).SerializeToString(),
            "neither a name nor an alias",
        ),
        (
            pb.SpbPayload(timestamp=1, metrics=[pb.SpbMetric(name="x", int_value=1)]).SerializeToString(),
            "has no timestamp",
        ),
        (
            pb.SpbPayload(
                timestamp=1, metrics=[pb.SpbMetric(name="x", timestamp=1, datatype=99, int_value=1)]
            ).SerializeToString(),
            "unsupported datatype 99",
        ),
        (
            pb.SpbPayload(
                timestamp=1, metrics=[pb.SpbMetric(name="x", timestamp=1, datatype=12, int_value=1)]
            ).SerializeToString(),
            "datatype STRING but value 1",
        ),
        (  # the types taken as read (Double, String, Boolean) are checked all the same
            pb.SpbPayload(
                timestamp=1, metrics=[pb.SpbMetric(name="x", timestamp=1, datatype=10, string_value="1.5")]
            ).SerializeToString(),
            "datatype DOUBLE but value '1.5'",
        ),
        (
            pb.SpbPayload(
                timestamp=1, metrics=[pb.SpbMetric(name="x", timestamp=1, datatype=11, int_value=1)]
            ).SerializeToString(),
            "datatype BOOLEAN but value 1",
        ),
        (
            pb.SpbPayload(
                timestamp=1, metrics=[pb.SpbMetric(name="x", timestamp=1, datatype=12)]
            ).SerializeToString(),
            "carries no value and is not marked null",
        ),
    ],
)
def test_bad_payloads_name_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode(data)


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (Metric("x", None, 1, DataType.UINT8, 256), "256 out of range for UINT8"),
        (Metric("x", None, 1, DataType.INT32, "1"), "INT32 needs an int"),
        (Metric("x", None, 1, DataType.BOOLEAN, 1), "Boolean needs a bool"),
        (Metric("x", None, 1, None, 1), "no datatype"),
    ],
)
def test_values_that_do_not_fit_are_refused(metric: Metric, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        encode(Payload(1, (metric,), 0))
