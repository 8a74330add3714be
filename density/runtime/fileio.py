"""Atomic file writing: every output goes to a temporary file in its folder and is renamed into place.

Temporaries are hidden files `.<name>.<host>-<pid>.<random><suffix>`; the file gets the mode a plain `open`
would give (0o666 less the umask) before the rename. `remove_stale_temporaries` deletes those left behind by
killed writers. Write failures (disk full, no permission) raise WriteError naming the path and the fix.
"""

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import torch

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would create
TEMP_SUFFIXES = (".tmp", ".partial", ".png")
STALE_AGE_S = 3600  # a temporary of another host (or of unknown owner) untouched this long is stale
_TEMP = re.compile(r"\.(?P<target>.+?)\.(?:(?P<host>\w+)-(?P<pid>\d+)\.)?[a-z0-9_]{8}(?:\.tmp|\.partial|\.png)")


class WriteError(OSError):
    """An output that could not be written; the message names the path, the cause and what to do."""


def _host():
    return re.sub(r"\W", "_", socket.gethostname())


def _write_error(path, e):
    folder = Path(path).parent
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free there"
    except OSError:
        free = "free space unknown"
    return WriteError(
        f"{path}: cannot write ({type(e).__name__}: {e}); check the free space ({free}) and "
        f"write permission of {folder}, then run again"
    )


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp"):
    """Yield a temporary path next to `path` (its folder is created); on success it replaces `path`, on any
    error it is removed. Readers never see a half-written `path`. `suffix` keeps extension-sniffing writers
    (matplotlib) working. OSError and torch's RuntimeError from the writer become WriteError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_host()}-{os.getpid()}.", suffix=suffix)
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        yield tmp
        os.replace(tmp, path)
    except WriteError:
        raise
    except OSError as e:
        raise _write_error(path, e) from e
    except RuntimeError as e:  # torch.save's zip writer reports a full disk as 'unexpected pos 128 vs 0'
        if "inline_container" not in str(e):
            raise
        raise _write_error(path, e) from e
    finally:
        Path(tmp).unlink(missing_ok=True)


def is_temporary(path):
    """True for a file named like a temporary of `atomic_path`."""
    return _TEMP.fullmatch(Path(path).name) is not None and Path(path).is_file()


def is_stale_temporary(path):
    """True for a temporary of `atomic_path` whose writer is gone: on this host a dead pid, else (another host,
    or a name without the owner) untouched for STALE_AGE_S."""
    m = _TEMP.fullmatch(Path(path).name)
    if m is None:
        return False
    if m["host"] == _host():
        try:
            os.kill(int(m["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False
    try:
        return time.time() - os.stat(path).st_mtime > STALE_AGE_S
    except FileNotFoundError:
        return False


def remove_stale_temporaries(folder, recursive=False):
    """Delete the stale temporaries (see is_stale_temporary) in `folder` (and below); -> number removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.rglob(".*") if recursive else folder.glob(".*"):
        if p.suffix in TEMP_SUFFIXES and is_temporary(p) and is_stale_temporary(p):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def save_torch(obj, path):
    """Atomic torch.save."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, newline="")


def load_torch(path, what):
    """torch.load(weights_only=True) on the CPU; any failure is a ValueError naming `path` and `what` it should
    be (torch raises anything from IndexError to UnpicklingError on a foreign or truncated file)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file (expected {what})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]  # torch's advice runs to 6 lines
        detail = next((line for line in lines if "Unpickler error" in line), lines[0] if lines else "")
        raise ValueError(
            f"{path}: not a readable {what} (truncated, corrupt or another kind of file?): {type(e).__name__}: {detail}"
        ) from e


def read_keyed(path, key, what):
    """A cache file written as {**key, ...} -> (its dict when every entry of `key` matches, else None; whether
    `path` holds something else). No file: (None, False). An unreadable file or one of another key: (None, True),
    which callers leave alone (they neither trust nor replace it)."""
    if not Path(path).exists():
        return None, False
    try:
        cached = load_torch(path, what)
    except ValueError:
        return None, True
    if isinstance(cached, dict) and all(cached.get(k) == v for k, v in key.items()):
        return cached, False
    return None, True
