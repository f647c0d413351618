"""A minimal reader of the protocol-buffers wire format, for reading a few small fields of a large
message (an ONNX model's tensor names, a SavedModel's signatures) without parsing the rest.

Protocol buffers encode a message as a sequence of (tag, value) records; a tag is a varint
`field_number << 3 | wire_type`, and a length-delimited value (strings, bytes, sub-messages)
starts with its length (https://protobuf.dev/programming-guides/encoding/). So a reader can step
over a field it does not need, e.g. an initializer's `raw_data`, by its length alone: over an
mmap'ed file those pages are never read. No schema (descriptor) is needed, only field numbers,
which the callers take from the .proto files they cite.
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


class WireError(ValueError):
    """The bytes are not a well-formed protocol-buffers message (truncated, or an unknown wire type)."""


def varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode the varint at `buf[pos:]`.

    Returns:
        (value, position after it); value as an unsigned integer (up to 64 bits).

    Raises:
        WireError: the varint runs past the end of `buf` or is longer than 10 bytes.
    """
    result, shift, n = 0, 0, len(buf)
    while True:
        if pos >= n or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def signed64(value: int) -> int:
    """A varint read as protobuf's int64 (two's complement: -1 is 2**64 - 1 on the wire)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def fields(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, object]]:
    """Iterate over the records of the message `buf[start:end]`.

    Yields:
        (field number, wire type, value): an int for VARINT, FIXED64 and FIXED32 records, and
        (offset, length) into `buf` for LENGTH records (strings, bytes, sub-messages, packed
        repeated fields), so that a caller reads only the values it wants.

    Raises:
        WireError: a record is truncated, runs past `end`, or uses groups (not in proto3 files).
    """
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        tag = buf[pos]  # one-byte tags and lengths (fields 1-15, values under 128 bytes) are the common case
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            value, pos = varint(buf, pos)
        elif wire == LENGTH:
            length = buf[pos] if pos < end else 0x80
            if length < 0x80:
                pos += 1
            else:
                length, pos = varint(buf, pos)
            value = (pos, length)
            pos += length
        elif wire == FIXED64:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == FIXED32:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise WireError(f"unsupported wire type {wire} (field {number})")
        if pos > end or number == 0:
            raise WireError("record runs past the end of its message" if number else "field number 0")
        yield number, wire, value


def text(buf: bytes | memoryview, span: tuple[int, int]) -> str:
    """The UTF-8 string at (offset, length) in `buf` (invalid bytes replaced, never raised)."""
    offset, length = span
    return bytes(buf[offset:offset + length]).decode("utf-8", errors="replace")


def packed_varints(buf: bytes | memoryview, span: tuple[int, int]) -> list[int]:
    """The varints of a packed repeated field at (offset, length)."""
    pos, end, out = span[0], span[0] + span[1], []
    while pos < end:
        value, pos = varint(buf, pos)
        out.append(value)
    return out
