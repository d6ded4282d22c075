"""Pure parts of the store: URLs, key schema, vector codec, record validation."""

import numpy as np
import pytest

from imgsim_lab.store import InvalidURLError, Keys, parse_url, redact_url
from imgsim_lab.store.errors import CorruptDataError, DimensionMismatchError
from imgsim_lab.store.schema import (
    NewImage,
    Record,
    added_ending,
    decode_vector,
    encode_vector,
    record_fields,
    record_json,
    record_json_ending,
)


def test_parse_urls():
    assert parse_url("rocksdb:data/kv") == ("rocksdb", "data/kv")
    assert parse_url("rocksdb:///tmp/x") == ("rocksdb", "/tmp/x")
    assert parse_url("redis://localhost:6666/0")[0] == "redis"
    assert parse_url("rediss://u:p@h:6666/1")[0] == "rediss"
    for bad in ["nothing", "mysql://h/db", "redis://:6666", "rocksdb:", "redis://h:notaport/0"]:
        with pytest.raises(InvalidURLError):
            parse_url(bad)


def test_redaction_never_shows_password():
    assert redact_url("redis://alice:s3cret@h:6666/0") == "redis://alice:***@h:6666/0"
    assert redact_url("redis://:s3cret@h:6666/0") == "redis://:***@h:6666/0"
    assert redact_url("redis://h:6666/0") == "redis://h:6666/0"
    with pytest.raises(InvalidURLError) as e:
        parse_url("mysql://bob:hunter2@h/0")
    assert "hunter2" not in str(e.value)


def test_keys_sort_by_id_and_share_a_hash_tag():
    k = Keys("imgsim")
    assert k.img(42) == "imgsim:img:{0000000000}42"
    assert k.emb("m", 42).endswith("{0000000000}42") and k.emb("m", 4217).endswith("{0000000042}17")
    assert sorted([k.emb("m", 10), k.emb("m", 9), k.emb("m", 100)]) == [
        k.emb("m", 9), k.emb("m", 10), k.emb("m", 100)]
    assert Keys.id_from_key(k.emb("m", 77).encode()) == 77
    with pytest.raises(ValueError):
        Keys("bad:ns")
    with pytest.raises(ValueError):
        Keys("a*")


def test_vector_codec_checks_dimension_and_values():
    v = np.arange(4, dtype=np.float32)
    data = encode_vector(v, 4, "m")
    assert len(data) == 16 and data[:4] == np.float32(0).tobytes()
    np.testing.assert_array_equal(decode_vector(data, 4, "m"), v)
    with pytest.raises(DimensionMismatchError):
        encode_vector(np.zeros(5, np.float32), 4, "m")
    with pytest.raises(ValueError):
        encode_vector(np.array([0, np.nan, 0, 0], np.float32), 4, "m")
    with pytest.raises(CorruptDataError):
        decode_vector(data[:-1], 4, "m")


def test_record_fields_are_validated():
    r = Record(1, "a" * 64, "x.jpg", 32, 32, None, 1.5)
    assert Record.from_fields(r.to_fields()) == r
    assert Record.from_json(r.to_json()) == r
    with pytest.raises(CorruptDataError):
        Record.from_fields({**r.to_fields(), "width": "-3"})
    with pytest.raises(CorruptDataError):
        Record.from_fields({"id": "1"})
    with pytest.raises(CorruptDataError):
        Record.from_json(b"\x80\x04not json")


def test_new_image_validation():
    with pytest.raises(ValueError, match="sha256"):
        NewImage("xyz", "s", 1, 1)
    with pytest.raises(ValueError, match="positive"):
        NewImage("a" * 64, "s", 0, 1)


def test_key_wire_templates_equal_the_declared_keys() -> None:
    """The bulk-write hot path packs keys from fixed-width templates: they must be the keys."""
    from imgsim_lab.store.resp import MAX_ID, KeyWire, bulk

    rng = np.random.default_rng(0)
    for ns in ("imgsim", "a.b-c_d+e", "x" * 64):
        k, w = Keys(ns), KeyWire(Keys(ns))
        for i in [1, 99, 100, 101, 12345, MAX_ID - 1, *rng.integers(1, MAX_ID, 50).tolist()]:
            assert w.img(i) == bulk(k.img(i).encode())
            model = "efficientnet_lite0+mlp_cos"
            assert w.emb(model, i) == bulk(k.emb(model, i).encode())
        sha = "ab" * 32
        assert w.sha(sha) == bulk(k.sha(sha).encode())
        for bad in (0, -1, MAX_ID):
            with pytest.raises(ValueError, match="out of range"):
                w.img(bad)


def test_gc_paused_restores_the_collector_even_on_error():
    import gc

    from imgsim_lab.store.base import gc_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()  # a caller that turned it off keeps it off
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_record_command_equals_the_generic_packing():
    from imgsim_lab.store.base import EncodedImage
    from imgsim_lab.store.redis_store import record_command
    from imgsim_lab.store.resp import KeyWire, pack
    from imgsim_lab.store.scripts import SCRIPTS

    k = Keys("ns")
    a = NewImage("a" * 64, "x/a.png", 32, 24, label="cat", path="/data/a.png")
    b = NewImage("b" * 64, "b 100%.jpg", 7, 9)  # a '%' in a value; label and path unset
    va, vb, vb2 = b"\x00" * 16, b"\x01" * 16, b"\x02" * 8
    block = [(123, EncodedImage(a.sha256, a.record_values(), (("m", va),)), [("m", va)]),
             (124, EncodedImage(b.sha256, b.record_values(), ()), [("m", vb), ("m+ad", vb2)])]
    keys = [k.img(123), k.emb("m", 123), k.img(124), k.emb("m", 124), k.emb("m+ad", 124)]
    args: list = [2]
    for rid, item, vecs in block:
        rec = item.record(rid, 1.5)
        assert Record.from_json(rec.to_json()) == rec
        args += [rid, len(vecs), *(d for _, d in vecs), rec.to_json()]
    want = pack(["EVALSHA", SCRIPTS["record"][1], len(keys), *keys, *args])
    assert record_command(KeyWire(k), block, 1.5) == want


def test_record_json_is_one_encoding_for_every_backend():
    """The record value: compact JSON, id first and added last, floats exact, None kept."""
    a = NewImage("a" * 64, 'x/"a".png', 32, 24, label="cat")
    data = record_json(7, a.record_values(), 0.1 + 0.2)
    assert data == (b'{"id":7,"sha256":"' + b"a" * 64 + b'","source":"x/\\"a\\".png","width":32,'
                    b'"height":24,"label":"cat","path":null,"added":0.30000000000000004}')
    assert Record.from_json(data) == Record(7, a.sha256, 'x/"a".png', 32, 24, "cat", 0.1 + 0.2)
    assert Record.from_json(data).to_json() == data
    assert record_fields(data)["source"] == 'x/"a".png'
    assert record_fields({b"id": b"7", b"sha256": b"a" * 64}) == {"id": "7", "sha256": "a" * 64}
    assert record_fields(b"\x80 not json") == {"_raw": b"\x80 not json"}
    assert record_fields(b"[1]") == {"_raw": b"[1]"} and record_fields(None) is None


@pytest.mark.parametrize("text", ["plain", 'q"uote\\back', "ünïcödé ☃ 𝄞", "tab\tnl\n\x00", "", "100%d"])
def test_record_json_equals_json_dumps(text):
    import json

    values = {"sha256": "f" * 64, "source": text, "width": 3, "height": 10**6, "label": None, "path": text}
    want = json.dumps({"id": 12, **values, "added": 1.0 / 3}, separators=(",", ":")).encode()
    assert record_json(12, values, 1.0 / 3) == want
    # the bulk-write path formats the ending once per batch: the same bytes
    assert record_json_ending(12, values, added_ending(1.0 / 3)) == want
    with pytest.raises(ValueError, match="not finite"):
        record_json(1, values, float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        added_ending(float("inf"))


def test_chunk_rows_caps_a_chunk_at_chunk_bytes():
    from imgsim_lab.store.schema import CHUNK_BYTES, chunk_rows

    assert chunk_rows(8192, 1280) == CHUNK_BYTES // 5120 == 3276  # 16 MB of 1280-d vectors
    assert chunk_rows(1000, 1280) == 1000 and chunk_rows(16384, 8) == 16384
    assert chunk_rows(10, 10**9) == 1  # never zero
    assert chunk_rows(8192, 1280) * 1280 * 4 <= CHUNK_BYTES


def test_ids_from_many_keys_at_once():
    k = Keys("ns")
    ids = [1, 99, 100, 12345, 10**11 - 1]
    keys = [k.emb("m", i).encode() for i in ids]
    assert Keys.ids_from_keys(keys).tolist() == ids  # one width: vectorized
    assert Keys.ids_from_keys([k.img(5).encode(), k.emb("model2", 6).encode()]).tolist() == [5, 6]
    assert Keys.ids_from_keys([]).tolist() == []
    for bad in ([k.emb("m", 3).encode()[:-1] + b"x"], [b"ns:emb:m:{000000000}00"],
                [k.emb("m", 1).encode(), b"ns:emb:m:{0000000000}0x"]):
        with pytest.raises(CorruptDataError):
            Keys.ids_from_keys(bad)


def test_many_embedding_keys_equal_one_by_one():
    k = Keys("ns")
    ids = [1, 99, 100, 4217, 10**12 - 1]
    assert k.emb_keys("m+a", np.array(ids)) == [k.emb("m+a", i).encode() for i in ids]
    assert k.emb_keys("m", []) == []
