"""Sources of images: CIFAR-10 (set up once under ``data/cifar10``) and plain folders.

``setup_cifar10`` accepts the JPEG zip mirror (``train|test/<class>/NNNN.jpg``), the
official ``cifar-10-python.tar.gz``, or downloads the latter with torchvision. It writes
``<dest>/{train,test}/<class>/NNNN.<ext>`` plus a ``.complete.json`` marker, extracting into
a temporary directory next to ``dest`` and renaming it at the end, so an interrupted run
never leaves a directory that looks complete.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from imgsim_lab.config import ENV_CIFAR10_SOURCE, cifar10_archive, data_dir
from imgsim_lab.images import sha256_file

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
#: Images per class in the full dataset.
FULL_PER_CLASS = {"train": 5000, "test": 1000}
MARKER = ".complete.json"
_TMP_PREFIX = ".tmp-"
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\.(jpg|jpeg|png)$", re.IGNORECASE)
_TAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_SOURCE_HINT = (f"pass --source PATH (the cifar10-jpeg.zip mirror or cifar-10-python.tar.gz) "
                f"or set {ENV_CIFAR10_SOURCE}")


class Cifar10SourceError(RuntimeError):
    """No usable CIFAR-10 source: missing file, unknown format or failed download."""


@dataclass(frozen=True)
class ImageItem:
    """One image to ingest: a stable ``source`` id, an optional label, its file."""

    source: str
    label: str | None
    path: Path | None = None

    def read_bytes(self) -> bytes:
        """The file's bytes."""
        if self.path is None:
            raise ValueError(f"item {self.source!r} has no file")
        return self.path.read_bytes()


def default_cifar10_source() -> Path | None:
    """The configured CIFAR-10 archive (:func:`imgsim_lab.config.cifar10_archive`) if it is a file."""
    path = cifar10_archive()
    return path if path is not None and path.is_file() else None


def is_complete(dest: Path) -> bool:
    """Whether ``dest`` holds a finished CIFAR-10 set-up (its marker file is readable)."""
    return read_marker(dest) is not None


def read_marker(dest: Path) -> dict[str, Any] | None:
    """The ``.complete.json`` contents, or None when absent or unreadable."""
    try:
        return json.loads((Path(dest) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- set-up


def setup_cifar10(dest: Path | None = None, source: str | Path | None = None,
                  progress: bool = True, force: bool = False,
                  require_full: bool = False) -> dict[str, Any]:
    """Set CIFAR-10 up under ``dest`` (default ``<data>/cifar10``) once; return a summary.

    ``source``: an archive path; default ``$IMGSIM_CIFAR10_SOURCE``, then the shared zip,
    then a torchvision download. A second run does nothing unless ``force``. Counts are
    checked against the archive; a full archive must give 5000/1000 images per class,
    and ``require_full`` also rejects partial archives.
    """
    t0 = time.perf_counter()
    dest = Path(dest) if dest is not None else data_dir() / "cifar10"
    marker = read_marker(dest)
    if marker is not None and not force:
        log.info("CIFAR-10 already set up in %s (from %s); skipping", dest, marker.get("source"))
        return {**_summary(marker), "dest": str(dest), "skipped": True,
                "seconds": round(time.perf_counter() - t0, 3)}
    if dest.exists() and not force and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists without {MARKER} (not a finished set-up); "
                              "remove it or use force=True / --force")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dl_prefix = f".{dest.name}{_TMP_PREFIX}{os.getpid()}-download-"
    with tempfile.TemporaryDirectory(prefix=dl_prefix, dir=dest.parent) as dl:
        archive = _resolve_source(source, Path(dl))
        label = ("torchvision download" if archive.is_relative_to(dl) else str(archive))
        marker = _extract_atomically(archive, label, dest, progress, require_full)
    log.info("CIFAR-10 set up in %s: %s", dest, marker["counts"])
    return {**_summary(marker), "dest": str(dest), "skipped": False,
            "seconds": round(time.perf_counter() - t0, 3)}


def _summary(marker: dict[str, Any]) -> dict[str, Any]:
    keys = ("counts", "per_class", "source", "source_sha256", "full", "format")
    return {k: marker.get(k) for k in keys}


def _resolve_source(source: str | Path | None, download_dir: Path) -> Path:
    """The archive to use: argument, env var, shared zip, else a torchvision download."""
    if source is None and os.environ.get(ENV_CIFAR10_SOURCE):
        source = os.environ[ENV_CIFAR10_SOURCE]
        log.info("using %s=%s", ENV_CIFAR10_SOURCE, source)
    if source is not None:
        path = Path(source).expanduser()
        if not path.is_file():
            raise Cifar10SourceError(f"CIFAR-10 source {path} is not a file")
        return path
    found = default_cifar10_source()
    if found is not None:
        log.info("using the local CIFAR-10 mirror %s", found)
        return found
    return _download(download_dir)


def _download(download_dir: Path) -> Path:
    """Download ``cifar-10-python.tar.gz`` with torchvision (needs internet)."""
    log.info("no local CIFAR-10 archive; downloading with torchvision into %s", download_dir)
    try:
        from torchvision.datasets import CIFAR10

        ds = CIFAR10(root=str(download_dir), train=True, download=True)
    except Exception as exc:  # any network/IO failure means "no source"
        raise Cifar10SourceError(f"downloading CIFAR-10 failed ({exc}); without internet, "
                                 f"{_SOURCE_HINT}") from exc
    return Path(ds.root) / "cifar-10-python.tar.gz"


def _remove_stale_tmp(dest: Path) -> None:
    """Delete temp dirs of earlier, interrupted runs whose process is gone."""
    for tmp in dest.parent.glob(f".{dest.name}{_TMP_PREFIX}*"):
        pid_text = tmp.name[len(dest.name) + 1 + len(_TMP_PREFIX):].split("-")[0]
        pid = int(pid_text) if pid_text.isdigit() else None
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        log.info("removing %s left by an interrupted run", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """A fresh ``.<dest>.tmp-<pid>-*`` next to ``dest`` (stale ones of dead processes removed
    first) to build a dataset in; removed when the body fails. Finish with :func:`publish`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_TMP_PREFIX}{os.getpid()}-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the renamed dataset should be readable
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish(tmp: Path, dest: Path, marker: dict[str, Any]) -> None:
    """Mark the staged dataset complete and rename it into place (an old ``dest`` goes)."""
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    _swap_into_place(tmp, dest)


def _extract_atomically(archive: Path, label: str, dest: Path, progress: bool,
                        require_full: bool) -> dict[str, Any]:
    """Extract into a staging directory next to ``dest``, check, mark, then rename."""
    sha = sha256_file(archive)
    with staging(dest) as tmp:
        if zipfile.is_zipfile(archive):
            fmt, expected = "jpeg-zip", _extract_zip(archive, tmp, progress)
        elif tarfile.is_tarfile(archive):
            fmt, expected = "python-tar", _extract_tar(archive, tmp, progress)
        else:
            raise Cifar10SourceError(f"{archive} is neither the CIFAR-10 JPEG zip nor "
                                     "cifar-10-python.tar.gz")
        per_class = _check_counts(tmp, expected, require_full)
        marker = {
            "source": label, "source_sha256": sha, "format": fmt,
            "counts": {s: sum(per_class[s].values()) for s in SPLITS},
            "per_class": per_class, "full": _is_full(per_class),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        publish(tmp, dest, marker)
    return marker


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest``; an old ``dest`` is moved aside first, then deleted."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}{_TMP_PREFIX}{os.getpid()}-old"
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)




def _zip_members(zf: zipfile.ZipFile) -> Iterator[tuple[zipfile.ZipInfo, str, str, str]]:
    """(info, split, class, file name) for members laid out as ``[prefix/]split/class/file``."""
    for info in zf.infolist():
        parts = info.filename.replace("\\", "/").split("/")
        if info.is_dir() or len(parts) < 3 or ".." in parts:
            continue
        split, cls, name = parts[-3:]
        if split in SPLITS and cls in CIFAR10_CLASSES and _MEMBER_NAME.match(name):
            yield info, split, cls, name
        else:
            log.debug("ignoring zip member %s", info.filename)


def cifar10_zip_images(split: str, archive: str | Path | None = None) -> list[tuple[str, bytes]]:
    """``(class, JPEG bytes)`` of one split read straight from a CIFAR-10 zip (default: the
    configured archive), in class then file-name order; nothing is extracted."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    path = Path(archive) if archive is not None else default_cifar10_source()
    if path is None or not path.is_file():
        raise Cifar10SourceError(f"no CIFAR-10 zip at {path}: pass its path or set the archive "
                                 "variable (see `imgsim setup-cifar10 --help`)")
    with zipfile.ZipFile(path) as zf:
        members = sorted((cls, name, info) for info, s, cls, name in _zip_members(zf) if s == split)
        return [(cls, zf.read(info)) for cls, _, info in members]


def _extract_zip(archive: Path, out: Path, progress: bool) -> Counter:
    """Extract the JPEG zip layout; member names are validated, never used as paths."""
    expected: Counter = Counter()
    with zipfile.ZipFile(archive) as zf:
        members = list(_zip_members(zf))
        if not members:
            raise Cifar10SourceError(f"{archive} has no train|test/<class>/<file> members")
        _make_class_dirs(out)
        seen: set[tuple[str, str, str]] = set()
        for info, split, cls, name in tqdm(members, desc="cifar10 zip", unit="img",
                                           disable=not progress):
            key = (split, cls, name.lower())
            if key in seen:
                raise Cifar10SourceError(f"{archive}: duplicate member {split}/{cls}/{name}")
            seen.add(key)
            (out / split / cls / name).write_bytes(zf.read(info))
            expected[(split, cls)] += 1
    return expected


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for the official CIFAR-10 batches, which hold numpy arrays and lists.

    Unpickling is used ONLY for that trusted archive format (as torchvision does); as
    defence in depth, no global other than numpy's array reconstruction may be loaded.
    """

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}")
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _load_batch(raw: bytes) -> tuple[np.ndarray, list[int]]:
    """(N x 32 x 32 x 3 uint8, labels) from one pickled batch (py2 pickle: encoding='bytes')."""
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = [int(x) for x in batch[b"labels"]]
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError,
            AttributeError) as exc:
        raise Cifar10SourceError(f"not a CIFAR-10 batch: {exc}") from exc
    data = data.transpose(0, 2, 3, 1)
    if any(not 0 <= x < len(CIFAR10_CLASSES) for x in labels):
        raise Cifar10SourceError("CIFAR-10 batch has labels outside 0..9")
    if len(labels) != len(data):
        raise Cifar10SourceError("CIFAR-10 batch has mismatched data and labels")
    return data, labels


def _extract_tar(archive: Path, out: Path, progress: bool) -> Counter:
    """Convert the official pickled batches to PNG files (tar members are never extracted)."""
    expected: Counter = Counter()
    with tarfile.open(archive, "r:*") as tf:
        batches = {Path(m.name).name: m for m in tf.getmembers() if m.isfile()}
        missing = [b for s in SPLITS for b in _TAR_BATCHES[s] if b not in batches]
        if missing:
            raise Cifar10SourceError(f"{archive} lacks CIFAR-10 batches {missing}")
        _make_class_dirs(out)
        bar = tqdm(desc="cifar10 tar", unit="img", disable=not progress)
        for split in SPLITS:
            for batch_name in _TAR_BATCHES[split]:
                f = tf.extractfile(batches[batch_name])
                if f is None:
                    raise Cifar10SourceError(f"{archive}: cannot read {batch_name}")
                data, labels = _load_batch(f.read())
                for pixels, label in zip(data, labels, strict=True):
                    cls = CIFAR10_CLASSES[label]
                    n = expected[(split, cls)]
                    Image.fromarray(pixels, "RGB").save(out / split / cls / f"{n:04d}.png")
                    expected[(split, cls)] += 1
                    bar.update()
        bar.close()
    return expected


def _make_class_dirs(out: Path) -> None:
    for split in SPLITS:
        for cls in CIFAR10_CLASSES:
            (out / split / cls).mkdir(parents=True, exist_ok=True)


def _count_files(root: Path) -> dict[str, dict[str, int]]:
    return {s: {c: sum(1 for p in (root / s / c).iterdir() if not p.name.startswith("."))
                for c in CIFAR10_CLASSES} for s in SPLITS}


def _is_full(per_class: dict[str, dict[str, int]]) -> bool:
    return all(per_class[s][c] == FULL_PER_CLASS[s] for s in SPLITS for c in CIFAR10_CLASSES)


def _check_counts(root: Path, expected: Counter, require_full: bool) -> dict[str, dict[str, int]]:
    """Files on disk must match the archive; a full-size archive must be exactly 5000/1000."""
    per_class = _count_files(root)
    for split in SPLITS:
        for cls in CIFAR10_CLASSES:
            if per_class[split][cls] != expected[(split, cls)]:
                raise Cifar10SourceError(f"{split}/{cls}: wrote {per_class[split][cls]} files, "
                                         f"archive has {expected[(split, cls)]}")
    totals = {s: sum(per_class[s].values()) for s in SPLITS}
    full_size = all(totals[s] == FULL_PER_CLASS[s] * len(CIFAR10_CLASSES) for s in SPLITS)
    if (full_size or require_full) and not _is_full(per_class):
        raise Cifar10SourceError(f"CIFAR-10 counts are wrong: {per_class} (expected "
                                 f"{FULL_PER_CLASS} per class)")
    if not full_size:
        log.warning("partial CIFAR-10 archive: %s images (full: 50000 train, 10000 test)",
                    totals)
    return per_class


# --------------------------------------------------------------------------- items


def cifar10_items(split: str = "train", root: Path | None = None, limit: int | None = None,
                  seed: int = 0) -> list[ImageItem]:
    """Items of a set-up CIFAR-10 split; with ``limit``, a seeded class-balanced subset.

    Each class gets ``limit // 10`` images (the remainder goes to classes picked by the
    seed); each class's choice is a prefix of its own seeded permutation, so a larger
    ``limit`` gives a superset. Sorted by ``source`` (``cifar10/<split>/<class>/<file>``).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    root = Path(root) if root is not None else data_dir() / "cifar10"
    if not is_complete(root):
        raise FileNotFoundError(f"CIFAR-10 is not set up in {root}; run `imgsim setup-cifar10`")
    files = {c: sorted(p for p in (root / split / c).iterdir() if not p.name.startswith("."))
             for c in CIFAR10_CLASSES}
    quotas = _balanced_quotas({c: len(v) for c, v in files.items()}, limit, seed)
    items = []
    for idx, cls in enumerate(CIFAR10_CLASSES):
        chosen = files[cls]
        if quotas[cls] < len(chosen):
            order = np.random.default_rng([seed, idx]).permutation(len(chosen))
            chosen = [chosen[i] for i in order[:quotas[cls]]]
        items += [ImageItem(f"cifar10/{split}/{cls}/{p.name}", cls, p) for p in chosen]
    return sorted(items, key=lambda it: it.source)


def _balanced_quotas(available: dict[str, int], limit: int | None, seed: int) -> dict[str, int]:
    """Per-class counts summing to ``min(limit, total)``, as equal as availability allows."""
    if limit is None:
        return dict(available)
    names = list(available)
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    quotas = dict.fromkeys(names, 0)
    remaining = min(limit, sum(available.values()))
    while remaining > 0:
        open_ = [c for c in order if quotas[c] < available[c]]
        share = max(1, remaining // len(open_))
        for cls in open_:
            give = min(share, available[cls] - quotas[cls], remaining)
            quotas[cls] += give
            remaining -= give
            if remaining == 0:
                break
    return quotas


def folder_items(root: Path | None = None, label_from_parent: bool = False,
                 recursive: bool = True) -> list[ImageItem]:
    """Every non-hidden regular file under ``root`` (default ``<data>/custom_images``).

    Not filtered by extension (validation recognizes content). ``source`` is
    ``<root name>/<relative path>``; with ``label_from_parent`` a file's label is its
    folder's name (None for files directly in ``root``). Sorted by ``source``.
    """
    root = Path(root).expanduser() if root is not None else data_dir() / "custom_images"
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"image folder {root} {what}")
    root = root.resolve()  # items keep absolute paths: the store records where each file is
    base = root.name or "images"
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        here = Path(dirpath)
        for name in filenames:
            path = here / name
            if name.startswith(".") or not path.is_file():  # hidden, FIFO, socket, dangling
                continue
            rel = path.relative_to(root).as_posix()
            label = here.name if label_from_parent and here != root else None
            items.append(ImageItem(f"{base}/{rel}", label, path))
    return sorted(items, key=lambda it: it.source)


def items_from_source(source: str | Path, limit: int | None = None, seed: int = 0,
                      root: Path | None = None,
                      label_from_parent: bool = True) -> list[ImageItem]:
    """Items from ``"cifar10"``, ``"cifar10:train"``, ``"cifar10:test"`` or a folder path.

    ``root`` overrides the CIFAR-10 directory. A folder with ``limit`` gives a seeded
    random subset (sorted).
    """
    text = str(source)
    if isinstance(source, str) and (text == "cifar10" or text.startswith("cifar10:")):
        split = text.partition(":")[2] or "train"
        return cifar10_items(split, root=root, limit=limit, seed=seed)
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    items = folder_items(Path(source), label_from_parent=label_from_parent)
    if limit is not None and limit < len(items):
        keep = np.random.default_rng(seed).permutation(len(items))[:limit]
        items = sorted((items[i] for i in keep), key=lambda it: it.source)
    return items


# --------------------------------------------------------------------------- finding files again


@dataclass(frozen=True)
class Located:
    """Where a stored image's file is: ``path`` when it is there, else why not (``missing``)."""

    path: Path | None
    missing: str | None = None  # the path that was recorded but is gone (moved or deleted)


def _under(source: str, root: Path) -> Path | None:
    """``root/source`` for a plain relative ``source`` (no ``..``, no absolute path, no drive)."""
    from pathlib import PurePosixPath

    if not source or "\x00" in source or "\\" in source or ":" in source:
        return None
    parts = PurePosixPath(source).parts
    if not parts or parts[0] == "/" or any(p in ("..", ".") for p in parts):
        return None
    return root.joinpath(*parts)


def locate(source: str | None, path: str | None, root: Path | None = None) -> Located:
    """Find a stored image's file: its recorded absolute ``path``, else ``source`` under ``root``.

    ``root`` defaults to the data directory (where CIFAR-10 and uploads live). Never raises.
    """
    root = data_dir() if root is None else Path(root)
    candidates = []
    if path:
        candidates.append(Path(path))
    if source:
        under = _under(source, root)
        if under is not None:
            candidates.append(under)
    for cand in candidates:
        try:
            if cand.is_file():
                return Located(cand)
        except OSError:
            continue
    return Located(None, missing=path or None)
