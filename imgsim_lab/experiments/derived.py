"""Derived models in the benchmark notebook and experiment grids (``03_benchmark``).

A derived model key in ``models`` (``efficientnet_lite0+mlp``) needs a recipe in the
``derived`` parameter, e.g.::

    derived:
      efficientnet_lite0+centred: {kind: center}
      efficientnet_lite0+white256: {kind: whiten, dim: 256, shrinkage: 0.25}
      efficientnet_lite0+cat012: {kind: concat, bases: [efficientnet_lite0, efficientnet_lite1]}
      efficientnet_lite0+mlp: {kind: adapter, head: mlp, loss: cos_softmax, dim: 256, epochs: 20}

:func:`prepare_derived` ingests the database with the base models (reused when stored),
fits or trains the derived model on the database records (the train split) unless it is
stored already with the same recipe, refuses queries it was trained on, and returns the
model that embeds the queries (bases, then the transform).
"""

from __future__ import annotations

import logging
from typing import Any

from imgsim_lab import adapters
from imgsim_lab.adapters.model import DerivedModel
from imgsim_lab.adapters.spec import is_derived_key, split_derived_key

log = logging.getLogger(__name__)

ADAPTER_OPTIONS = {"head": "kind", "loss": "loss", "dim": "dim", "hidden": "hidden", "epochs": "epochs",
                   "lr": "lr", "batch_size": "batch_size", "patience": "patience", "seed": "seed",
                   "dropout": "dropout", "val_fraction": "val_fraction"}


def recipe_bases(key: str, recipe: dict[str, Any]) -> list[str]:
    return list(recipe.get("bases") or [split_derived_key(key)[0]])


def ensure_derived(store, key: str, recipes: dict[str, dict[str, Any]], ingest_base, progress: bool = True):
    """Make ``key`` exist in ``store`` per its recipe (bases first); returns its spec."""
    if key not in recipes:
        raise adapters.DerivedModelError(f"{key} is a derived model key but the benchmark has no recipe "
                                         "for it: add it under `derived:` (see docs/adapters.md)")
    recipe = dict(recipes[key])
    bases = recipe_bases(key, recipe)
    for b in bases:
        if is_derived_key(b):
            ensure_derived(store, b, recipes, ingest_base, progress)
        else:
            ingest_base(b)
    if key in adapters.list_derived(store):
        spec = adapters.load_spec(store, key)
        try:
            adapters.check_bases(store, spec)
            if spec.options.get("recipe") == recipe:
                log.info("%s: reusing the stored derived model %s", key, spec.version)
                adapters.derive(store, key, progress=progress)  # records added since
                return spec
        except adapters.StaleBaseError as exc:
            log.warning("%s: %s; refitting", key, exc)
        adapters.delete_derived(store, key, cascade=True)
    name = split_derived_key(key)[1]
    kind = recipe.get("kind", "adapter")
    if kind == "adapter":
        from imgsim_lab.adapters.training import TrainConfig

        opts = {ADAPTER_OPTIONS[k]: v for k, v in recipe.items() if k in ADAPTER_OPTIONS}
        unknown = set(recipe) - set(ADAPTER_OPTIONS) - {"kind", "bases"}
        if unknown:
            raise adapters.DerivedModelError(f"{key}: unknown adapter recipe options {sorted(unknown)}")
        spec = adapters.train_adapter(store, name, bases[0], TrainConfig(**opts), train_on="train",
                                      progress=progress, recipe=recipe)
    else:
        spec = adapters.fit_transform(store, name, kind, bases, dim=recipe.get("dim"),
                                      shrinkage=float(recipe.get("shrinkage", 0.0)),
                                      weights=recipe.get("weights"), train_on="train",
                                      progress=progress, recipe=recipe)
    return spec


def prepare_derived(store, key: str, recipes, ingest_base, query_sha256, progress: bool = True
                    ) -> tuple[DerivedModel, dict[str, Any]]:
    """Ensure ``key``, check the queries are unseen, and return (model, facts for metrics.json)."""
    spec = ensure_derived(store, key, recipes, ingest_base, progress)
    adapters.check_queries_unseen(store, key, query_sha256)
    chain, todo = [], [key]
    while todo:
        k = todo.pop()
        if is_derived_key(k):
            s = adapters.load_spec(store, k)
            chain.append(s)
            todo.extend(b.key for b in s.bases)
    facts = {"derived": {
        "kind": spec.kind, "version": spec.version, "bases": [b.key for b in spec.bases],
        "trained_on": spec.trained_on, "recipe": recipes[key],
        "train_seconds": round(sum(float(s.metrics.get("train_seconds", s.metrics.get("fit_seconds", 0.0)))
                                   for s in chain), 2),
        "metrics": {k: v for k, v in spec.metrics.items() if k != "history"},
        "queries_checked_unseen": True}}
    return DerivedModel(store, key), facts


def derived_benchmark_model(store, key: str, params, db_items, q_items):
    """The benchmark's entry point: ingest bases, ensure ``key``, check queries; (model, extra)."""
    import hashlib

    from imgsim_lab.ingest import ingest
    from imgsim_lab.models import get_model

    summaries: dict[str, Any] = {}

    def ingest_base(base: str) -> None:
        from imgsim_lab.adapters.model import split_model_key

        name, size = split_model_key(base)
        m = get_model(name, size=size or params.size_for(name))
        if m.key != base:
            raise adapters.DerivedModelError(f"base {base!r} resolves to model key {m.key!r}; name "
                                             "the base by its stored key")
        s = ingest(db_items, store, [m], batch_size=params.batch_size, progress=params.progress)
        summaries[base] = s.to_dict()

    check_recipes([key], params.derived)
    shas = [hashlib.sha256(it.read_bytes()).hexdigest() for it in q_items]
    model, facts = prepare_derived(store, key, params.derived, ingest_base, shas, params.progress)
    total = {"added": 0, "embedded": 0, "images_per_s": None, "reused": True}
    for s in summaries.values():
        total["added"] += s["added"]
        total["embedded"] += s["embedded"]
    total["reused"] = total["added"] + total["embedded"] == 0
    total["bases"] = summaries
    return model, {"ingest": total, **facts}


def check_recipes(models: list[str], recipes: dict[str, dict[str, Any]]) -> None:
    """Every derived key in ``models`` (and in the recipes' bases) has a consistent recipe."""
    todo = [m for m in models if is_derived_key(m)]
    seen = set()
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        if key not in recipes:
            raise adapters.DerivedModelError(f"no recipe for derived model {key!r} under `derived:`")
        bases = recipe_bases(key, recipes[key])
        if bases[0] != split_derived_key(key)[0]:
            raise adapters.DerivedModelError(f"{key!r} must be named after its first base {bases[0]!r}")
        kind = recipes[key].get("kind", "adapter")
        if kind not in ("adapter", "center", "whiten", "concat"):
            raise adapters.DerivedModelError(f"{key!r}: unknown kind {kind!r}")
        todo.extend(b for b in bases if is_derived_key(b))
