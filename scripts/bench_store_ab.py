"""Bulk-write A/B of two checkouts on one server, alternated in one run (ratios, not absolutes).

    git worktree add /tmp/old <rev>
    python scripts/bench_store_ab.py --old /tmp/old --new . --server redis --n 40000 --rounds 3 --json ab.json

Starts the server (redis-server, Kvrocks from ../shared or $KVROCKS_BIN, or an embedded RocksDB
in a temp dir), then per round writes ``--n`` random 1280-d vectors with records through
``Store.add_images`` once with each checkout (each in a fresh process and namespace, flushed
after; the order alternates between rounds), and prints JSON: MB/s, client and server CPU µs
per vector, and new/old ratios per round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

CHILD = r'''
import hashlib, json, sys, time, uuid
import numpy as np, redis
from imgsim_lab.store import NewImage, open_store
url, n = sys.argv[1], int(sys.argv[2])
vecs = np.random.default_rng(0).standard_normal((n, 1280), dtype=np.float32)
items = [NewImage(hashlib.sha256(f"ab:{i}".encode()).hexdigest(), f"train/class{i % 10}/{i:05d}.png", 32, 32,
                  label=f"class{i % 10}", embeddings={"bench": vecs[i]}) for i in range(n)]
r = redis.Redis.from_url(url, protocol=2) if url.startswith("redis") else None
def server_cpu():
    if r is None:
        return 0.0
    c = r.info("cpu")
    return c["used_cpu_sys"] + c["used_cpu_user"]
with open_store(url, "ab-" + uuid.uuid4().hex[:6]) as s:
    s.register_model("bench", 1280, "random")
    c0, s0, t0 = time.process_time(), server_cpu(), time.perf_counter()
    for a in range(0, n, 4096):
        s.add_images(items[a:a + 4096])
    wall, cpu, srv = time.perf_counter() - t0, time.process_time() - c0, server_cpu() - s0
    assert s.count() == n
    s.flush()
print(json.dumps({"mb_per_s": n * 5120 / wall / 1e6, "client_cpu_us": 1e6 * cpu / n,
                  "server_cpu_us": 1e6 * srv / n}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="checkout to compare against")
    ap.add_argument("--new", default=str(ROOT), help="checkout under test (default: this one)")
    ap.add_argument("--server", choices=("redis", "kvrocks", "rocksdb"), default="redis")
    ap.add_argument("--n", type=int, default=40000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from cluster_fixture import need_kvrocks
    from servers import KvrocksServer, RedisServer

    tmp = Path(tempfile.mkdtemp())
    srv = None
    if args.server == "redis":
        srv = RedisServer(tmp / "r").start()
    elif args.server == "kvrocks":
        srv = KvrocksServer(tmp / "k", binary=need_kvrocks()).start()
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    try:
        for r in range(args.rounds):
            order = [("old", args.old), ("new", args.new)]
            for tag, tree in order if r % 2 == 0 else order[::-1]:  # neither always goes first
                url = srv.url if srv else f"rocksdb:{tmp}/{uuid.uuid4().hex[:6]}"
                out = subprocess.run([sys.executable, "-c", CHILD, url, str(args.n)], cwd=tree,
                                     env={**os.environ, "PYTHONPATH": str(Path(tree).resolve())},
                                     capture_output=True, text=True, check=True)
                runs[tag].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        if srv:
            srv.stop()

    def cpu(r: dict) -> float:
        return r["client_cpu_us"] + r["server_cpu_us"]

    pairs = list(zip(runs["old"], runs["new"], strict=True))
    result = {"server": args.server, "n": args.n, "rounds": args.rounds,
              "new_over_old_mb_per_s": [b["mb_per_s"] / a["mb_per_s"] for a, b in pairs],
              "new_over_old_client_cpu": [b["client_cpu_us"] / a["client_cpu_us"] for a, b in pairs],
              "new_over_old_cpu_per_vector": [cpu(b) / cpu(a) for a, b in pairs],
              "runs": runs}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
