"""A drop zone widget (anywidget): drop image files on it, or click it to choose some.

The same widget in ``mode="button"`` is the app's "Choose files" button. Both refuse a
file over ``max_bytes`` in the browser, before reading it (Python gets its name, size and
the limit), so an oversize file never reaches the kernel's websocket, which would drop
the connection.

Each file is sent to Python as one custom message whose single binary buffer holds the
file's bytes; register a handler with :meth:`DropZone.on_files`. Works wherever
anywidget does (JupyterLab, Notebook 7, Voila).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anywidget
import traitlets

log = logging.getLogger(__name__)

#: Largest file sent over the kernel's websocket (Tornado's default message limit is 10 MiB).
TRANSPORT_MAX_BYTES = 10 * 1024 * 1024 - 64 * 1024

FileHandler = Callable[[str, bytes | None, dict], None]

_ESM = r"""
function render({ model, el }) {
  const button = model.get("mode") === "button";
  const zone = document.createElement(button ? "button" : "div");
  zone.className = button ? "imgsim-choose jupyter-button widget-button" : "imgsim-dropzone";
  zone.tabIndex = 0;
  zone.setAttribute("role", "button");
  const title = document.createElement("div");
  title.className = "imgsim-dz-title";
  const sub = document.createElement("div");
  sub.className = "imgsim-dz-sub";
  const input = document.createElement("input");
  input.type = "file";
  input.multiple = true;
  input.style.display = "none";
  zone.append(title, sub, input);
  el.appendChild(zone);

  const show = () => {
    title.textContent = model.get("label");
    sub.textContent = model.get("hint");
    sub.style.display = model.get("hint") ? "" : "none";
    zone.classList.toggle("imgsim-dz-busy", !!model.get("busy"));
    if (button) zone.disabled = !!model.get("busy");
  };
  model.on("change:label", show);
  model.on("change:hint", show);
  model.on("change:busy", show);
  show();

  async function send(files) {
    const list = Array.from(files || []);
    if (!list.length) return;
    const batch = `${Date.now()}-${Math.random().toString(36).slice(2)}`;
    for (let i = 0; i < list.length; i++) {
      const f = list[i];
      const meta = { kind: "file", batch, index: i, total: list.length, name: f.name,
                     size: f.size, type: f.type || "", limit: model.get("max_bytes") };
      // refused here, before reading: an oversize message would drop the kernel connection
      if (f.size > model.get("max_bytes")) {
        model.send({ ...meta, oversize: true });
        continue;
      }
      try {
        model.send(meta, undefined, [await f.arrayBuffer()]);
      } catch (err) {
        model.send({ ...meta, error: String(err) });
      }
    }
  }
  const over = (e) => {
    e.preventDefault();
    e.stopPropagation();
    if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
    zone.classList.add("imgsim-dz-over");
  };
  const leave = () => zone.classList.remove("imgsim-dz-over");
  zone.addEventListener("dragenter", over);
  zone.addEventListener("dragover", over);
  zone.addEventListener("dragleave", leave);
  zone.addEventListener("dragend", leave);
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    e.stopPropagation();
    leave();
    send(e.dataTransfer && e.dataTransfer.files);
  });
  zone.addEventListener("click", (e) => { e.preventDefault(); input.click(); });
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  input.addEventListener("click", (e) => e.stopPropagation());
  input.addEventListener("change", () => { send(input.files).then(() => { input.value = ""; }); });
}
export default { render };
"""

_CSS = """
.imgsim-dropzone { border: 2px dashed #8a94a6; border-radius: 10px; padding: 22px 16px;
  text-align: center; cursor: pointer; background: #f7f9fc; color: #334; user-select: none;
  transition: background .15s, border-color .15s; min-width: 260px; }
.imgsim-dropzone:hover, .imgsim-dropzone:focus { border-color: #3b6fd8; outline: none; }
.imgsim-dropzone.imgsim-dz-over { background: #e4edff; border-color: #3b6fd8; }
.imgsim-dropzone.imgsim-dz-busy { opacity: .65; }
.imgsim-dz-title { font-size: 15px; font-weight: 600; }
.imgsim-dz-sub { font-size: 12px; color: #667; margin-top: 4px; }
.imgsim-choose { padding: 0 14px; height: 30px; cursor: pointer; }
.imgsim-choose .imgsim-dz-title { font-size: 13px; font-weight: 500; }
.imgsim-choose.imgsim-dz-over { outline: 2px solid #3b6fd8; }
"""


class DropZone(anywidget.AnyWidget):
    """Drop files here (or click to choose); Python receives ``(name, bytes, meta)`` per file.

    ``bytes`` is None when the browser did not send them (``meta["oversize"]`` for files
    over ``max_bytes``, ``meta["error"]`` when reading failed).
    """

    _esm = _ESM
    _css = _CSS
    label = traitlets.Unicode("Drop images here").tag(sync=True)
    hint = traitlets.Unicode("or click to choose files (JPEG, PNG, WebP, BMP, GIF, TIFF)").tag(sync=True)
    busy = traitlets.Bool(False).tag(sync=True)
    #: ``zone`` (a large drop target) or ``button`` (a "Choose files" button; drops work too).
    mode = traitlets.Unicode("zone").tag(sync=True)
    max_bytes = traitlets.Int(TRANSPORT_MAX_BYTES).tag(sync=True)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._handlers: list[FileHandler] = []
        self.on_msg(self._on_custom_msg)

    def on_files(self, handler: FileHandler) -> None:
        """Call ``handler(name, data, meta)`` for each file dropped or chosen."""
        self._handlers.append(handler)

    def _on_custom_msg(self, _widget: object, content: dict, buffers: list) -> None:
        if not isinstance(content, dict) or content.get("kind") != "file":
            return
        data = bytes(buffers[0]) if buffers and not content.get("oversize") else None
        name = str(content.get("name") or "file")
        for handler in self._handlers:
            handler(name, data, content)
