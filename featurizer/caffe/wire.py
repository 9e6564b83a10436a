"""The protobuf wire format, read without generated code (https://protobuf.dev/programming-guides/encoding/).

A ``.caffemodel`` is one serialised ``NetParameter`` message. Reading the handful of fields the
converter needs straight off the wire keeps Caffe, ``protoc`` output and pickle out of the
project: a message is a sequence of ``(tag, value)`` records, the tag a varint
``field_number << 3 | wire_type``, the value a varint (type 0), 8 bytes (1), a length-prefixed
byte string (2: strings, sub-messages, packed repeated numbers) or 4 bytes (5).

Repeated ``float`` fields may be written packed (one length-delimited record, what Caffe's
``[packed = true]`` declares) or one 5-byte record per value (older writers, and any writer may
choose either: parsers must accept both). A run of unpacked records of one field is returned as
one chunk so a 37-million-value fc6 blob costs a few numpy operations, not a Python loop.

Every inconsistency (a record running past the end of its message, a bad varint, an unknown
wire type) raises :class:`WireFormatError` with the byte offset; callers add the layer name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

VARINT, FIXED64, LENGTH_DELIMITED, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
_FIXED_WIDTH = {FIXED32: 4, FIXED64: 8}
_MAX_VARINT_BYTES = 10
# Unpacked runs are checked in windows that double in size: a run of two blobs_lr floats costs
# two tiny comparisons, a 37 M-value blob ~25 of them.
_FIRST_RUN_WINDOW = 64


class WireFormatError(ValueError):
    """The bytes are not a well-formed protobuf message (truncated or corrupt)."""


class TruncatedError(WireFormatError):
    """A length-delimited record runs past the end: ``partial`` is what the file does hold of
    field ``number`` (enough, usually, to read a truncated layer's name)."""

    def __init__(self, message: str, number: int, partial: memoryview) -> None:
        super().__init__(message)
        self.number = number
        self.partial = partial


@dataclass(frozen=True)
class Field:
    """One record of a message, or a run of consecutive fixed-width records of one field.

    ``value``: an int (varint), a memoryview (length-delimited) or, for fixed-width records,
    the raw little-endian bytes of ``count`` consecutive values (``count * 4`` or ``* 8``).
    """

    number: int
    wire_type: int
    value: int | memoryview
    count: int = 1


def read_varint(data: memoryview, pos: int) -> tuple[int, int]:
    """The varint starting at ``pos`` and the position after it."""
    result = shift = 0
    for index in range(pos, min(pos + _MAX_VARINT_BYTES, len(data))):
        byte = data[index]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, index + 1
        shift += 7
    if pos + _MAX_VARINT_BYTES > len(data):
        raise WireFormatError(f"truncated varint at byte {pos}")
    raise WireFormatError(f"varint longer than {_MAX_VARINT_BYTES} bytes at byte {pos}")


def fields(data: memoryview | bytes, offset: int = 0) -> Iterator[Field]:
    """The records of one message in order. ``offset``: where ``data`` starts in the file
    (only for error messages)."""
    view = memoryview(data)
    pos, end = 0, len(view)
    while pos < end:
        start = pos
        tag, pos = read_varint(view, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireFormatError(f"field number 0 at byte {offset + start}")
        if wire_type == VARINT:
            value, pos = read_varint(view, pos)
            yield Field(number, wire_type, value)
        elif wire_type == LENGTH_DELIMITED:
            length, pos = read_varint(view, pos)
            if pos + length > end:
                raise TruncatedError(
                    f"truncated: field {number} at byte {offset + start} declares {length} bytes, "
                    f"only {end - pos} remain",
                    number,
                    view[pos:end],
                )
            yield Field(number, wire_type, view[pos : pos + length])
            pos += length
        elif wire_type in _FIXED_WIDTH:
            width, tag_size = _FIXED_WIDTH[wire_type], pos - start
            if pos + width > end:
                raise WireFormatError(f"truncated: field {number} at byte {offset + start}")
            count = _run_length(view, start, tag_size, width)
            payload = _run_payload(view, start, tag_size, width, count)
            yield Field(number, wire_type, payload, count)
            pos = start + count * (tag_size + width)
        else:  # groups (3, 4) are deprecated and never used by Caffe; 6, 7 do not exist
            raise WireFormatError(
                f"unsupported wire type {wire_type} (field {number}) at byte {offset + start}"
            )


def _run_length(view: memoryview, start: int, tag_size: int, width: int) -> int:
    """How many records of ``tag_size + width`` bytes from ``start`` repeat the same tag."""
    record = tag_size + width
    available = (len(view) - start) // record
    if available <= 1:
        return available
    tag = np.frombuffer(view[start : start + tag_size], np.uint8)
    checked, window = 1, _FIRST_RUN_WINDOW
    while checked < available:
        stop = min(available, checked + window)
        block = np.frombuffer(view[start + checked * record : start + stop * record], np.uint8)
        same = (block.reshape(-1, record)[:, :tag_size] == tag).all(axis=1)
        if not same.all():
            return checked + int(np.argmin(same))
        checked, window = stop, window * 2
    return available


def _run_payload(view: memoryview, start: int, tag_size: int, width: int, count: int) -> memoryview:
    if count == 1:
        return view[start + tag_size : start + tag_size + width]
    record = tag_size + width
    block = np.frombuffer(view[start : start + count * record], np.uint8).reshape(count, record)
    return memoryview(np.ascontiguousarray(block[:, tag_size:]).reshape(-1))


def floats(field: Field, dtype: str) -> np.ndarray:
    """The numbers of a repeated float (``"<f4"``) or double (``"<f8"``) field record."""
    size = np.dtype(dtype).itemsize
    expected = {4: FIXED32, 8: FIXED64}[size]
    if field.wire_type not in (expected, LENGTH_DELIMITED):
        raise WireFormatError(f"field {field.number}: wire type {field.wire_type} is not {dtype}")
    payload = field.value
    assert isinstance(payload, memoryview)
    if len(payload) % size:
        raise WireFormatError(
            f"field {field.number}: packed length {len(payload)} is not a multiple of {size}"
        )
    return np.frombuffer(payload, dtype)


def varints(field: Field) -> list[int]:
    """The numbers of a repeated integer field record (packed or not)."""
    if field.wire_type == VARINT:
        assert isinstance(field.value, int)
        return [field.value]
    if field.wire_type != LENGTH_DELIMITED:
        raise WireFormatError(f"field {field.number}: wire type {field.wire_type} is no integer")
    payload = field.value
    assert isinstance(payload, memoryview)
    values, pos = [], 0
    while pos < len(payload):
        value, pos = read_varint(payload, pos)
        values.append(value)
    return values


def text(field: Field) -> str:
    """A string field (UTF-8)."""
    if field.wire_type != LENGTH_DELIMITED:
        raise WireFormatError(f"field {field.number}: wire type {field.wire_type} is no string")
    assert isinstance(field.value, memoryview)
    return bytes(field.value).decode("utf-8", errors="replace")
