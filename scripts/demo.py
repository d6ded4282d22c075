#!/usr/bin/env python
"""``make demo``: the main job.

Runs the default CIFAR-10 experiment when the experiment machinery is present;
otherwise a small end-to-end smoke of the embedded store.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import tempfile

import numpy as np

from imgsim_lab.log import setup_logging
from imgsim_lab.store import NewImage, open_store


def store_smoke() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"rocksdb:{tmp}/kv"
        rng = np.random.default_rng(0)
        vecs = rng.standard_normal((8, 16)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        with open_store(url, "demo") as store:
            store.register_model("demo", 16, "random")
            items = [NewImage(hashlib.sha256(f"demo{i}".encode()).hexdigest(), f"demo/{i}.jpg",
                              32, 32, label=f"class{i % 2}", embeddings={"demo": vecs[i]})
                     for i in range(8)]
            added = store.add_images(items)
            again = store.add_images(items[:3])
            ids, back = store.get_embeddings("demo", [r.id for r in added])
            assert np.array_equal(back, vecs)
            print(f"stored {sum(r.created for r in added)} vectors in {url}, "
                  f"re-adding 3 created {sum(r.created for r in again)} (duplicates skipped), "
                  f"read {len(ids)} back unchanged; store holds {store.info()}")
    return 0


def main() -> int:
    setup_logging("demo")
    try:
        from imgsim_lab.experiments import demo_main  # the CIFAR-10 experiment (notebooks issue)
    except ImportError:
        logging.getLogger("demo").info("experiment machinery not present: running the store smoke")
        return store_smoke()
    return demo_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
