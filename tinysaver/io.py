"""Atomic file output: a reader never sees a half-written file, a failure leaves none behind."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Opens a temporary file beside ``path`` and renames it onto ``path`` only on success.

    Args:
        path: The final file.
        mode: ``"w"`` (text) or ``"wb"`` (binary).

    Examples:
        >>> with atomic_open("out.json") as f:  # doctest: +SKIP
        ...     f.write("{}")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: PathLike, obj: Any) -> None:
    """Writes ``obj`` as indented JSON, atomically (NaN is refused: it is not JSON)."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
        f.write("\n")


def write_text(path: PathLike, text: str) -> None:
    """Writes ``text`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)
