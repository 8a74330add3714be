"""Hash-checked, atomic downloads of released files into the torch-hub cache.

A file is streamed to a unique temporary name in the cache folder and renamed into place only when it is
complete (Content-Length matched) and, if an expected SHA-256 was given, verified; an interrupted or failed
download never leaves a file under the final name, so simply running again is always safe. Every URL has a
default that an argument or an environment variable overrides (argument first), which lets users point at
mirrors and tests at a local server.
"""
import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import torch
from tqdm import tqdm

from density.fileio import atomic_path

CHUNK = 1 << 20  # 1 MiB read size: few syscalls, smooth progress bar
TIMEOUT_S = 60  # socket timeout per read; a stalled server is an error, not a hang


class DownloadError(RuntimeError):
    """A download that failed, was truncated, or does not match its expected SHA-256."""


def resolve(arg, env_var, default):
    """The value to use: `arg` if given, else environment variable `env_var` if set and non-empty, else `default`."""
    if arg:
        return arg
    return os.environ.get(env_var) or default


def cache_dir(model_dir=None) -> Path:
    """`model_dir`, or `<torch.hub.get_dir()>/checkpoints` as torch.hub uses."""
    return Path(model_dir) if model_dir else Path(torch.hub.get_dir()) / "checkpoints"


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha(actual, expected, what):
    if expected and actual.lower() != expected.lower():
        raise DownloadError(f"{what}: SHA-256 is {actual}, expected {expected}. The file is corrupt, truncated "
                            "or not the one intended; check the URL and the expected hash.")


def download(url, model_dir=None, sha256=None, progress=True, filename=None) -> Path:
    """Fetch `url` into the cache (see `cache_dir`) unless already there; return the local path.

    The file is named after the URL's last path component (or `filename`). With `sha256`, both a cached file
    and a fresh download are verified. Raises DownloadError naming the URL on a network error, a truncated
    transfer (fewer bytes than Content-Length) or a hash mismatch; the partial file is removed.
    """
    name = filename or Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise DownloadError(f"{url}: cannot derive a file name from this URL; pass filename=...")
    folder = cache_dir(model_dir)
    dest = folder / name
    if dest.is_file():
        _check_sha(sha256_of(dest), sha256, f"cached file {dest} (from {url}); delete it to download again")
        return dest
    with atomic_path(dest, suffix=".partial") as tmp:
        with open(tmp, "wb") as out:
            actual = _stream(url, out, progress, name)
        _check_sha(actual, sha256, f"download of {url}")
    return dest


def is_url(s) -> bool:
    return urllib.parse.urlparse(str(s)).scheme in ("http", "https", "file")


def fetch(path_or_url, model_dir=None, sha256=None, progress=True) -> Path:
    """A local path (checked to exist, and against `sha256` if given) or a URL (see `download`) -> local path."""
    if is_url(path_or_url):
        return download(path_or_url, model_dir, sha256, progress)
    path = Path(path_or_url)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    _check_sha(sha256_of(path), sha256, str(path))
    return path


def _stream(url, out, progress, name) -> str:
    """Copy `url` into the open file `out`; return the SHA-256 of what was written."""
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                      desc=name) as bar:
                while block := response.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
    except http.client.HTTPException as e:  # e.g. IncompleteRead: the server closed the connection early
        raise DownloadError(f"download of {url} was truncated after {received} bytes: {e!r}; try again") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DownloadError(f"download of {url} failed after {received} bytes: {e}") from e
    if total is not None and received != total:
        raise DownloadError(f"download of {url} was truncated: got {received} of {total} bytes; try again")
    return digest.hexdigest()
