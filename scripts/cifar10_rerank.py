"""Query expansion (αQE) and database-side augmentation (DBA) on saved CIFAR-10 embeddings.

Reads an ``.npz`` with ``db``, ``db_y``, ``q``, ``q_y`` (e.g. written by
``scripts/cifar10_finetune.py --save-embeddings``) and ranks the 10k test queries
against the 50k training database for each setting of a grid; writes the metrics as JSON.
Several ``--emb`` files (of the same images, in the same order) are concatenated first, with
equal weights, as the ``concat`` derived model does (``adapters.transforms``). DBA uses
the database only, and αQE expands each query with its own results: no query
label, and no other query, is ever used.

    python scripts/cifar10_rerank.py --emb emb.npz --json docs/results/issue18/rerank.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from imgsim_lab.adapters.evaluate import expansion_metrics
from imgsim_lab.adapters.transforms import apply, fit_concat
from imgsim_lab.expansion import ExpansionConfig
from imgsim_lab.jsonio import write_json

log = logging.getLogger("cifar10_rerank")


def load_embeddings(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(db, db_y, q, q_y)`` of one file, or of several concatenated (their labels must agree)."""
    parts = []
    for path in paths:
        with np.load(path, allow_pickle=False) as z:
            parts.append(tuple(z[k] for k in ("db", "db_y", "q", "q_y")))
    db_y, q_y = parts[0][1], parts[0][3]
    for path, (_, dy, _, qy) in zip(paths, parts, strict=True):
        if not (np.array_equal(dy, db_y) and np.array_equal(qy, q_y)):
            raise SystemExit(f"{path}: its labels differ from {paths[0]}'s: "
                             "not the same images in the same order")
    if len(parts) == 1:
        return parts[0]
    tensors = fit_concat([p[0].shape[1] for p in parts])
    return (apply("concat", tensors, [p[0] for p in parts]), db_y,
            apply("concat", tensors, [p[2] for p in parts]), q_y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--emb", type=Path, action="append", required=True,
                    help="embeddings .npz; repeat to concatenate several")
    ap.add_argument("--qe", type=int, nargs="+", default=[0, 1, 2, 3, 5, 10], help="αQE neighbours")
    ap.add_argument("--dba", type=int, nargs="+", default=[0, 1, 2, 3, 5], help="DBA neighbours")
    ap.add_argument("--alpha", type=float, nargs="+", default=[3.0])
    ap.add_argument("--no-full-map", action="store_true", help="skip mAP over the whole database")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    db, db_y, q, q_y = load_embeddings(args.emb)
    out = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": {}}
    out["embeddings"] = {"file": " + ".join(p.name for p in args.emb), "database": int(len(db)),
                         "queries": int(len(q)), "dim": int(db.shape[1])}
    grid = list(itertools.product(args.dba, args.qe, args.alpha))
    for d, n, a in tqdm(grid, desc="rerank grid"):
        name = f"dba{d} qe{n} alpha{a:g}"
        m = expansion_metrics(db, db_y, q, q_y, ExpansionConfig(n, a),
                              ExpansionConfig(d, a), full_map=not args.no_full_map)
        out["rows"][name] = {"dba": d, "qe": n, "alpha": a, "metrics": m}
        log.info("%s: mAP@1000 %.4f, P@1 %.4f, mAP@all %.4f", name, m["mAP@1000"], m["P@1"],
                 m.get("mAP@all", float("nan")))
        write_json(args.json, out)


if __name__ == "__main__":
    main()
