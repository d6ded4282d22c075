"""Packing Redis commands ourselves: one ``b"".join`` per command.

Kept because a benchmark shows it matters: redis-py's packer copies every argument below
6 KB several times, and for batches of 5 KB vectors that halved ``imgsim bench store``
write throughput. Sending is left to redis-py connections (:mod:`.transport`).
"""

from __future__ import annotations

from collections.abc import Sequence

from imgsim_lab.store.schema import BLOCK, BLOCK_DIGITS, ID_WIDTH, Keys

#: Ids have ID_WIDTH digits at most (the key templates are fixed-width).
MAX_ID = 10**ID_WIDTH


def _arg(a: bytes | str | int | float) -> bytes:
    if isinstance(a, bytes):
        return a
    if isinstance(a, str):
        return a.encode()
    if isinstance(a, int):
        return b"%d" % a
    return repr(a).encode()


def pack(args: Sequence[bytes | str | int | float]) -> bytes:
    """One command in RESP2 wire format (one join, no per-argument copies)."""
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for a in args:
        b = a if type(a) is bytes else _arg(a)
        append(b"$%d\r\n" % len(b))
        append(b)
        append(b"\r\n")
    return b"".join(parts)


def bulk(b: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(b), b)


def command(count: int, parts: Sequence[bytes]) -> bytes:
    """A command of ``count`` arguments whose bulk strings are already in ``parts``."""
    return b"".join([b"*%d\r\n" % count, *parts])  # one copy of the (vector-sized) parts


class KeyWire:
    """RESP bulk strings of one namespace's record, claim and embedding keys, from fixed-width
    templates: the hot path of bulk writes (equal to :class:`~.schema.Keys`, checked in tests)."""

    def __init__(self, keys: Keys) -> None:
        self._keys = keys
        self._sha = b"$%d\r\n%b" % (len(keys.sha("0" * 64)), keys.sha("").encode())
        self._img = self._template(keys.img(0), keys.img_prefix)
        self._emb: dict[str, bytes] = {}

    @staticmethod
    def _template(sample: str, prefix: str) -> bytes:
        tail = f"{{%0{ID_WIDTH - BLOCK_DIGITS}d}}%0{BLOCK_DIGITS}d\r\n".encode()
        return b"$%d\r\n" % len(sample) + prefix.encode().replace(b"%", b"%%") + tail

    def sha(self, sha256: str) -> bytes:
        return b"%b%b\r\n" % (self._sha, sha256.encode())

    def img(self, image_id: int) -> bytes:
        if not 0 < image_id < MAX_ID:
            raise ValueError(f"image id {image_id} out of range")
        return self._img % divmod(image_id, BLOCK)

    def emb(self, model: str, image_id: int) -> bytes:
        tpl = self._emb.get(model)
        if tpl is None:
            tpl = self._emb[model] = self._template(self._keys.emb(model, 0), self._keys.emb_prefix(model))
        if not 0 < image_id < MAX_ID:
            raise ValueError(f"image id {image_id} out of range")
        return tpl % divmod(image_id, BLOCK)
