"""Search an image against a collection: the one entry point for the CLI, the app and notebooks.

:class:`Searcher` ties a store, a model and its :class:`~imgsim_lab.index.SimilarityIndex`
together. A query image is validated like an ingested one; when its bytes are already
stored it is searched with its stored embedding, and it never appears among its own
results (neither its id nor its sha256).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from imgsim_lab.adapters.transforms import l2n
from imgsim_lab.expansion import ExpansionConfig, expand
from imgsim_lab.images import ImageInfo, Limits, decode, sha256_hex
from imgsim_lab.index import Hit, IndexConfig, SimilarityIndex
from imgsim_lab.models import EmbeddingModel
from imgsim_lab.store import NewImage, Record, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Match:
    """One result: the stored image, its cosine similarity to the query, its record."""

    id: int
    score: float
    record: Record | None

    def to_dict(self) -> dict:
        r = self.record
        return {"id": self.id, "score": round(float(self.score), 6),
                "label": r.label if r else None, "source": r.source if r else None}


@dataclass
class QueryResult:
    """What a query did: whether the image was stored already or added, and its matches."""

    sha256: str
    info: ImageInfo
    stored_id: int | None = None
    duplicate: bool = False
    added: bool = False
    matches: list[Match] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"sha256": self.sha256, "stored_id": self.stored_id, "duplicate": self.duplicate,
                "added": self.added, "width": self.info.width, "height": self.info.height,
                "format": self.info.format, "seconds": round(self.seconds, 4),
                "matches": [m.to_dict() for m in self.matches]}


class Searcher:
    """Search by image bytes, by vector or by stored id, against one model's index.

    Safe to share between threads: the index is created once, and a search never waits
    for another thread's catch-up or rebuild (it searches the state served meanwhile).
    Each search syncs first (unless another thread is updating), and a repeated identical query
    is answered from the index's query cache (``IndexConfig.query_cache``) until a sync or an
    update changes the index.

    ``expansion`` turns on αQE (:mod:`imgsim_lab.expansion`): the query moves towards its
    top ``n`` results (their stored vectors, weighted by cosine ** alpha) and is searched
    again; scores are then cosines to the expanded query. Off by default.
    """

    def __init__(self, store: Store, model: EmbeddingModel | str, size: int | None = None,
                 index_config: IndexConfig | None = None, limits: Limits | None = None,
                 expansion: ExpansionConfig | None = None) -> None:
        self.store = store
        if isinstance(model, str):
            from imgsim_lab.adapters.model import resolve_model  # derived keys BASE+NAME too

            model = resolve_model(store, model, size=size)
        self.model = model
        self.limits = limits or Limits()
        self.index_config = index_config
        self.expansion = expansion or ExpansionConfig()
        self._index: SimilarityIndex | None = None
        self._index_lock = threading.Lock()

    @property
    def index(self) -> SimilarityIndex:
        """The model's index, loaded (or built) on first use and kept in sync with the store."""
        if self._index is None:
            with self._index_lock:
                if self._index is None:
                    self._index = SimilarityIndex(self.store, self.model.key, config=self.index_config)
        return self._index

    def embed(self, data: bytes) -> tuple[np.ndarray, ImageInfo]:
        img, info = decode(data, self.limits)
        vec = self.model.embed_images([img])[0]
        return vec, info

    def search_bytes(self, data: bytes, k: int = 5, *, add: bool = False, source: str = "upload",
                     label: str | None = None) -> QueryResult:
        """Validate, embed (or reuse the stored vector), optionally add, and search.

        Raises :class:`~imgsim_lab.images.ImageRejected` for bad bytes; nothing is stored then.
        """
        t0 = time.perf_counter()
        if len(data) > self.limits.max_bytes:
            from imgsim_lab.images import ImageRejected

            raise ImageRejected("too_large_bytes", f"{len(data)} bytes > limit {self.limits.max_bytes}")
        sha = sha256_hex(data)
        stored_id = self.store.ids_for_hashes([sha])[0]
        vec = None
        if stored_id is not None and self.store.has_embeddings(self.model.key, [stored_id])[0]:
            _, vecs = self.store.get_embeddings(self.model.key, [stored_id])
            vec = vecs[0]
            from imgsim_lab.images import probe

            info = probe(data, self.limits)
        else:
            vec, info = self.embed(data)
        result = QueryResult(sha, info, stored_id=stored_id, duplicate=stored_id is not None)
        if add and stored_id is None:
            self.store.register_model(self.model.key, self.model.dim, self.model.version)
            res = self.store.add_images([NewImage(sha, source, info.width, info.height, label,
                                                  {self.model.key: vec})])[0]
            result.stored_id, result.added = res.id, res.created
            result.duplicate = not res.created
            self.index.sync()
            log.info("added %s as id %d", source, res.id)
        elif add and not self.store.has_embeddings(self.model.key, [stored_id])[0]:
            self.store.register_model(self.model.key, self.model.dim, self.model.version)
            self.store.add_images([NewImage(sha, source, info.width, info.height, label,
                                            {self.model.key: vec})])
        exclude = () if result.stored_id is None else (result.stored_id,)
        result.matches = self.search_vector(vec, k, exclude_ids=exclude, exclude_sha256=sha)
        result.seconds = time.perf_counter() - t0
        return result

    def search_vector(self, vec: np.ndarray, k: int = 5, exclude_ids=(),
                      exclude_sha256: str | None = None) -> list[Match]:
        """Top-k stored images by cosine similarity, with their records."""
        self.index.sync(wait=False)  # another thread updating: search what it serves meanwhile
        vec = np.asarray(vec, np.float32)
        if self.expansion.enabled:
            hits = self._search_expanded(vec, k, exclude_ids, exclude_sha256)
        else:
            hits = self.index.search(vec, k=k, exclude_ids=exclude_ids, exclude_sha256=exclude_sha256)
        records = self.store.get_records([h.id for h in hits])
        return [Match(h.id, float(h.score), r) for h, r in zip(hits, records, strict=True)]

    def _search_expanded(self, vec: np.ndarray, k: int, exclude_ids,
                         exclude_sha256: str | None) -> list[Hit]:
        """αQE: search again with the query plus its top-n results' stored vectors, weighted by
        cosine ** alpha. Exact duplicates of the *original* query stay excluded."""
        q = l2n(vec[None])[0]
        first = self.index.search(q, k=self.expansion.n, exclude_ids=exclude_ids,
                                  exclude_sha256=exclude_sha256)
        ids, vecs = self.store.get_embeddings(self.model.key, [h.id for h in first])
        if not len(ids):  # nothing stored, or deleted meanwhile
            return self.index.search(q, k=k, exclude_ids=exclude_ids, exclude_sha256=exclude_sha256)
        score = {h.id: h.score for h in first}
        sims = np.array([[score[int(i)] for i in ids]], np.float32)
        qx = expand(q[None], l2n(vecs)[None], sims, self.expansion.alpha)[0]
        thr = self.index.config.duplicate_threshold
        fetch = 2 * k
        while True:  # the index drops duplicates of qx; those of q are dropped here
            hits = self.index.search(qx, k=fetch, exclude_ids=exclude_ids, exclude_sha256=exclude_sha256)
            if thr is None:
                return hits[:k]
            found, hv = self.store.get_embeddings(self.model.key, [h.id for h in hits])
            dup = {int(i) for i, c in zip(found, l2n(hv) @ q, strict=True) if c >= 1.0 - thr}
            kept = [h for h in hits if h.id not in dup]
            if len(kept) >= k or len(hits) < fetch:
                return kept[:k]
            fetch *= 2

    def search_id(self, image_id: int, k: int = 5) -> list[Match]:
        """Top-k neighbours of a stored image (never itself)."""
        ids, vecs = self.store.get_embeddings(self.model.key, [image_id])
        if not len(ids):
            raise KeyError(f"image {image_id} has no {self.model.key} embedding")
        rec = self.store.get_records([image_id])[0]
        return self.search_vector(vecs[0], k, exclude_ids=(image_id,),
                                  exclude_sha256=rec.sha256 if rec else None)
