"""File I/O of the core: the one atomic writer and the one checked reader.

What this is: ``write_atomic`` (bytes or text) and ``write_atomic_with`` (a callback writes the
temporary path, e.g. ``pq.write_table`` or ``torch.save``) share one strategy: a temporary file in
the target's folder, written, flushed and fsynced, then ``os.replace``d over the target, so a
reader sees the old file or the new one, never half of one; the temporary file is removed if
anything fails. ``read_checked`` reads a file through a parser and turns a missing file or any
parse failure into one line naming the file (``InputError`` by default, ``SpecError`` for specs);
``read_json`` is it for JSON.
What it is not: a format library; callers parse (json, yaml, torch) and check the content.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from nfs_orchestrator.errors import InputError, PosenfsError

T = TypeVar("T")


def write_atomic_with(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Lets ``write(tmp)`` fill a temporary file beside ``path``, fsyncs it, and renames it to
    ``path`` (creating the folder). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Writes ``data`` (text as UTF-8) to ``path`` atomically (see the module doc)."""
    body = data.encode() if isinstance(data, str) else data
    return write_atomic_with(path, lambda tmp: tmp.write_bytes(body))


def read_checked(
    path: str | Path,
    parse: Callable[[Path], T],
    *,
    error: type[PosenfsError] = InputError,
    missing: str = "no such file",
    failure: Callable[[Exception], str] | None = None,
) -> T:
    """``parse(path)``, where a missing file and any exception of ``parse`` become one-line
    ``error``s naming the file: ``"<path>: <missing>"``, ``"<path>: <failure(exc)>"``.

    ``failure`` words the parse error (default ``"cannot read: <first line of exc>"``); a
    ``PosenfsError`` raised by ``parse`` itself passes unchanged.
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: {missing}")
    try:
        return parse(p)
    except PosenfsError:
        raise
    except Exception as e:
        words = failure(e) if failure is not None else f"cannot read: {first_line(e)}"
        raise error(f"{p}: {words}") from None


def first_line(e: Exception) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(e).splitlines()
    return text[0] if text else type(e).__name__


def read_json(path: str | Path) -> Any:
    """A JSON file's value; a missing, unreadable or malformed file is a one-line ``InputError``."""

    def failure(e: Exception) -> str:
        if isinstance(e, json.JSONDecodeError):
            return f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        return f"cannot read: {e}"

    def parse(p: Path) -> Any:
        with open(p, "rb") as f:
            return json.load(f)

    return read_checked(path, parse, failure=failure)
