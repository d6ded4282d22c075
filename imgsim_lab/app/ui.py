"""The search app's widgets: upload (drop zone or file chooser), models side by side, feedback, results."""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Sequence

import ipywidgets as W

from imgsim_lab.app.dropzone import TRANSPORT_MAX_BYTES, DropZone
from imgsim_lab.app.session import MAX_MODELS, Outcome, SearchSession, data_uri, split_model_key, warm_up
from imgsim_lab.expansion import ExpansionConfig
from imgsim_lab.images import Limits
from imgsim_lab.messages import megabytes

log = logging.getLogger(__name__)

MAX_K = 50
#: Results the query expansion checkbox expands with (αQE; see imgsim_lab.expansion).
EXPAND_N = 5
#: Upload cards kept on the page (newest batch only; the oldest go first).
MAX_CARDS = 20

_STYLE = """<style>
.imgsim-app { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #223; }
.imgsim-title { font-size: 20px; font-weight: 650; margin: 4px 0 2px; }
.imgsim-subtitle { font-size: 13px; color: #667; margin-bottom: 8px; }
.imgsim-facts table { border-collapse: collapse; font-size: 12.5px; }
.imgsim-facts td, .imgsim-facts th { padding: 2px 10px 2px 0; text-align: left; }
.imgsim-facts th { color: #667; font-weight: 500; }
.imgsim-status { font-size: 13.5px; min-height: 22px; display: flex; align-items: center; gap: 8px; }
.imgsim-spinner { width: 16px; height: 16px; border: 3px solid #c9d3e6; border-top-color: #3b6fd8;
  border-radius: 50%; animation: imgsim-spin .8s linear infinite; display: inline-block; }
@keyframes imgsim-spin { to { transform: rotate(360deg); } }
.imgsim-card { border: 1px solid #dde3ee; border-radius: 10px; padding: 12px; margin: 8px 0;
  display: flex; gap: 18px; align-items: flex-start; background: #fff; }
.imgsim-query { width: 240px; flex: none; }
.imgsim-card, .imgsim-facts, .imgsim-status { line-height: 1.35; }
.imgsim-query img { width: 200px; height: 200px; object-fit: contain; background: #f1f3f7;
  border-radius: 6px; display: block; image-rendering: pixelated; }
.imgsim-feedback { font-size: 13.5px; margin-top: 6px; padding: 6px 8px; border-radius: 6px;
  word-break: break-word; }
.imgsim-feedback.imgsim-added { background: #e5f6ea; color: #135f2c; }
.imgsim-feedback.imgsim-duplicate { background: #fff4db; color: #7a5200; }
.imgsim-feedback.imgsim-searched { background: #e8effc; color: #1d3f86; }
.imgsim-feedback.imgsim-rejected, .imgsim-feedback.imgsim-error { background: #fde8e8; color: #8a1c1c; }
.imgsim-note { font-size: 12px; color: #8a1c1c; margin-top: 4px; }
.imgsim-meta { font-size: 12px; color: #667; margin-top: 4px; }
.imgsim-columns { display: flex; gap: 16px; align-items: flex-start; flex: 1; min-width: 0; }
.imgsim-column { flex: 1; min-width: 0; }
.imgsim-ncols-2 .imgsim-column, .imgsim-ncols-3 .imgsim-column { border-left: 3px solid #dde3ee;
  padding-left: 10px; }
.imgsim-column-title { font-weight: 650; font-size: 13px; margin-bottom: 6px; color: #1d3f86; }
.imgsim-results { display: flex; flex-wrap: wrap; gap: 12px; }
.imgsim-result { width: 140px; font-size: 12px; border-radius: 8px; padding: 2px; }
.imgsim-result.imgsim-shared { background: #fff4db; box-shadow: 0 0 0 2px #e6b23c; }
.imgsim-shared-badge { color: #7a5200; font-size: 11px; font-weight: 600; }
.imgsim-model { color: #1d3f86; font-size: 11px; }
.imgsim-noimg.imgsim-missing { background: #fde8e8; color: #8a1c1c; text-align: center;
  flex-direction: column; }
.imgsim-compare-label { font-size: 13px; color: #445; }
.imgsim-result img, .imgsim-noimg { width: 128px; height: 128px; object-fit: contain; background: #f1f3f7;
  border-radius: 6px; image-rendering: pixelated; display: block; }
.imgsim-noimg { display: flex; align-items: center; justify-content: center; color: #99a; }
.imgsim-score { font-weight: 650; margin-top: 3px; }
.imgsim-label { color: #334; }
.imgsim-source { color: #778; word-break: break-all; font-size: 11px; }
</style>"""


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_facts(facts: dict) -> str:
    """Collection facts as HTML: store, images, and per model its embeddings (and index mode)."""
    indexes = facts.get("indexes") or {}
    rows = []
    for key, m in sorted(facts.get("models", {}).items()):
        mode = (indexes.get(key) or {}).get("mode", "")
        rows.append(f"<tr data-model='{_esc(key)}'><td>{_esc(key)}</td><td class='imgsim-count'>{m['count']}"
                    f"</td><td>{m['dim']}</td><td class='imgsim-mode'>{_esc(mode) or '&ndash;'}</td></tr>")
    return (f"<div class='imgsim-facts'><div><b class='imgsim-images'>{facts.get('images', 0)}</b> images in "
            f"<code>{_esc(facts.get('url', '?'))}</code> (namespace <code>{_esc(facts.get('namespace', '?'))}"
            f"</code>)</div><table><tr><th>model</th><th>images</th><th>dim</th><th>index</th></tr>"
            f"{''.join(rows)}</table></div>")


def _thumb_html(session: SearchSession | None, m) -> str:
    rec = m.record
    if session is None or rec is None:
        return "<div class='imgsim-noimg'>no preview</div>"
    thumb = session.match_thumbnail(m.id, rec.source, getattr(rec, "path", None))
    if thumb.jpeg:
        return f"<img alt='{_esc(rec.source)}' src='{data_uri(thumb.jpeg)}'>"
    if thumb.missing:
        return (f"<div class='imgsim-noimg imgsim-missing' title='{_esc(thumb.missing)}'>file missing"
                "<br><small>moved or deleted</small></div>")
    return "<div class='imgsim-noimg'>no preview</div>"


def render_outcome(outcome: Outcome, session: SearchSession | None) -> str:
    """One upload as an HTML card: its preview and feedback, then one column of matches per model.

    A stored image that appears in more than one model's column is marked in each.
    """
    status = _esc(outcome.status)
    query = [f"<img alt='{_esc(outcome.name)}' src='{data_uri(outcome.preview)}'>" if outcome.preview else "",
             f"<div class='imgsim-feedback imgsim-{status}'>{_esc(outcome.message)}</div>"]
    query += [f"<div class='imgsim-note'>{_esc(n)}</div>" for n in outcome.notes]
    results = outcome.results or ({} if outcome.result is None else {"": outcome.result})
    columns = []
    if results:
        r0 = next(iter(results.values()))
        query.append(f"<div class='imgsim-meta'>{_esc(r0.info.format)} {r0.info.width}&times;{r0.info.height}"
                     f" &middot; {sum(r.seconds for r in results.values()):.2f} s &middot; top "
                     f"{len(r0.matches)} by cosine</div>")
        where: dict[int, list[str]] = {}
        for key, r in results.items():
            for m in r.matches:
                where.setdefault(m.id, []).append(key)
        compare = len(results) > 1
        for key, r in results.items():
            cards = []
            for rank, m in enumerate(r.matches, 1):
                rec = m.record
                source = rec.source if rec else "?"
                others = [k for k in where.get(m.id, []) if k != key]
                shared = (f"<div class='imgsim-shared-badge' title='also in {_esc(', '.join(others))}'>"
                          f"&#9679; also in {_esc(', '.join(others))}</div>") if compare and others else ""
                cls = "imgsim-result imgsim-shared" if shared else "imgsim-result"
                label = rec.label if rec and rec.label else "-"
                where_title = getattr(rec, "path", None) or source
                cards.append(f"<div class='{cls}' data-id='{m.id}' data-model='{_esc(key)}'>"
                             f"{_thumb_html(session, m)}"
                             f"<div class='imgsim-score'>#{rank} &middot; {m.score:.4f}</div>"
                             f"<div class='imgsim-label'>{_esc(label)}</div>"
                             f"<div class='imgsim-model'>{_esc(key)}</div>{shared}"
                             f"<div class='imgsim-source' title='{_esc(where_title)}'>"
                             f"#{m.id} {_esc(source)}</div></div>")
            if not r.matches:
                cards.append("<div class='imgsim-meta'>No other images in the collection.</div>")
            head = f"<div class='imgsim-column-title'>{_esc(key)}</div>" if key else ""
            columns.append(f"<div class='imgsim-column' data-model='{_esc(key)}'>{head}"
                           f"<div class='imgsim-results'>{''.join(cards)}</div></div>")
    body = f"<div class='imgsim-columns imgsim-ncols-{len(columns)}'>{''.join(columns)}</div>"
    return (f"<div class='imgsim-card imgsim-card-{status}'><div class='imgsim-query'>{''.join(query)}</div>"
            f"{body}</div>")


def batch_status(outcomes: Sequence[Outcome], total: int) -> str:
    """The status line for one batch: what happened to each of its files so far."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    words = {"added": "added", "duplicate": "already stored", "searched": "searched",
             "rejected": "rejected", "error": "failed"}
    parts = ", ".join(f"{n} {words.get(st, st)}" for st, n in counts.items())
    if total == 1 and outcomes:
        return f"Done: {outcomes[0].message}"
    done = len(outcomes)
    head = f"Batch of {total} file{'s' if total != 1 else ''}"
    return f"{head}: {parts}." if done >= total else f"{head}: {done} done ({parts})…"


class SearchApp:
    """Upload images, see their nearest stored images per model. ``app.display()`` shows it."""

    def __init__(self, kv_url: str | None = None, namespace: str | None = None, model: str | None = None,
                 k: int = 5, add_uploads: bool = True, data_dir: str | os.PathLike[str] | None = None,
                 limits: Limits | None = None, compare: Sequence[str] = (), expand: int = 0) -> None:
        self.session: SearchSession | None = None
        self.outcomes: list[Outcome] = []
        self._last: tuple[str, object] | None = None  # ("files", [(name, bytes)]) or ("id", id)
        self._batch: dict = {"id": None, "total": 0, "outcomes": []}
        self._quiet = False  # set while the controls are updated by the app itself
        self.status = W.HTML(layout=W.Layout(min_height="24px"))
        self.status.add_class("imgsim-status-box")
        self.facts = W.HTML()
        self.results = W.VBox()
        self.model = W.Dropdown(description="Model", options=[], layout=W.Layout(width="340px"))
        self.compare_box = W.HBox(layout=W.Layout(flex_flow="row wrap", grid_gap="4px"))
        self.compare_box.add_class("imgsim-compare")
        self.compare: dict[str, W.Checkbox] = {}
        self.k = W.BoundedIntText(value=max(1, min(int(k), MAX_K)), min=1, max=MAX_K, description="Top k",
                                  layout=W.Layout(width="160px"))
        self.add = W.Checkbox(value=bool(add_uploads), description="Add uploads to the collection",
                              indent=False)
        self._expand_n = expand or EXPAND_N
        self.expand = W.Checkbox(value=expand > 0, indent=False,
                                 description=f"Query expansion (αQE over the top {self._expand_n})")
        self.upload = DropZone(mode="button", label="Choose files", hint="")
        self.drop = DropZone()
        self.stored_id = W.IntText(value=0, description="Stored id", layout=W.Layout(width="200px"))
        self.stored_go = W.Button(description="Search stored image", layout=W.Layout(width="180px"))
        self.stored_go.add_class("imgsim-search-id")
        self.upload.on_files(self._on_drop)
        self.drop.on_files(self._on_drop)
        self.stored_go.on_click(lambda _b: self.search_stored(int(self.stored_id.value)))
        self.widget = self._layout()
        self._wanted_compare = list(compare)
        try:
            self.session = SearchSession(kv_url, namespace, data_dir=data_dir, limits=limits)
            limit = min(self.session.limits.max_bytes, TRANSPORT_MAX_BYTES)
            self.drop.max_bytes = self.upload.max_bytes = limit
            self.drop.hint = (f"or click to choose files (JPEG, PNG, WebP, BMP, GIF, TIFF; up to "
                              f"{megabytes(limit)} each)")
            self.session.set_expansion(ExpansionConfig(self._expand_n if self.expand.value else 0))
            self._start(model)
        except Exception as exc:  # noqa: BLE001 - shown in the app, not as a traceback
            log.exception("search app set-up failed")
            self._set_status(f"Cannot start: {type(exc).__name__}: {exc}", error=True)
            self._enable(False)
            return
        self.model.observe(self._on_model, names="value")
        self.k.observe(self._on_k, names="value")
        self.expand.observe(self._on_expand, names="value")

    # ----------------------------------------------------------------- layout
    def _layout(self) -> W.Widget:
        head = W.HTML(_STYLE + "<div class='imgsim-title'>Image similarity search</div>"
                      "<div class='imgsim-subtitle'>Upload one or several images: each is validated, "
                      "embedded and compared by cosine similarity with the collection. Tick other "
                      "models to compare their top-k side by side.</div>")
        compare = W.HBox([W.HTML("<span class='imgsim-compare-label'>Compare with</span>"), self.compare_box],
                         layout=W.Layout(align_items="center", grid_gap="8px"))
        controls = W.VBox([self.model, compare, W.HBox([self.k, self.add]), self.expand,
                           W.HBox([self.upload]), self.drop, W.HBox([self.stored_id, self.stored_go])],
                          layout=W.Layout(width="560px", grid_gap="6px"))
        top = W.HBox([controls, self.facts], layout=W.Layout(grid_gap="24px", align_items="flex-start"))
        box = W.VBox([head, top, self.status, self.results])
        box.add_class("imgsim-app")
        return box

    def display(self) -> None:
        """Show the app in the notebook (or the Voila page)."""
        from IPython.display import display

        display(self.widget)

    def _ipython_display_(self) -> None:
        self.display()

    def _set_status(self, text: str, busy: bool = False, error: bool = False) -> None:
        icon = "<span class='imgsim-spinner'></span>" if busy else ""
        color = " style='color:#8a1c1c'" if error else ""
        cls = "imgsim-busy" if busy else ("imgsim-error" if error else "imgsim-idle")
        self.status.value = f"<div class='imgsim-status {cls}'{color}>{icon}<span>{_esc(text)}</span></div>"

    def _enable(self, on: bool) -> None:
        for w in (self.model, self.k, self.add, self.stored_id, self.stored_go, *self.compare.values()):
            w.disabled = not on
        self.drop.busy = self.upload.busy = not on

    def _refresh_facts(self) -> None:
        if self.session is not None:
            try:
                self.facts.value = render_facts(self.session.facts())
            except Exception as exc:  # noqa: BLE001
                log.warning("store facts unavailable: %s", exc)

    # ---------------------------------------------------------------- models
    @property
    def models(self) -> list[str]:
        """The models searched: the chosen one, then those ticked for comparison."""
        return [self.model.value, *[k for k, box in self.compare.items() if box.value]]

    def _start(self, model: str | None) -> None:
        assert self.session is not None
        keys = self.session.model_keys()
        self._refresh_facts()
        if not keys:
            self._set_status("The store holds no embeddings yet: ingest a collection first, e.g. "
                             f"`imgsim ingest cifar10:train --limit 1000 --kv {self.session.kv_url}`.",
                             error=True)
            self._enable(False)
            return
        note = ""
        if model and model not in keys:
            note = f"Model {model!r} has no embeddings in this store; using {keys[0]}. "
            model = None
        self.model.options = keys
        self.model.value = model or keys[0]
        self._build_compare(self._wanted_compare)
        self._switch(note)
        name, size = split_model_key(self.model.value)
        warm_up(name, size)

    def _build_compare(self, ticked: Sequence[str] = ()) -> None:
        """One checkbox per other stored model; ``ticked`` ones start checked."""
        keep = {k for k, b in self.compare.items() if b.value} | set(ticked)
        keep = set([k for k in self.model.options if k in keep and k != self.model.value][:MAX_MODELS - 1])
        self.compare = {}
        for key in self.model.options:
            if key == self.model.value:
                continue
            box = W.Checkbox(value=key in keep, description=key, indent=False,
                             layout=W.Layout(width="auto"))
            box.add_class("imgsim-compare-model")
            box.observe(self._on_compare, names="value")
            self.compare[key] = box
        self.compare_box.children = tuple(self.compare.values())

    def _on_model(self, change: dict) -> None:
        if change.get("new"):
            self._build_compare()
            self._switch()

    def _on_compare(self, change: dict) -> None:
        if self._quiet:
            return
        if change.get("new") and len(self.models) > MAX_MODELS:
            change["owner"].value = False
            self._set_status(f"Compare at most {MAX_MODELS} models at once.", error=True)
            return
        self._switch()

    def _on_k(self, change: dict) -> None:
        if change.get("new"):
            self._rerun()

    def _on_expand(self, change: dict) -> None:
        if self.session is not None:
            self.session.set_expansion(ExpansionConfig(self._expand_n if change.get("new") else 0))
            self._rerun()

    def _switch(self, note: str = "") -> None:
        """Load the chosen models, then re-run the current query with them."""
        assert self.session is not None
        keys = self.models
        self._enable(False)
        what = "their indexes" if len(keys) > 1 else "its index"
        self._set_status(f"Loading {', '.join(keys)} and {what}…", busy=True)
        ok = False
        try:
            self.session.use_models(keys)
            ok = True
        except Exception as exc:  # noqa: BLE001
            log.exception("models %s unavailable", keys)
            self._set_status(f"{note}Model {', '.join(keys)} unavailable: {type(exc).__name__}: {exc}",
                             error=True)
        finally:
            self._enable(True)
            self._refresh_facts()
        if ok:
            self._set_status(f"{note}Ready: {', '.join(keys)}. Drop images or choose files.",
                             error=bool(note))
            self._rerun()

    def _rerun(self) -> None:
        """Show the current query (the last batch, or the last stored image) again, not adding it."""
        if self._last is None or self.session is None or not self.session.searchers:
            return
        kind, what = self._last
        if kind == "files" and not what:  # only refused files: nothing to search again
            return
        if kind == "id":
            self.search_stored(int(what))  # type: ignore[arg-type]
        else:
            self.handle_files(what, add=False)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- actions
    def _on_drop(self, name: str, data: bytes | None, meta: dict) -> None:
        batch = meta.get("batch")
        total = int(meta.get("total", 1))
        if batch != self._batch["id"] or int(meta.get("index", 0)) == 0:
            self._clear()
            self._batch = {"id": batch, "total": total, "outcomes": [], "files": []}
        if data is None:
            limit = megabytes(int(meta.get("limit") or self.drop.max_bytes))
            size = int(meta.get("size") or 0)
            if meta.get("oversize"):
                why = f"it is {megabytes(size)}, over the upload limit of {limit}"
            else:
                why = f"the browser could not read it ({meta.get('error', 'unreadable')})"
            outcome = Outcome(name, "rejected", f"{name} was not uploaded: {why}.",
                              reason="too_large_bytes" if meta.get("oversize") else None)
            self._show(outcome)
            self._batch["outcomes"].append(outcome)
        else:
            self._batch["files"].append((name, data))
            position = f"({int(meta.get('index', 0)) + 1}/{total})"
            self._batch["outcomes"].append(self._process(name, data, position))
        self._last = ("files", list(self._batch["files"]))
        self._set_status(batch_status(self._batch["outcomes"], total),
                         error=all(o.status in ("rejected", "error") for o in self._batch["outcomes"]))

    def handle_files(self, files: Sequence[tuple[str, bytes]], add: bool | None = None) -> list[Outcome]:
        """Process uploaded ``(name, bytes)`` pairs as one batch; returns their outcomes."""
        self._clear()
        files = list(files)
        self._last = ("files", files)
        self._batch = {"id": None, "total": len(files), "outcomes": [], "files": files}
        outs = []
        for i, (name, data) in enumerate(files, 1):
            outs.append(self._process(name, data, f"({i}/{len(files)})", add=add))
            self._batch["outcomes"] = outs
        if outs:
            self._set_status(batch_status(outs, len(files)),
                             error=all(o.status in ("rejected", "error") for o in outs))
        return outs

    def search_stored(self, image_id: int) -> Outcome:
        """Search a stored image with every chosen model (its card replaces the results)."""
        self._clear()
        self._last = ("id", image_id)
        if self.session is None or not self.session.searchers:
            outcome = Outcome(f"#{image_id}", "error", "The app is not ready (see the message above).")
        else:
            self._enable(False)
            self._set_status(f"Searching stored image {image_id}…", busy=True)
            try:
                outcome = self.session.search_stored(image_id, k=int(self.k.value))
            finally:
                self._enable(True)
        self._show(outcome)
        self._set_status(f"Done: {outcome.message}", error=outcome.status == "error")
        return outcome

    def _process(self, name: str, data: bytes, position: str, add: bool | None = None) -> Outcome:
        if self.session is None or not self.session.searchers:
            outcome = Outcome(name, "error", "The app is not ready (see the message above).")
            self._show(outcome)
            return outcome
        self._enable(False)
        self._set_status(f"Embedding and searching {name} {position} with {', '.join(self.models)}…",
                         busy=True)
        try:
            outcome = self.session.handle_upload(name, data, k=int(self.k.value),
                                                 add=bool(self.add.value) if add is None else add)
            self._show(outcome)
        except Exception as exc:  # noqa: BLE001 - rendering problems, never a traceback
            log.exception("showing %s failed", name)
            outcome = Outcome(name, "error", f"{name}: {type(exc).__name__}: {exc}")
            self._show(outcome)
        finally:
            self._enable(True)
        self._refresh_facts()
        return outcome

    def _clear(self) -> None:
        self.outcomes = []
        self.results.children = ()

    def _show(self, outcome: Outcome) -> None:
        self.outcomes = (self.outcomes + [outcome])[-MAX_CARDS:]
        card = W.HTML(render_outcome(outcome, self.session))
        card.add_class(f"imgsim-outcome-{outcome.status}")
        self.results.children = (tuple(self.results.children) + (card,))[-MAX_CARDS:]

    def close(self) -> None:
        """Close the widgets and the store."""
        self.widget.close()
        if self.session is not None:
            self.session.close()
