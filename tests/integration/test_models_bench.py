"""``imgsim bench embed`` end to end on JPEG files."""

from __future__ import annotations

import json

import pytest

from imgsim_lab.cli import main
from imgsim_lab.models import available_models


@pytest.mark.parametrize("model,size", [
    ("pixels", None),
    pytest.param("efficientnet_lite0", 64, marks=pytest.mark.skipif(
        "efficientnet_lite0" not in available_models(offline_only=True), reason="no weights")),
])
def test_bench_embed_json(model, size, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["bench", "embed", "--model", model, "--n", "32", "--batch-size", "16", "--rounds", "2",
            "--json", str(out)]
    if size:
        argv += ["--size", str(size)]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["n"] == 32 and r["model"]["name"] == model
    assert r["forward_images_per_s"] > 0 and r["end_to_end_images_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["end_to_end_images_per_s"] / r["forward_images_per_s"],
                                       rel=0.02, abs=1e-3)
    assert r["min_cosine_forward_vs_end_to_end"] > 0.9999
    if model == "pixels":  # no torch network to compare with
        assert "torch_forward_images_per_s" not in r
    else:  # the default backend and torch eager, same inputs, same run
        assert r["model"]["backend"] == "onnxruntime" and r["torch_forward_images_per_s"] > 0
        assert r["forward_speedup_vs_torch"] == pytest.approx(
            r["forward_images_per_s"] / r["torch_forward_images_per_s"], rel=0.02)
        assert r["min_cosine_vs_torch"] >= 0.9999
    assert json.loads(capsys.readouterr().out)["n"] == 32


def test_generated_images_when_no_zip(tmp_path):
    from imgsim_lab.bench.embed import write_images

    paths, source = write_images(tmp_path, 5, None)
    assert source == "generated" and len(paths) == 5 and all(p.stat().st_size for p in paths)


def test_worker_processes_match_threads(tmp_path):
    import numpy as np
    from PIL import Image

    from imgsim_lab.models import get_model
    from imgsim_lab.pipeline import ProcessEmbedder, embed_all

    paths = []
    for i in range(10):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (i * 20, 255 - i * 20, 7 * i)).save(p)
        paths.append((i, str(p)))
    m = get_model("color_hist")
    keys, ref, _ = embed_all(m, paths, batch_size=4)
    with ProcessEmbedder(m, processes=2) as pe:
        got = list(pe.stream(paths + [(99, b"junk")], batch_size=4))
    assert [k for b in got for k in b.keys] == keys == list(range(10))
    assert [k for b in got for k, _ in b.failed] == [99]
    np.testing.assert_allclose(np.concatenate([b.vectors for b in got]), ref, atol=1e-6)
