"""A drop zone widget (anywidget): drop image files on it, or click it to choose some.

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
  const zone = document.createElement("div");
  zone.className = "imgsim-dropzone";
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
    zone.classList.toggle("imgsim-dz-busy", !!model.get("busy"));
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
                     size: f.size, type: f.type || "" };
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
  zone.addEventListener("click", () => input.click());
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
