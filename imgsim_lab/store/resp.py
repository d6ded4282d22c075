"""Packing Redis commands ourselves: one ``b"".join`` per command.

Kept because a benchmark shows it matters: redis-py's packer copies every argument below
6 KB several times, and for batches of 5 KB vectors that halved ``imgsim bench store``
write throughput. Sending is left to redis-py connections (:mod:`.transport`).
"""

from __future__ import annotations

from collections.abc import Sequence


def pack(args: Sequence[bytes | str | int | float]) -> bytes:
    """One command in RESP2 wire format."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, int):
            b = b"%d" % a
        else:
            b = repr(a).encode()
        parts += (b"$%d\r\n" % len(b), b, b"\r\n")
    return b"".join(parts)
