"""The files lossdoctor writes.

Output paths checked before any computing starts, new files that never replace an existing one,
atomic writes that never follow a symlink out of their folder, and a fallback place when the final
write fails anyway, so a finished result is never lost.

- :func:`check_new_file` (``--plot``, ``--out``): the folder exists and is writable, the format
  is known, the file does not exist yet. Called before the computation.
- :func:`check_output_dir` (``--store``, ``tour --out``): a folder that exists, or can be made,
  and is writable.
- :func:`save_new`: writes a new file by exclusive creation; if that fails (the file appeared
  meanwhile, the folder went away or became read-only, the disk is full) the result goes beside
  it (``name-1.png``), else to the working folder, else to the temporary folder, and the path
  it went to is returned with a note saying why.
- :func:`atomic_write`: replaces ``folder/name`` through a temporary file in ``folder`` and a
  rename, so a reader sees the old file or the new one, never half of one; a symlink planted at
  ``name`` is replaced, not followed, and ``name`` cannot leave ``folder``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ._checks import describe
from ._extras import require

Writer = Callable[[IO[bytes]], object]


def _as_path(value: Any, option: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bytes):
        raise TypeError(
            f"{option} must be a path (a string or pathlib.Path), got {describe(value)}."
        )
    if str(value).strip() == "":
        raise ValueError(f"{option} is empty: name a file or folder.")
    return Path(value).expanduser()


def _check_writable(folder: Path, option: str, shown: Path) -> None:
    try:
        handle, name = tempfile.mkstemp(prefix=".lossdoctor-check-", dir=folder)
    except OSError as err:
        raise ValueError(
            f"{option} {shown}: cannot write in the folder {folder} ({err.strerror or err}). "
            "Choose a folder you can write to."
        ) from None
    os.close(handle)
    os.unlink(name)


def image_formats() -> list[str]:
    """The file extensions matplotlib can write (png, pdf, svg, ...)."""
    Figure = require("matplotlib.figure", "writing figures").Figure

    return sorted(Figure().canvas.get_supported_filetypes())


def check_new_file(
    value: Any, option: str, *, formats: list[str] | None = None, default: bool = False
) -> Path:
    """The path of a file to create, checked before any work.

    Its folder exists and is writable, its extension is one of ``formats`` (when given) and no file
    is there yet. With ``default=True`` (the user did not choose the name) an existing file is kept
    and the next free name (``name-2.png``) is returned instead of an error."""
    path = _as_path(value, option)
    if path.is_dir():
        raise ValueError(
            f"{option} {path} is a folder: name a file inside it, e.g. {path / 'plot.png'}."
        )
    if formats is not None:
        ext = path.suffix.lower().lstrip(".")
        if ext not in formats:
            shown = f"'.{ext}'" if ext else "no extension"
            raise ValueError(
                f"{option} {path}: the file format ({shown}) is not one lossdoctor can write; "
                f"end the name with one of {', '.join('.' + f for f in formats)}."
            )
    folder = path.parent
    if not folder.exists():
        raise ValueError(
            f"{option} {path}: the folder {folder} does not exist; create it first "
            f"(mkdir -p {folder}) or choose another path."
        )
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: {folder} is not a folder.")
    _check_writable(folder, option, path)
    if path.exists() or path.is_symlink():
        if default:
            return _free_name(path)
        raise ValueError(
            f"{option} {path} already exists, and lossdoctor never overwrites a file: choose "
            "another name or remove the file first."
        )
    return path


def check_output_dir(value: Any, option: str) -> Path:
    """A folder to write into.

    It exists (or its nearest existing parent does, and the folder is made when written) and is
    writable; an existing file there is an error."""
    path = _as_path(value, option)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{option} {path} is a file, not a folder: choose a folder (it is created if missing)."
        )
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(
            f"{option} {path}: {existing} is a file, so the folder cannot be made there."
        )
    _check_writable(existing, option, path)
    return path


def _free_name(path: Path) -> Path:
    for k in range(2, 10_000):
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
    raise ValueError(f"no free file name next to {path}.")


def _create(path: Path, write: Writer) -> None:
    """Create ``path`` exclusively (never through a symlink) and write it.

    Nothing is left behind if writing fails."""
    flags = (
        os.O_WRONLY
        | os.O_CREAT
        | os.O_EXCL
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_BINARY", 0)
    )
    handle = os.open(path, flags, 0o644)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def save_new(path: Path, write: Writer) -> tuple[Path, str | None]:
    """Write a new file at ``path``.

    ``(where it went, None)``, or, when ``path`` could not be written, ``(the fallback path, a note
    saying why)``. Raises only when no place at all could be written."""
    path = Path(path)
    folders: list[Path] = []
    for folder in (path.parent, Path.cwd(), Path(tempfile.gettempdir())):
        if folder.resolve() not in [f.resolve() for f in folders]:
            folders.append(folder)
    first_error: BaseException | None = None
    for folder in folders:
        for k in range(100):
            place = folder / (path.name if k == 0 else f"{path.stem}-{k}{path.suffix}")
            try:
                _create(place, write)
            except FileExistsError:
                first_error = first_error or FileExistsError(f"{path} appeared while computing")
                continue
            except OSError as err:
                first_error = first_error or err
                break  # this folder cannot be written: go on to the next one
            if place == path:
                return place, None
            reason = getattr(first_error, "strerror", None) or str(first_error)
            return place, f"could not write {path} ({reason}); saved to {place} instead."
    raise OSError(f"could not write {path} nor any fallback place ({first_error}).")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(folder: Path, name: str, write: Writer) -> Path:
    """Replace ``folder/name`` atomically; see the module docstring."""
    folder = Path(folder)
    if Path(name).name != name or name in ("", ".", ".."):
        raise ValueError(f"{name!r} is not a plain file name inside {folder}.")
    folder.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a report is a normal file
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(tmp, folder / name)  # renames over a symlink itself, never through it
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return folder / name


def atomic_write_text(folder: Path, name: str, text: str) -> Path:
    return atomic_write(folder, name, lambda stream: stream.write(text.encode("utf-8")))


def read_text_inside(folder: Path, name: str) -> str | None:
    """``folder/name`` as text, or ``None`` when it is missing, a symlink or unreadable.

    Files in an output folder are trusted only when they are what lossdoctor wrote there."""
    path = Path(folder) / name
    if path.is_symlink() or not path.is_file():
        return None
    try:
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(handle, "rb") as stream:
        try:
            return stream.read().decode("utf-8")
        except UnicodeDecodeError:
            return None
