"""Where layerscope writes: output folders it may use, output files it may replace.

Nothing a command writes may delete or overwrite a file the user made. Every output location is
checked before the computation starts, so a bad ``-o`` or ``--plot`` fails in a second, not
after the work:

* :func:`claim_dir` readies an output folder (:func:`check_dir` only checks it). A missing or empty folder is created and marked
  with a small ``.layerscope.json`` (``{"kind": ..., "version": 1, "files": [...]}``); a folder
  marked with the same kind is reused (the writer replaces only the files it lists); anything
  else is refused unless ``force=True``.
* :func:`check_out_file` checks one output file (``--plot``, ``--lens-out`` ...): not a folder,
  in an existing writable folder, with an accepted suffix, and an existing file is replaced only
  when layerscope wrote it (it carries :data:`TOKEN` in its metadata) or ``force=True``.
* :func:`write_atomic` / :func:`save_figure` write a file whole or not at all; a figure carries
  :data:`TOKEN` so a later run recognises it as its own.
* :func:`publish_dir` moves a finished staging folder into a claimed folder.

Example:
    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> claim_dir(root / "rep", "report").name
    'rep'
    >>> claim_dir(root / "rep", "report").name  # ours: fine again
    'rep'
    >>> claim_dir(root / "rep", "model")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    layerscope.errors.LayerscopeError: output folder ... holds layerscope report output, not model output; pass --force to write there anyway, or another -o
    >>> write_atomic(root / "note.txt", "hi")
    >>> check_out_file(root / "note.txt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    layerscope.errors.LayerscopeError: ...note.txt' exists and was not written by layerscope; pass --force to replace it, or name another file
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .errors import LayerscopeError

MARKER = ".layerscope.json"
VERSION = 1
TOKEN = "layerscope-output"
"""Written into the metadata of files layerscope makes (PNG text, safetensors/JSON metadata)."""

_FIGURE_KEYS = {".png": "Software", ".pdf": "Creator", ".svg": "Creator"}
_SCAN_HEAD = 1 << 20
_SCAN_TAIL = 1 << 16


# -- folders ------------------------------------------------------------------------------------
def read_marker(path) -> dict | None:
    """The marker of a folder layerscope wrote (``None`` when it has none or it is unreadable)."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or not isinstance(marker.get("kind"), str):
        return None
    return marker


def check_dir(path, kind: str, *, force: bool = False,
              recognise: Callable[[Path], object] | None = None) -> Path:
    """What :func:`claim_dir` checks, without creating or marking anything (for a check before
    the work when the folder should appear only once there is something to write)."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise LayerscopeError(f"output {str(folder)!r} is a file, not a folder; pass another -o")
    if not folder.is_dir():
        ancestor = folder.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise LayerscopeError(f"cannot create output folder {str(folder)!r}: "
                                  f"{str(ancestor)!r} is a file; pass another -o")
        _check_writable(ancestor, folder)
        return folder
    marker = read_marker(folder)
    found = marker.get("kind") if marker else None
    if found != kind and not force:
        if found is not None:
            raise LayerscopeError(
                f"output folder {str(folder)!r} holds layerscope {found} output, not {kind} "
                f"output; pass --force to write there anyway, or another -o")
        if any(folder.iterdir()) and not (recognise is not None and recognise(folder)):
            raise LayerscopeError(
                f"output folder {str(folder)!r} is not empty and was not written by layerscope "
                f"({kind}); pass --force to write there anyway, or another -o")
    _check_writable(folder)
    return folder


def claim_dir(path, kind: str, *, force: bool = False,
              recognise: Callable[[Path], object] | None = None) -> Path:
    """Make folder ``path`` ready for layerscope output of ``kind``; returns it.

    Missing or empty: created and marked. Marked with ``kind``: reused. ``recognise(path)``
    (optional) accepts an output of ``kind`` written before folders were marked; when it returns
    a list of relative paths, those are recorded as layerscope's own files. Anything else
    (user files, another kind's output) raises :class:`LayerscopeError` unless ``force=True``.
    A file at ``path`` or an unwritable folder always raises.
    """
    folder = check_dir(path, kind, force=force, recognise=recognise)
    files: list = []
    if folder.is_dir():
        marker = read_marker(folder)
        if marker is not None and marker.get("kind") == kind:
            return folder
        if marker is None and recognise is not None:
            known = recognise(folder)
            if isinstance(known, (list, tuple)):
                files = [Path(f).as_posix() for f in known]
    else:
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            raise LayerscopeError(f"cannot create output folder {str(folder)!r}: "
                                  f"{exc.strerror or exc}; pass another -o") from None
    _write_marker(folder, kind, files)
    return folder


def written_files(folder) -> list[str]:
    """The files (relative paths) layerscope recorded writing into a claimed folder."""
    marker = read_marker(folder)
    files = marker.get("files", []) if marker else []
    return [f for f in files if isinstance(f, str) and _inside(Path(folder), f)]


def note_written(folder, paths: Iterable, *, replace: bool = False) -> None:
    """Record ``paths`` (inside ``folder``) as written by layerscope in the folder's marker.

    ``replace=True`` makes them the whole list (an output rewritten from scratch).
    """
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        raise LayerscopeError(f"{str(folder)!r} was not claimed for output (no {MARKER})")
    names = [] if replace else list(marker.get("files", []))
    for p in paths:
        rel = Path(p).resolve().relative_to(folder.resolve()).as_posix() if Path(p).is_absolute() \
            else Path(p).as_posix()
        if rel not in names:
            names.append(rel)
    _write_marker(folder, marker["kind"], names)


def remove_written(folder, keep: Iterable[str] = ()) -> list[str]:
    """Delete the files a previous run recorded in ``folder`` (never anything else).

    Folders emptied by it are removed too; returns the relative paths deleted.
    """
    folder = Path(folder)
    keep = {Path(k).as_posix() for k in keep}
    removed = []
    for rel in written_files(folder):
        if rel in keep:
            continue
        target = folder / rel
        if target.is_file() or target.is_symlink():
            target.unlink()
            removed.append(rel)
            parent = target.parent
            while parent != folder and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    marker = read_marker(folder)
    if marker is not None:
        _write_marker(folder, marker["kind"], [f for f in written_files(folder) if f in keep])
    return removed


def publish_dir(staging, target, kind: str) -> Path:
    """Move the finished folder ``staging`` into ``target`` (claimed for ``kind``).

    When ``target`` holds only layerscope's own files (or does not exist), the folders are
    swapped whole: a reader sees the old output or the new one, never a mix. Otherwise (a forced
    folder with the user's files in it) each new file replaces its namesake, the files the old
    output listed are removed, and the user's files stay. ``staging`` is gone afterwards.
    """
    staging, target = Path(staging), Path(target)
    new_files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*")
                       if p.is_file() and p.name != MARKER)
    if not target.exists() or _only_ours(target):
        _write_marker(staging, kind, new_files)
        _swap(staging, target)
        return target
    remove_written(target, keep=new_files)
    for rel in new_files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, dest)
    shutil.rmtree(staging, ignore_errors=True)
    note_written(target, new_files)
    return target


def staging_dir(target) -> Path:
    """A fresh hidden folder beside ``target`` to build an output in before :func:`publish_dir`."""
    target = Path(target).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


# -- files --------------------------------------------------------------------------------------
def check_out_file(path, *, force: bool = False, suffixes: tuple = ()) -> Path:
    """An output file, checked before the computation; returns it as a ``Path``.

    Not a folder; its folder exists and is writable; its suffix is one of ``suffixes`` (when
    given); an existing file is replaced only when layerscope wrote it or ``force=True``.
    """
    file = Path(path).expanduser()
    if file.is_dir():
        raise LayerscopeError(f"{str(file)!r} is a folder; name a file inside it "
                              f"(e.g. {str(file / ('out' + (suffixes[0] if suffixes else '')))!r})")
    if suffixes and file.suffix.lower() not in tuple(s.lower() for s in suffixes):
        raise LayerscopeError(f"{str(file)!r} needs one of the suffixes {', '.join(suffixes)}; "
                              f"e.g. {str(file.with_suffix(suffixes[0]))!r}")
    parent = file.parent
    if not parent.is_dir():
        raise LayerscopeError(f"cannot write {str(file)!r}: the folder {str(parent)!r} does not "
                              f"exist; create it first or name another file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise LayerscopeError(f"cannot write {str(file)!r}: no permission to write in "
                              f"{str(parent)!r}; name another file")
    if file.exists() and not force and not is_layerscope_file(file):
        raise LayerscopeError(f"{str(file)!r} exists and was not written by layerscope; pass "
                              f"--force to replace it, or name another file")
    return file


def is_layerscope_file(path) -> bool:
    """Whether layerscope wrote the file ``path`` (its metadata carries :data:`TOKEN`)."""
    token = TOKEN.encode()
    try:
        with open(path, "rb") as fh:
            head = fh.read(_SCAN_HEAD)
            if token in head:
                return True
            size = fh.seek(0, os.SEEK_END)
            if size <= _SCAN_HEAD:
                return False
            fh.seek(max(size - _SCAN_TAIL, _SCAN_HEAD))
            return token in fh.read()
    except OSError:
        return False


def write_atomic(path, data) -> None:
    """Write ``data`` (``bytes`` or ``str``) to ``path`` whole: a temp file beside it, then a rename."""
    target = Path(path).expanduser()
    payload = data.encode() if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig, path, *, dpi: int = 110) -> Path:
    """Save a matplotlib figure to ``path`` (format from the suffix) marked as layerscope's."""
    import io

    target = Path(path).expanduser()
    suffix = target.suffix.lower() or ".png"
    key = _FIGURE_KEYS.get(suffix)
    buf = io.BytesIO()
    fig.savefig(buf, format=suffix.lstrip("."), dpi=dpi,
                metadata={key: TOKEN} if key else None)
    write_atomic(target, buf.getvalue())
    return target


FIGURE_SUFFIXES = tuple(_FIGURE_KEYS)


# -- helpers ------------------------------------------------------------------------------------
def _check_writable(folder: Path, wanted: Path | None = None) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        what = f"cannot create output folder {str(wanted)!r}: " if wanted is not None else ""
        raise LayerscopeError(f"{what}no permission to write in {str(folder)!r}; pass another -o")


def _write_marker(folder: Path, kind: str, files: list[str]) -> None:
    text = json.dumps({"kind": kind, "version": VERSION, "files": files}, indent=1) + "\n"
    try:
        write_atomic(folder / MARKER, text)
    except OSError as exc:
        raise LayerscopeError(f"cannot write in output folder {str(folder)!r}: "
                              f"{exc.strerror or exc}; pass another -o") from None


def _inside(folder: Path, rel: str) -> bool:
    path = Path(rel)
    return not path.is_absolute() and ".." not in path.parts


def _only_ours(folder: Path) -> bool:
    if read_marker(folder) is None:
        return not any(folder.iterdir())
    listed = set(written_files(folder))
    for p in folder.rglob("*"):
        if p.is_file() and p.name != MARKER and p.relative_to(folder).as_posix() not in listed:
            return False
    return True


def _swap(staging: Path, target: Path) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old.rmdir()
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["MARKER", "TOKEN", "FIGURE_SUFFIXES", "claim_dir", "check_dir", "check_out_file", "write_atomic",
           "save_figure", "publish_dir", "staging_dir", "read_marker", "written_files",
           "note_written", "remove_written", "is_layerscope_file"]
