"""Seeded mutations of a file's bytes: what disks, transfers, proxies and people do to files.

Each mutation is a pure function of the bytes and a ``random.Random``; a case is therefore
reproduced exactly from its seed. Text files (JSON, CSV, MHD headers) also get edits that
keep them parseable but change a value to one a reader must refuse.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

EDGE_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
ODD_VALUES = ("-1", "0", "1e308", "-1e308", "NaN", "Infinity", "99999999999999999999",
              '"x"', "null", "[]", "{}", "true", "3.5", "")  # fmt: skip
_NUMBER = re.compile(rb"-?\d+(\.\d+)?([eE][-+]?\d+)?")


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def edge_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if out:
            out[rng.randrange(len(out))] = rng.choice(EDGE_BYTES)
    return bytes(out)


def overwrite_header(data: bytes, rng: random.Random) -> bytes:
    """Random bytes over part of the first 512 bytes, where formats keep their headers."""
    out = bytearray(data)
    start = rng.randrange(min(len(out), 512) or 1)
    for index in range(start, min(len(out), start + rng.randint(1, 32))):
        out[index] = rng.randrange(256)
    return bytes(out)


def overwrite_span(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    if out:
        start = rng.randrange(len(out))
        length = min(len(out) - start, rng.randint(1, 4096))
        out[start : start + length] = rng.randbytes(length)
    return bytes(out)


def insert_junk(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 256)) + data[at:]


def delete_span(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.randint(1, 1024) :]


def duplicate_span(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    start = rng.randrange(len(data))
    span = data[start : start + rng.randint(1, 1024)]
    at = rng.randrange(len(data) + 1)
    return data[:at] + span + data[at:]


def junk(data: bytes, rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice((0, 1, 7, 64, len(data))))


def odd_number(data: bytes, rng: random.Random) -> bytes:
    """One number in a text file replaced by a value a reader must not take at face value."""
    numbers = list(_NUMBER.finditer(data[:1_000_000]))
    if not numbers:
        return flip_bits(data, rng)
    match = rng.choice(numbers)
    return data[: match.start()] + rng.choice(ODD_VALUES).encode() + data[match.end() :]


def drop_text(data: bytes, rng: random.Random) -> bytes:
    """A line, a quote, a bracket or a comma removed from a text file."""
    marks = [i for i, byte in enumerate(data[:1_000_000]) if byte in b'"{}[],:\n='] or [0]
    at = rng.choice(marks)
    return data[:at] + data[at + 1 :]


BINARY: tuple[Callable[[bytes, random.Random], bytes], ...] = (
    truncate, flip_bits, edge_bytes, overwrite_header, overwrite_span, insert_junk,
    delete_span, duplicate_span, junk,
)  # fmt: skip
TEXT = (*BINARY, odd_number, odd_number, drop_text)


def mutate(data: bytes, rng: random.Random, text: bool) -> tuple[str, bytes]:
    """(the mutation's name, the mutated bytes); never the input unchanged."""
    for _ in range(10):
        mutation = rng.choice(TEXT if text else BINARY)
        mutated = mutation(data, rng)
        if mutated != data:
            return mutation.__name__, mutated
    return "append", data + b"\0"
