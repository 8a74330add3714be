"""Hash-checked, atomic downloads of released files into the torch-hub cache.

A file is streamed to a unique temporary name in the cache folder and renamed into place only when it is
complete and plausible: Content-Length matched, not an HTML page, a zip archive (torch.save's format) that opens
with every member's CRC correct, and, if an expected SHA-256 was given, verified. An interrupted or failed download
never leaves a file under the final name, so simply running again is always safe; partial files of killed
downloads are removed by the next one. A download without data for IDLE_TIMEOUT_S, or running longer than
TOTAL_TIMEOUT_S (environment variable ASGAN_DOWNLOAD_TIMEOUT), fails. Every URL has a
default that an argument or an environment variable overrides (argument first), which lets users point at
mirrors and tests at a local server.
"""

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import torch
from tqdm import tqdm

from density.runtime.fileio import atomic_path, remove_stale_temporaries

CHUNK = 1 << 20  # 1 MiB read size: few syscalls, smooth progress bar
IDLE_TIMEOUT_S = 60  # socket timeout per read: a stalled server is an error, not a hang
TOTAL_TIMEOUT_S = 7200  # a server trickling bytes is an error too (ASGAN_DOWNLOAD_TIMEOUT overrides)
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


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
        raise DownloadError(
            f"{what}: SHA-256 is {actual}, expected {expected}. The file is corrupt, truncated "
            "or not the one intended; check the URL and the expected hash."
        )


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
    remove_stale_temporaries(folder)
    with atomic_path(dest, suffix=".partial") as tmp:
        with open(tmp, "wb") as out:
            actual = _stream(url, out, progress, name)
        _check_sha(actual, sha256, f"download of {url}")
        _check_content(tmp, url, name)
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


def _check_content(path, url, name):
    """Refuse an HTML page, a damaged zip archive (a short read without Content-Length ends up here) and, for a
    torch file name, anything that is neither a zip archive nor a legacy torch pickle."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.lstrip()[:9].lower().startswith((b"<!doctype", b"<html")):
        raise DownloadError(f"download of {url} is an HTML page, not {name}: check the URL (a login or error page?)")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            bad = f"{e}"
        if bad is not None:
            raise DownloadError(
                f"download of {url} is incomplete or corrupt (zip member {bad} fails its check); try again"
            )
    elif name.endswith(TORCH_SUFFIXES) and not head.startswith(b"\x80"):
        raise DownloadError(f"download of {url} is not a complete torch file (no zip directory: cut short?); try again")


def _stream(url, out, progress, name) -> str:
    """Copy `url` into the open file `out`; return the SHA-256 of what was written."""
    digest = hashlib.sha256()
    received = 0
    limit = float(os.environ.get("ASGAN_DOWNLOAD_TIMEOUT") or TOTAL_TIMEOUT_S)
    deadline = time.monotonic() + limit
    try:
        with urllib.request.urlopen(url, timeout=IDLE_TIMEOUT_S) as response:
            if response.headers.get_content_type() == "text/html":
                raise DownloadError(
                    f"download of {url} is an HTML page, not {name}: check the URL (a login or error page?)"
                )
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            read = getattr(response, "read1", response.read)  # returns what has arrived: the deadline is checked
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress, desc=name
            ) as bar:
                while block := read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
                    if time.monotonic() > deadline:
                        raise DownloadError(
                            f"download of {url} took over {limit:.0f} s ({received} bytes so far); "
                            "try again or raise ASGAN_DOWNLOAD_TIMEOUT (seconds)"
                        )
    except TimeoutError as e:
        raise DownloadError(
            f"download of {url} stalled: no data for {IDLE_TIMEOUT_S} s after {received} bytes; try again"
        ) from e
    except http.client.HTTPException as e:  # e.g. IncompleteRead: the server closed the connection early
        raise DownloadError(f"download of {url} was truncated after {received} bytes: {e!r}; try again") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DownloadError(f"download of {url} failed after {received} bytes: {e}") from e
    if total is not None and received != total:
        raise DownloadError(f"download of {url} was truncated: got {received} of {total} bytes; try again")
    return digest.hexdigest()
