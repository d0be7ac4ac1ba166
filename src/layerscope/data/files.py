"""Data sets given as files: text lines, CSV/TSV/JSONL tables, image folders, arrays.

- ``.txt``: one item per line; empty lines are skipped; no labels.
- ``.csv`` / ``.tsv`` / ``.jsonl``: the text column is the first of ``text``, ``sentence``,
  ``sentence1``, ``content`` (or ``text_column=``); the optional label column the first of
  ``label``, ``labels``, ``score`` (or ``label_column=``). Numbers with a fractional part are a
  regression target; integers and strings are classes.
- a folder of images: one subfolder per class (or images directly inside, unlabelled); options
  ``size`` (side or (H, W); needed when the images differ in size), ``mode`` (``RGB`` or ``L``)
  and ``pixels`` (``0-255``, the default, or ``0-1``). Needs Pillow.
- ``.npy`` / ``.npz`` / ``.safetensors``: an array of items (``items_key=``, default ``items``,
  ``x``, ``X``, ``inputs`` or the only array) and optional labels (``labels_key=``, default
  ``labels``, ``label``, ``y``, ``targets``).

Example:
    >>> import tempfile, pathlib
    >>> from layerscope.data.files import load_file
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "pairs.csv"
    >>> _ = path.write_text("sentence,label\\ngood film,pos\\ndull,neg\\n")
    >>> ds = load_file(path)
    >>> ds.items, ds.labels.tolist(), ds.classes
    (['good film', 'dull'], [1, 0], ['neg', 'pos'])
"""

from __future__ import annotations

import csv
import inspect
import io
import json
from pathlib import Path

import numpy as np
import torch

from layerscope.errors import LayerscopeError

from .dataset import Dataset, positive_int
from .labels import labels_from_tensor, labels_from_values

TEXT_COLUMNS = ("text", "sentence", "sentence1", "content")
LABEL_COLUMNS = ("label", "labels", "score")
ITEM_KEYS = ("items", "x", "X", "inputs")
LABEL_KEYS = ("labels", "label", "y", "targets")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
FILE_KINDS = ".txt, .csv, .tsv, .jsonl, .npy, .npz, .safetensors or a folder of images"


def is_file_ref(ref: str) -> bool:
    """Whether ``ref`` looks like a path rather than a built-in name."""
    return Path(ref).exists() or any(c in ref for c in "/\\") or Path(ref).suffix.lower() in {
        ".txt", ".csv", ".tsv", ".jsonl", ".npy", ".npz", ".safetensors"}


def load_file(path, **options) -> Dataset:
    """The data set in the file or folder ``path`` (see the module docstring for the kinds)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LayerscopeError(f"data file {str(path)!r} does not exist; give an existing file "
                              "or a built-in name (see `layerscope datasets`)")
    suffix = path.suffix.lower()
    if path.is_dir():
        loader, args = load_image_folder, (path,)
    elif suffix == ".txt":
        loader, args = load_text_lines, (path,)
    elif suffix in (".csv", ".tsv"):
        loader, args = load_table, (path, _read_csv(path))
    elif suffix == ".jsonl":
        loader, args = load_table, (path, _read_jsonl(path))
    elif suffix in (".npy", ".npz", ".safetensors"):
        loader, args = load_arrays, (path,)
    else:
        raise LayerscopeError(f"cannot read data from {path.name!r}: use {FILE_KINDS}")
    _reject_options(path, options, tuple(inspect.signature(loader).parameters)[len(args):])
    data = loader(*args, **options)
    if len(data) == 0:
        raise LayerscopeError(f"data file {str(path)!r} holds no items; give a file with data")
    return data


def _file_meta(path: Path, description: str) -> dict:
    return {"description": description, "source": str(path), "licence": "the file's own",
            "citation": None}


def _reject_options(path: Path, options: dict, allowed: tuple = ()):
    extra = sorted(set(options) - set(allowed))
    if extra:
        hint = f"this kind of file takes: {', '.join(allowed)}" if allowed else \
            "this kind of file takes no options"
        raise LayerscopeError(f"unknown option(s) {', '.join(extra)} for {path.name!r}; {hint}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LayerscopeError(
            f"{path.name!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc


def load_text_lines(path: Path) -> Dataset:
    """One item per non-empty line, no labels."""
    items = [line.rstrip("\r") for line in _read_text(path).split("\n") if line.strip()]
    meta = dict(_file_meta(path, f"text lines from {path.name}"), size=len(items))
    return Dataset(path.stem, items, None, modality="text", task=None, meta=meta)


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    text = _read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = [row for row in reader if any((v or "").strip() for v in row.values() if isinstance(v, str))]
    return list(reader.fieldnames or []), rows


def _read_jsonl(path: Path) -> tuple[list[str], list[dict]]:
    rows, columns = [], []
    for number, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LayerscopeError(f"{path.name!r} line {number} is not valid JSON ({exc.msg}); "
                                  "write one JSON object per line") from exc
        if not isinstance(row, dict):
            raise LayerscopeError(f"{path.name!r} line {number} is not a JSON object; write one "
                                  "object per line, e.g. {\"text\": \"...\", \"label\": 1}")
        columns += [k for k in row if k not in columns]
        rows.append(row)
    return columns, rows


def _pick_column(path, columns, wanted, candidates, what, required):
    if wanted is not None:
        if wanted not in columns:
            raise LayerscopeError(f"{path.name!r} has no column {wanted!r}; its columns are: "
                                  f"{', '.join(map(str, columns)) or 'none'}")
        return wanted
    lower = {str(c).lower(): c for c in columns}
    for name in candidates:
        if name in lower:
            return lower[name]
    if required:
        raise LayerscopeError(
            f"{path.name!r} has no {what} column ({'/'.join(candidates)}); its columns are: "
            f"{', '.join(map(str, columns)) or 'none'}; name one with {what}_column=NAME")
    return None


def load_table(path: Path, table, text_column=None, label_column=None) -> Dataset:
    """Texts (and labels) from the rows of a CSV or JSONL file."""
    columns, rows = table
    text_col = _pick_column(path, columns, text_column, TEXT_COLUMNS, "text", True)
    label_col = _pick_column(path, columns, label_column, LABEL_COLUMNS, "label", False)
    items, values = [], []
    for number, row in enumerate(rows, start=1):
        text = row.get(text_col)
        if not isinstance(text, str):
            raise LayerscopeError(f"{path.name!r} row {number}: column {text_col!r} is "
                                  f"{'missing' if text is None else type(text).__name__}, not text")
        items.append(text)
        if label_col is not None:
            value = row.get(label_col)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise LayerscopeError(f"{path.name!r} row {number} has no value in label column "
                                      f"{label_col!r}; fill it in or drop the row")
            values.append(value)
    labels, classes, task = labels_from_values(values) if label_col is not None and items \
        else (None, None, None)
    meta = dict(_file_meta(path, f"texts from column {text_col!r} of {path.name}"
                           + (f", labels from {label_col!r}" if label_col else "")), size=len(items))
    return Dataset(path.stem, items, labels, modality="text", task=task, classes=classes,
                   meta=meta)


def _pick_key(path, arrays: dict, wanted, candidates, what, required):
    if wanted is not None:
        if wanted not in arrays:
            raise LayerscopeError(f"{path.name!r} has no array {wanted!r}; it holds: "
                                  f"{', '.join(arrays) or 'nothing'}")
        return wanted
    for name in candidates:
        if name in arrays:
            return name
    if required:
        if len(arrays) == 1:
            return next(iter(arrays))
        raise LayerscopeError(f"{path.name!r} has no {what} array ({'/'.join(candidates)}); it "
                              f"holds: {', '.join(arrays) or 'nothing'}; name one with {what}_key=NAME")
    return None


def _read_arrays(path: Path) -> dict:
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file as load_safetensors

            return dict(load_safetensors(str(path)))
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:  # the readers raise many kinds of error for damaged files
        raise LayerscopeError(f"cannot read arrays from {path.name!r} ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else 'damaged file'}); "
                              "give a valid .npy/.npz/.safetensors file") from exc
    if suffix == ".npz":
        with loaded:
            return {k: torch.from_numpy(np.ascontiguousarray(loaded[k])) for k in loaded.files}
    return {"items": torch.from_numpy(np.ascontiguousarray(loaded))}


def load_arrays(path: Path, items_key=None, labels_key=None) -> Dataset:
    """Items (and labels) from a .npy, .npz or .safetensors file."""
    arrays = _read_arrays(path)
    items = arrays[_pick_key(path, arrays, items_key, ITEM_KEYS, "items", True)]
    key = _pick_key(path, arrays, labels_key, LABEL_KEYS, "labels", False)
    if items.dim() == 0:
        raise LayerscopeError(f"{path.name!r} holds a single number; give an array (N, ...) of items")
    if items.dtype.is_floating_point:
        items = items.to(torch.float32)
    elif items.dtype != torch.bool:
        items = items.to(torch.int64)
    labels, classes, task = labels_from_tensor(arrays[key]) if key is not None else \
        (None, None, None)
    if labels is not None and len(labels) != len(items):
        raise LayerscopeError(f"{path.name!r}: {len(items)} items but {len(labels)} labels in "
                              f"{key!r}; give one label per item")
    if not items.dtype.is_floating_point and items.dim() == 2:
        modality = "sequence"
    else:
        modality = "image" if items.dim() == 4 else "tensor"
    meta = dict(_file_meta(path, f"arrays from {path.name}: items {tuple(items.shape)}"
                           + (f", labels {key!r}" if key else "")), size=len(items))
    return Dataset(path.stem, items, labels, modality=modality, task=task, classes=classes,
                   meta=meta)


def load_image_folder(path: Path, size=None, mode: str = "RGB", pixels: str = "0-255") -> Dataset:
    """Images from ``path`` (class subfolders -> labels) as float32 ``(N, C, H, W)``."""
    try:
        from PIL import Image
    except ModuleNotFoundError as exc:
        raise LayerscopeError("reading a folder of images needs Pillow: pip install pillow") from exc
    if mode not in ("RGB", "L"):
        raise LayerscopeError(f"mode={mode!r}: use 'RGB' (3 channels) or 'L' (grayscale)")
    if pixels not in ("0-255", "0-1"):
        raise LayerscopeError(f"pixels={pixels!r}: use '0-255' or '0-1'")
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    groups = [(d.name, d) for d in subdirs] if subdirs else [(None, path)]
    files, names = [], []
    for label, folder in groups:
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += [(p, label) for p in found]
    if not files:
        raise LayerscopeError(f"folder {str(path)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                              "put images in it, one subfolder per class")
    if size is None:
        target = None
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        target = tuple(positive_int("size", s, "pixels, e.g. 224 or (224, 224)") for s in size)
    else:
        side = positive_int("size", size, "pixels, e.g. 224 or (224, 224)")
        target = (side, side)
    arrays = []
    for file, _ in files:
        try:
            with Image.open(file) as image:
                image = image.convert(mode)
                if target is not None:
                    image = image.resize((target[1], target[0]), Image.BILINEAR)
                arrays.append(np.asarray(image, dtype=np.float32))
        except OSError as exc:
            raise LayerscopeError(f"cannot read image {str(file)!r} ({exc}); remove or replace it") from exc
        names.append(str(file.relative_to(path)))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise LayerscopeError(f"the images in {str(path)!r} differ in size ({len(shapes)} sizes, e.g. "
                              f"{sorted(shapes)[0][:2]} and {sorted(shapes)[-1][:2]}); pass size=N to resize")
    x = torch.from_numpy(np.stack(arrays))
    x = x.unsqueeze(1) if mode == "L" else x.permute(0, 3, 1, 2).contiguous()
    if pixels == "0-1":
        x = x / 255.0
    labels = classes = task = None
    if subdirs:
        classes = [d.name for d in subdirs]
        index = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([index[label] for _, label in files], dtype=torch.int64)
        task = "classification"
    meta = dict(_file_meta(path, f"{len(files)} images from {path.name}/"
                           + (f" in {len(classes)} class folders" if classes else "")),
                size=len(files), pixels=pixels, files=names)
    return Dataset(path.name, x, labels, modality="image", task=task, classes=classes, meta=meta)
