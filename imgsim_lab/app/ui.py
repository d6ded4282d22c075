"""The search app's widgets: upload (drop zone or file chooser), controls, feedback, results."""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Sequence

import ipywidgets as W

from imgsim_lab.app.dropzone import DropZone
from imgsim_lab.app.session import Outcome, SearchSession, data_uri
from imgsim_lab.images import Limits

log = logging.getLogger(__name__)

MAX_K = 50
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
.imgsim-results { display: flex; flex-wrap: wrap; gap: 12px; }
.imgsim-result { width: 140px; font-size: 12px; }
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
    index = facts.get("index") or {}
    rows = []
    for key, m in sorted(facts.get("models", {}).items()):
        mode = index.get("mode", "") if index.get("model") == key else ""
        rows.append(f"<tr><td>{_esc(key)}</td><td>{m['count']}</td><td>{m['dim']}</td>"
                    f"<td>{_esc(mode) or '&ndash;'}</td></tr>")
    return (f"<div class='imgsim-facts'><div><b>{facts.get('images', 0)}</b> images in "
            f"<code>{_esc(facts.get('url', '?'))}</code> (namespace <code>{_esc(facts.get('namespace', '?'))}"
            f"</code>)</div><table><tr><th>model</th><th>images</th><th>dim</th><th>index</th></tr>"
            f"{''.join(rows)}</table></div>")


def render_outcome(outcome: Outcome, session: SearchSession | None) -> str:
    """One upload as an HTML card: its preview and feedback, then its matches."""
    status = _esc(outcome.status)
    query = [f"<img alt='{_esc(outcome.name)}' src='{data_uri(outcome.preview)}'>" if outcome.preview else "",
             f"<div class='imgsim-feedback imgsim-{status}'>{_esc(outcome.message)}</div>"]
    query += [f"<div class='imgsim-note'>{_esc(n)}</div>" for n in outcome.notes]
    matches = []
    r = outcome.result
    if r is not None:
        query.append(f"<div class='imgsim-meta'>{_esc(r.info.format)} {r.info.width}&times;{r.info.height}"
                     f" &middot; {r.seconds:.2f} s &middot; top {len(r.matches)} by cosine</div>")
        for m in r.matches:
            rec = m.record
            source = rec.source if rec else "?"
            thumb = session.match_thumbnail(m.id, source) if session and rec else None
            img = (f"<img alt='{_esc(source)}' src='{data_uri(thumb)}'>" if thumb
                   else "<div class='imgsim-noimg'>no preview</div>")
            matches.append(f"<div class='imgsim-result' data-id='{m.id}'>{img}"
                           f"<div class='imgsim-score'>{m.score:.4f}</div>"
                           f"<div class='imgsim-label'>{_esc(rec.label if rec and rec.label else '-')}</div>"
                           f"<div class='imgsim-source' title='{_esc(source)}'>#{m.id} {_esc(source)}"
                           "</div></div>")
        if not r.matches:
            matches.append("<div class='imgsim-meta'>No other images in the collection.</div>")
    return (f"<div class='imgsim-card imgsim-card-{status}'><div class='imgsim-query'>{''.join(query)}</div>"
            f"<div class='imgsim-results'>{''.join(matches)}</div></div>")


class SearchApp:
    """Upload images, see their nearest stored images. ``app.display()`` shows it."""

    def __init__(self, kv_url: str | None = None, namespace: str | None = None, model: str | None = None,
                 k: int = 5, add_uploads: bool = True, data_dir: str | os.PathLike[str] | None = None,
                 limits: Limits | None = None) -> None:
        self.session: SearchSession | None = None
        self.outcomes: list[Outcome] = []
        self.status = W.HTML(layout=W.Layout(min_height="24px"))
        self.status.add_class("imgsim-status-box")
        self.facts = W.HTML()
        self.results = W.VBox()
        self.model = W.Dropdown(description="Model", options=[], layout=W.Layout(width="340px"))
        self.k = W.BoundedIntText(value=max(1, min(int(k), MAX_K)), min=1, max=MAX_K, description="Top k",
                                  layout=W.Layout(width="160px"))
        self.add = W.Checkbox(value=bool(add_uploads), description="Add uploads to the collection",
                              indent=False)
        self.upload = W.FileUpload(accept="", multiple=True, description="Choose files")
        self.drop = DropZone()
        self.upload.observe(self._on_upload, names="value")
        self.drop.on_files(self._on_drop)
        self.widget = self._layout()
        try:
            self.session = SearchSession(kv_url, namespace, data_dir=data_dir, limits=limits)
            self._start(model)
        except Exception as exc:  # noqa: BLE001 - shown in the app, not as a traceback
            log.exception("search app set-up failed")
            self._set_status(f"Cannot start: {type(exc).__name__}: {exc}", error=True)
            self._enable(False)
            return
        self.model.observe(self._on_model, names="value")

    # ----------------------------------------------------------------- layout
    def _layout(self) -> W.Widget:
        head = W.HTML(_STYLE + "<div class='imgsim-title'>Image similarity search</div>"
                      "<div class='imgsim-subtitle'>Upload one or several images: each is validated, "
                      "embedded and compared by cosine similarity with the collection.</div>")
        controls = W.VBox([self.model, W.HBox([self.k, self.add]), W.HBox([self.upload]), self.drop],
                          layout=W.Layout(width="520px", grid_gap="6px"))
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
        for w in (self.model, self.k, self.add, self.upload):
            w.disabled = not on
        self.drop.busy = not on

    def _refresh_facts(self) -> None:
        if self.session is not None:
            try:
                self.facts.value = render_facts(self.session.facts())
            except Exception as exc:  # noqa: BLE001
                log.warning("store facts unavailable: %s", exc)

    # ---------------------------------------------------------------- actions
    def _start(self, model: str | None) -> None:
        assert self.session is not None
        keys = self.session.model_keys()
        self._refresh_facts()
        if not keys:
            self._set_status("The store holds no embeddings yet: ingest a collection first, e.g. "
                             "`imgsim ingest cifar10:train --limit 1000`.", error=True)
            self._enable(False)
            return
        if model and model not in keys:
            self._set_status(f"Model {model!r} has no embeddings in this store; using {keys[0]}.", error=True)
            model = None
        self.model.options = keys
        self.model.value = model or keys[0]
        self._switch(self.model.value)

    def _on_model(self, change: dict) -> None:
        if change.get("new"):
            self._switch(change["new"])

    def _switch(self, key: str) -> None:
        assert self.session is not None
        self._enable(False)
        self._set_status(f"Loading {key} and its index…", busy=True)
        try:
            self.session.use_model(key)
            self._set_status(f"Ready: {key}. Drop images or choose files.")
        except Exception as exc:  # noqa: BLE001
            log.exception("model %s unavailable", key)
            self._set_status(f"Model {key} unavailable: {type(exc).__name__}: {exc}", error=True)
        finally:
            self._enable(True)
            self._refresh_facts()

    def _on_upload(self, change: dict) -> None:
        files = change.get("new") or ()
        if not files:
            return
        try:
            items = [(str(f.get("name", "file")), bytes(f.get("content", b""))) for f in files]
            self.handle_files(items)
        finally:
            self.upload.value = ()  # choosing the same file again fires again

    def _on_drop(self, name: str, data: bytes | None, meta: dict) -> None:
        if int(meta.get("index", 0)) == 0:
            self._clear()
        total = int(meta.get("total", 1))
        if data is None:
            oversize = bool(meta.get("oversize"))
            why = "it is over the upload limit" if oversize else str(meta.get("error", "unreadable"))
            self._show(Outcome(name, "rejected", f"{name} was not uploaded: {why} "
                               f"({meta.get('size', '?')} bytes).",
                               reason="too_large_bytes" if oversize else None))
            return
        self._process(name, data, f"({int(meta.get('index', 0)) + 1}/{total})")

    def handle_files(self, files: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        """Process uploaded ``(name, bytes)`` pairs as one batch; returns their outcomes."""
        self._clear()
        return [self._process(name, data, f"({i}/{len(files)})") for i, (name, data) in enumerate(files, 1)]

    def _process(self, name: str, data: bytes, position: str) -> Outcome:
        if self.session is None or self.session.searcher is None:
            outcome = Outcome(name, "error", "The app is not ready (see the message above).")
            self._show(outcome)
            return outcome
        self._enable(False)
        self._set_status(f"Embedding and searching {name} {position}…", busy=True)
        try:
            outcome = self.session.handle_upload(name, data, k=int(self.k.value), add=bool(self.add.value))
            self._show(outcome)
        except Exception as exc:  # noqa: BLE001 - rendering problems, never a traceback
            log.exception("showing %s failed", name)
            outcome = Outcome(name, "error", f"{name}: {type(exc).__name__}: {exc}")
            self._show(outcome)
        finally:
            self._enable(True)
        self._set_status(f"Done: {outcome.message}", error=outcome.status in ("rejected", "error"))
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
