"""Writing a command's output file so an interrupted run never leaves a truncated file
that looks complete: write beside the target, rename at the end."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

from django.core.management.base import CommandError

T = TypeVar("T")


def write_atomically(path: Path, write: Callable[[IO], T], *, text: bool = False) -> T:
    """Call `write(file)` on a temporary file beside `path` (binary, or UTF-8 text with
    `text`), then rename it to `path`; on any error the temporary file is removed and
    `path` is untouched. Returns what `write` returned."""
    directory = path.resolve().parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise CommandError(f"Cannot write in {directory}: {exc.strerror}") from None
    try:
        opened = os.fdopen(fd, "w", encoding="utf-8", newline="") if text else os.fdopen(fd, "wb")
        with opened as out:
            result = write(out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result
