"""Atomic file output: a reader never sees a half-written file, a failure leaves none behind.

Commands check every output location before they compute anything (:func:`check_outputs`), so a
path that cannot be written is one line naming the option, not a traceback after minutes of work.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Type, Union

from .errors import TinySaverError

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
    if written_in_place(path):
        # Renaming a temporary file onto /dev/null (as root) would replace the device for the whole
        # machine; a pipe's reader would never see the data. Such a path is written where it is.
        try:
            f = open(path, mode)
        except OSError as exc:
            raise TinySaverError(f"{path}: cannot write here ({exc.strerror or exc})") from None
        with f:
            yield f
        return
    if path.is_symlink():  # write the link's target (the link stays a link), atomically beside it
        path = Path(os.path.realpath(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # the folder cannot be made or written: the user's path, one line
        raise TinySaverError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        try:
            os.replace(tmp, path)
        except OSError as exc:  # e.g. path is a directory
            raise TinySaverError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def written_in_place(path: PathLike) -> bool:
    """True for an output that must be written where it is, never replaced by a rename: an existing
    device, FIFO or socket (``/dev/null``, a named pipe) or a file descriptor's name (``/dev/stdout``,
    ``/proc/self/fd/1``).

    Examples:
        >>> written_in_place("/dev/null"), written_in_place("out.json")
        (True, False)
    """
    if os.path.abspath(path).startswith(("/dev/", "/proc/")):
        return os.path.exists(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:  # not there (yet): an ordinary new file
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


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


def writable_problem(path: PathLike, directory: bool = False) -> Optional[str]:
    """Why ``path`` cannot be written as a file (or, with ``directory``, made or filled as a
    folder), else None. Only a probe file is made (and removed) in the nearest existing folder on
    the way: permissions alone do not tell (root, read-only mounts, ``/proc``).

    Examples:
        >>> writable_problem("/proc/nope/out.json")  # doctest: +SKIP
        'cannot write in /proc ([Errno 2] No such file or directory)'
    """
    path = Path(path)
    if str(path) in ("", "."):
        return None if directory else "not a file name"
    if not directory and written_in_place(path):
        return None if os.access(path, os.W_OK) else "cannot write to it (permission denied)"
    if path.is_symlink():  # what is written is the link's target
        path = Path(os.path.realpath(path))
    if path.exists():
        if directory and not path.is_dir():
            return "exists and is not a folder"
        if not directory and path.is_dir():
            return "is a folder, not a file"
    folder = path if directory and path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".tinysaver-probe.", suffix=".tmp", dir=folder)
    except OSError as exc:
        return f"cannot write in {folder} ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(probe)
    return None


def check_outputs(outputs: Mapping[str, Optional[PathLike]], inputs: Sequence[Optional[PathLike]] = (),
                  directories: Sequence[str] = ()) -> None:
    """Refuses, before any work, output paths that cannot be written, that name an input file, or
    that two options share.

    Args:
        outputs: Option name → path (None: not asked for), e.g. ``{"--json": args.json}``.
        inputs: Files the command reads (an output must not overwrite one).
        directories: The options in ``outputs`` that name a folder to fill (``--out DIR``).

    Raises:
        TinySaverError: One line naming the option, the path and the problem.
    """
    read = {os.path.realpath(p) for p in inputs if p is not None}
    seen: dict = {}
    for option, path in outputs.items():
        if path is None:
            continue
        problem = writable_problem(path, directory=option in directories)
        if problem:
            raise TinySaverError(f"{option} {path}: {problem}")
        real = os.path.realpath(path)
        if real in read:
            raise TinySaverError(f"{option} {path}: is also an input of this command; it would be overwritten")
        if real in seen and not written_in_place(path):  # two outputs may both go to /dev/null
            raise TinySaverError(f"{option} {path}: also given to {seen[real]}; give each output its own file")
        seen[real] = option


#: Paths this process creates while a :func:`remove_created_on_error` block runs (one set per block).
_RECORDERS: List[Set[str]] = []
_AUDIT_HOOKED = False
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def _record_created(event: str, args: tuple) -> None:
    # A sys.addaudithook hook (it cannot be removed): cheap when no block is active, never raises.
    if not _RECORDERS:
        return
    try:
        if event == "open":
            path, mode, flags = args
            if not (isinstance(flags, int) and flags & _WRITE_FLAGS) and not (
                    isinstance(mode, str) and any(c in mode for c in "wax+")):
                return
        elif event == "os.mkdir":
            path = args[0]
        elif event in ("os.rename", "os.replace"):
            path = args[1]
        else:
            return
        if isinstance(path, (str, bytes, os.PathLike)):
            made = os.path.abspath(os.fsdecode(path))
            for recorder in _RECORDERS:
                recorder.add(made)
    except Exception:  # noqa: BLE001 - an audit hook must never break the operation it watches
        pass


@contextlib.contextmanager
def remove_created_on_error(folder: PathLike,
                            errors: Tuple[Type[BaseException], ...] = (TinySaverError,)) -> Iterator[None]:
    """Removes what the block created under ``folder`` (the folder too, if it made it) when the
    block raises one of ``errors``: a run refused for bad input leaves no log, config dump or half
    result behind (e.g. mmengine's Runner creates its work_dir before it builds the model).

    Only what this process made during the block goes (recorded with an audit hook: files opened for
    writing, folders made, rename targets): files that were there before, and files another program
    wrote meanwhile (a parallel run in the same work_dir), are never touched; a folder that still
    holds such a file stays. Other errors (bugs) keep their files.
    """
    global _AUDIT_HOOKED
    if not _AUDIT_HOOKED:
        sys.addaudithook(_record_created)
        _AUDIT_HOOKED = True
    folder = Path(os.path.abspath(folder))
    top = folder  # the outermost folder this block would create
    while not top.parent.exists() and top.parent != top.parent.parent:
        top = top.parent
    before = set(top.rglob("*")) | {top} if top.exists() else set()
    created: Set[str] = set()
    _RECORDERS.append(created)
    try:
        yield
    except errors:
        after = set(top.rglob("*")) | {top} if top.exists() else set()
        for path in sorted(after - before, key=lambda p: len(p.parts), reverse=True):  # deepest first
            if str(path) not in created:
                continue
            if path.is_dir() and not path.is_symlink():
                with contextlib.suppress(OSError):  # not empty: another program's file is inside
                    path.rmdir()
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        raise
    finally:
        del _RECORDERS[next(i for i, r in enumerate(_RECORDERS) if r is created)]  # this block's, by identity
