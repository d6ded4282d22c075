"""Full-protocol CIFAR-10 comparison of frozen features, transforms and adapters on cached vectors.

The database is all 50,000 train images, the queries all 10,000 test images. Transforms and
adapters are fitted on the database side only (the adapter holds 10 % of it out for early
stopping); the test split is only ever embedded and ranked. Features come from ``.npz`` caches
(``train_x``/``train_y``/``test_x``/``test_y``, L2-normalized; see docs/adapters.md for how they
were made) so that the comparison costs minutes, not hours of re-embedding; the same code
(:mod:`imgsim_lab.adapters.transforms`, :func:`~imgsim_lab.adapters.training.train_head`)
backs ``imgsim adapter`` on a store.

    python scripts/cifar10_adapters.py --out experiments/runs/cifar10_adapters_cached \
        --feature lite0=/work/cache/cifar10_lite0_160.npz --feature lite2=/work/cache/adapters/lite2_192.npz

Rows already in ``<out>/metrics.json`` are kept (re-run to add the rest); ``--only`` picks rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from imgsim_lab.adapters import transforms as T
from imgsim_lab.adapters.evaluate import itq, ranking_metrics, sign_codes
from imgsim_lab.adapters.training import TrainConfig, train_head

log = logging.getLogger("cifar10_adapters")


def load_features(specs: list[str]) -> dict[str, dict[str, np.ndarray]]:
    feats = {}
    for s in specs:
        name, path = s.split("=", 1)
        z = np.load(path)
        feats[name] = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
        for k in ("train_xf", "test_xf"):
            if k in z:
                feats[name][k] = z[k]
        log.info("%s: %s train, %s test from %s", name, feats[name]["train_x"].shape,
                 feats[name]["test_x"].shape, path)
        if "train_xf" in z and "test_xf" in z:  # test-time flip averaging, as the *_flip models do
            feats[f"{name}-flip"] = {"train_x": _l2(z["train_x"] + z["train_xf"]),
                                     "test_x": _l2(z["test_x"] + z["test_xf"]),
                                     "train_y": z["train_y"], "test_y": z["test_y"]}
    first = next(iter(feats.values()))
    for name, f in feats.items():
        same = np.array_equal(f["train_y"], first["train_y"]) and np.array_equal(f["test_y"], first["test_y"])
        if not same:
            raise SystemExit(f"{name}: labels/order differ from the first feature set")
    return feats


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rows_for(names: list[str], concats: list[list[str]] | None = None) -> list[dict]:
    """The comparison: one dict per row (what to build and how). ``concats``: the groups of
    feature sets to concatenate (default: all of them, when there are several)."""
    if concats is None:
        concats = [names] if len(names) > 1 else []
    rows = [{"row": f"{n} frozen", "bases": [n], "steps": []} for n in names]
    rows += [{"row": f"{n} centred", "bases": [n], "steps": [("center", {})]} for n in names]
    rows += [{"row": f"{n} whitened 256 (shrink 0.25)", "bases": [n],
              "steps": [("whiten", {"dim": 256, "shrinkage": 0.25})]} for n in names]
    for group in concats:
        cat = "+".join(group)
        rows.append({"row": f"concat {cat}", "bases": group, "steps": []})
        rows.append({"row": f"concat {cat} centred", "bases": group, "steps": [("center", {})]})
    for n in names:
        for kind, loss in (("mlp", "cos_softmax"), ("linear", "cos_softmax"), ("mlp", "proxy_anchor"),
                           ("mlp", "supcon")):
            rows.append({"row": f"{n} → whiten 256 → {kind} {loss}", "bases": [n],
                         "steps": [("whiten", {"dim": 256, "shrinkage": 0.25}),
                                   ("adapter", {"kind": kind, "loss": loss})]})
    for n in names:
        rows.append({"row": f"{n} linear cos_softmax", "bases": [n],
                     "steps": [("adapter", {"kind": "linear", "loss": "cos_softmax"})]})
        for loss in ("cos_softmax", "proxy_anchor", "supcon"):
            rows.append({"row": f"{n} mlp {loss}", "bases": [n],
                         "steps": [("adapter", {"kind": "mlp", "loss": loss})]})
    for group in concats:
        cat = "+".join(group)
        for kind in ("linear", "mlp"):
            for loss in ("cos_softmax", "proxy_anchor"):
                rows.append({"row": f"concat {cat} → whiten 512 → {kind} {loss}", "bases": group,
                             "steps": [("whiten", {"dim": 512, "shrinkage": 0.1}),
                                       ("adapter", {"kind": kind, "loss": loss})]})
        for loss in ("cos_softmax", "proxy_anchor", "supcon"):
            rows.append({"row": f"concat {cat} mlp {loss}", "bases": group,
                         "steps": [("adapter", {"kind": "mlp", "loss": loss})]})
    return rows


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    return T.apply("concat", T.fit_concat([p.shape[1] for p in parts]), parts)


def build(row: dict, feats, train_cfg: dict) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Fit the row's steps on the train split; return (db vectors, query vectors, seconds, facts)."""
    db, q = (_joined([feats[b][split] for b in row["bases"]]) for split in ("train_x", "test_x"))
    y = feats[row["bases"][0]]["train_y"].astype(np.int64)
    seconds, facts = 0.0, {}
    for kind, opts in row["steps"]:
        t0 = time.perf_counter()
        if kind == "center":
            tens = T.fit_center(db)
        elif kind == "whiten":
            tens = T.fit_whiten(db, opts["dim"], opts["shrinkage"])
        else:
            cfg = TrainConfig(**{**train_cfg, **opts})
            res = train_head(db, y, cfg)
            tens = res.tensors
            facts.update(res.summary())
            facts["history"] = res.history
        db, q = T.apply(kind, tens, [db]), T.apply(kind, tens, [q])
        seconds += time.perf_counter() - t0
    return db, q, seconds, facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--feature", action="append", required=True, help="NAME=PATH.npz (repeatable)")
    ap.add_argument("--out", default="experiments/runs/cifar10_adapters_cached")
    ap.add_argument("--only", action="append", default=None,
                    help="row names to run (exact; a trailing * matches a prefix)")
    ap.add_argument("--concat", action="append", default=None, metavar="A+B+C",
                    help="feature sets to concatenate (repeatable; default: all of them). A set "
                         "NAME whose cache holds flipped vectors also gives NAME-flip (averaged)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--codes-from", default=None, help="row whose vectors give the 48/64-bit codes "
                                                        "(default: best adapter by mAP@1000)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mpath = out / "metrics.json"
    results = json.loads(mpath.read_text()) if mpath.exists() else {"rows": {}}
    feats = load_features(args.feature)
    train_cfg = {"epochs": args.epochs, "threads": args.threads, "dim": 256, "hidden": 1024}
    results["protocol"] = {
        "database": "CIFAR-10 train, all 50,000", "queries": "CIFAR-10 test, all 10,000",
        "fitted_on": "database (train) only; adapters hold out 10 % of it for early stopping",
        "features": args.feature, "train_config": train_cfg}
    y_db = next(iter(feats.values()))["train_y"].astype(np.int64)
    y_q = next(iter(feats.values()))["test_y"].astype(np.int64)
    vectors = {}
    concats = [c.split("+") for c in args.concat] if args.concat else None
    for group in concats or ():
        missing = [g for g in group if g not in feats]
        if missing:
            raise SystemExit(f"--concat {'+'.join(group)}: no feature set {missing} (have {sorted(feats)})")
    for row in rows_for(list(feats), concats):
        name = row["row"]
        if args.only and not any(s == name or (s.endswith("*") and name.startswith(s[:-1]))
                                 for s in args.only):
            continue
        if name in results["rows"] and not (args.codes_from and name == args.codes_from):
            continue
        log.info("row %s", name)
        db, q, secs, facts = build(row, feats, train_cfg)
        m = ranking_metrics(db, y_db, q, y_q)
        results["rows"][name] = {"metrics": m, "train_seconds": round(secs, 1), "dim": int(db.shape[1]),
                                 "trained_on": "CIFAR-10 train (50,000; 45,000 fit / 5,000 validation)"
                                 if facts else ("CIFAR-10 train (fit)" if row["steps"] else "—"), **facts}
        log.info("%s: %s (%.0f s)", name, {k: round(v, 4) for k, v in m.items()}, secs)
        vectors[name] = (db, q)
        mpath.write_text(json.dumps(results, indent=1))
    # compact codes from the best adapter
    adapters = {n: r for n, r in results["rows"].items() if "history" in r}
    best = max(adapters, key=lambda n: adapters[n]["metrics"]["mAP@1000"]) if adapters else None
    src = args.codes_from or best
    if src and src in vectors:
        db, q = vectors[src]
        for bits in (48, 64):
            mean, pca, rot = itq(db, bits)
            m = ranking_metrics(sign_codes(db, mean, pca, rot), y_db, sign_codes(q, mean, pca, rot), y_q)
            results["rows"][f"{bits}-bit ITQ sign code of [{src}], Hamming ranking"] = {
                "metrics": m, "dim": bits, "train_seconds": results["rows"][src]["train_seconds"],
                "trained_on": "CIFAR-10 train"}
            log.info("%d bits: %s", bits, m)
        mpath.write_text(json.dumps(results, indent=1))
    write_summary(results, out)


def write_summary(results: dict, out: Path) -> None:
    head = "| features | dim | P@1 | P@5 | P@10 | mAP@1000 | mAP (all) | 5-NN acc | training s |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["rows"].items():
        m = r["metrics"]
        lines.append(f"| {name} | {r['dim']} | {m['P@1']:.3f} | {m['P@5']:.3f} | {m['P@10']:.3f} | "
                     f"{m['mAP@1000']:.3f} | {m.get('mAP@all', float('nan')):.3f} | "
                     f"{m['knn5_accuracy']:.3f} | {r['train_seconds']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(results, out)


def _plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = list(rows)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.2))
    ax.barh(range(len(names)), [rows[n]["metrics"]["mAP@1000"] for n in names], color="tab:blue")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0.90, color="tab:red", ls="--", lw=1, label="target 0.90")
    ax.axvline(0.932, color="tab:green", ls=":", lw=1, label="GreedyHash 0.932")
    ax.set_xlabel("mAP@1000, CIFAR-10 50k database / 10k queries")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "map_at_1000.png", dpi=110)
    plt.close(fig)
    hist = {n: r["history"] for n, r in rows.items() if "history" in r}
    if hist:
        fig, ax = plt.subplots(figsize=(7, 4))
        for n, h in hist.items():
            ax.plot([e["epoch"] for e in h], [e["val_mAP@100"] for e in h], label=n)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation mAP@100 (held-out train images)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "val_curves.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
