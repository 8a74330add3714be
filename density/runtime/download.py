"""Hash-checked, atomic downloads of released files into the torch-hub cache.

A file is streamed to a unique temporary name in the cache folder and renamed into place only when it is
complete and plausible: Content-Length matched, not an HTML page, a zip archive (torch.save's format) that opens
with every member's CRC correct, and, if an expected SHA-256 was given, verified. An interrupted or failed download
never leaves a file under the final name, so simply running again is always safe; partial files of killed
downloads are removed by the next one. A download without data for IDLE_TIMEOUT_S, or running longer than
TOTAL_TIMEOUT_S (environment variable ASGAN_DOWNLOAD_TIMEOUT), fails. Every URL has a
default that an argument or an environment variable overrides (argument first), which lets users point at
mirrors and tests at a local server.

`download_resumable` is for large files (datasets): it keeps the partial file `<dest>.partial` across runs and
continues it with an HTTP Range request; a server that ignores the range (status 200) sends the file again from
byte 0. The SHA-256 is required and checked before the file gets its final name; a mismatch removes the partial.
"""

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import sys
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
    return _digest_of(path).hexdigest()


def _digest_of(path):
    """A hashlib SHA-256 object fed with the bytes of the file `path` (more can be added)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest


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
    with _network_errors(url, out):
        with urllib.request.urlopen(url, timeout=IDLE_TIMEOUT_S) as response:
            _refuse_html(response, url, name)
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            _copy_body(response, out, digest, url, name, total=total, progress=progress)
    if total is not None and out.tell() != total:
        raise DownloadError(f"download of {url} was truncated: got {out.tell()} of {total} bytes; try again")
    return digest.hexdigest()


def _refuse_html(response, url, name):
    if response.headers.get_content_type() == "text/html":
        raise DownloadError(f"download of {url} is an HTML page, not {name}: check the URL (a login or error page?)")


@contextlib.contextmanager
def _network_errors(url, out):
    """Turn the network errors of a transfer into DownloadError naming `url` and the bytes in `out` so far."""
    try:
        yield
    except TimeoutError as e:
        raise DownloadError(
            f"download of {url} stalled: no data for {IDLE_TIMEOUT_S} s after {out.tell()} bytes; try again"
        ) from e
    except http.client.HTTPException as e:  # e.g. IncompleteRead: the server closed the connection early
        raise DownloadError(f"download of {url} was truncated after {out.tell()} bytes: {e!r}; try again") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DownloadError(f"download of {url} failed after {out.tell()} bytes: {e}") from e


def _copy_body(response, out, digest, url, name, *, total, progress, initial=0):
    """Append the response body to the open file `out` and to `digest`, within the overall time limit.

    total: the file's size in bytes for the progress bar (None: unknown); initial: bytes the bar starts from.
    """
    limit = float(os.environ.get("ASGAN_DOWNLOAD_TIMEOUT") or TOTAL_TIMEOUT_S)
    deadline = time.monotonic() + limit
    read = getattr(response, "read1", response.read)  # returns what has arrived: the deadline is checked
    with tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress, desc=name
    ) as bar:
        while block := read(CHUNK):
            out.write(block)
            digest.update(block)
            bar.update(len(block))
            if time.monotonic() > deadline:
                raise DownloadError(
                    f"download of {url} took over {limit:.0f} s ({out.tell()} bytes so far); "
                    "try again or raise ASGAN_DOWNLOAD_TIMEOUT (seconds)"
                )


def download_resumable(url, dest, sha256, progress=True) -> Path:
    """Fetch `url` to the path `dest` unless it is there; continue `<dest>.partial` of an earlier run. -> dest.

    The partial file is appended to from its end with an HTTP Range request; a server that answers 200 instead
    of 206 (no range support) sends the whole file, which replaces the partial. A transfer that stops early
    (network error, stall, overall time limit, fewer bytes than announced) raises DownloadError and keeps the
    partial for the next run. A complete file whose SHA-256 is not `sha256` is removed (DownloadError); one
    that matches is renamed to `dest`. An existing `dest` is checked against `sha256`. One download per `dest`
    at a time (a lock on the partial).
    """
    if not sha256:
        raise ValueError(f"download_resumable({url}): an expected SHA-256 is required")
    dest = Path(dest)
    if dest.is_file():
        _check_sha(sha256_of(dest), sha256, f"{dest} (from {url}); delete it to download again")
        return dest
    partial = dest.with_name(dest.name + ".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "ab") as out:
        try:
            fcntl.flock(out, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"{partial}: another process is downloading it; wait for it to finish") from None
        try:
            digest = _continue(url, out, _digest_of(partial), dest.name, progress)
        except DownloadError as e:
            if out.tell() == 0:  # nothing to continue from
                partial.unlink(missing_ok=True)
                raise
            raise DownloadError(f"{e} ({out.tell()} bytes are kept in {partial}: run again to continue)") from e
    actual = digest.hexdigest()
    if actual.lower() != sha256.lower():
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"download of {url}: SHA-256 is {actual}, expected {sha256}; the file was removed. It is corrupt or not "
            "the one intended: check the URL and the expected hash, then run again"
        )
    os.replace(partial, dest)
    return dest


def _continue(url, out, digest, name, progress):
    """Append the rest of `url` to `out` (open for appending, holding what `digest` has seen), resuming at its
    end with a Range request, or from byte 0 (`out` truncated) where the server sends the whole file.
    -> the SHA-256 object of everything in `out`."""
    offset = out.seek(0, os.SEEK_END)
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with _network_errors(url, out):
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=IDLE_TIMEOUT_S)
        except urllib.error.HTTPError as e:
            if e.code != 416 or not offset:  # 416: nothing after `offset`; the partial may be complete (checked)
                raise
            e.close()
            return digest
        with response:
            _refuse_html(response, url, name)
            start, total = _range_of(response, offset)
            if start != offset:
                out.seek(0)
                out.truncate()
                digest = hashlib.sha256()
                if start is None:
                    raise DownloadError(
                        f"download of {url}: asked for bytes {offset}- and got "
                        f"'{response.headers.get('Content-Range')}': the partial file was emptied"
                    )
                if offset:
                    print(f"{url}: the server does not resume (HTTP Range); downloading from byte 0", file=sys.stderr)
            _copy_body(response, out, digest, url, name, total=total, progress=progress, initial=start)
    if total is not None and out.tell() != total:
        raise DownloadError(f"download of {url} was truncated: got {out.tell()} of {total} bytes")
    return digest


def _range_of(response, offset):
    """-> (the byte the body starts at, the file's whole size or None) of a response to a request from `offset`;
    start None for a 206 answer that is not the range asked for."""
    length = response.headers.get("Content-Length")
    if getattr(response, "status", None) != 206:
        return 0, int(length) if length is not None else None
    m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (response.headers.get("Content-Range") or "").strip())
    if m is None or int(m[1]) != offset:
        return None, None
    return offset, int(m[2]) if m[2] != "*" else None
