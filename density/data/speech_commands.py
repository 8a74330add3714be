"""The Speech Commands archive (Warden 2018): download, verify and safely extract it into a folder.

    fetch_speech_commands("data/speech_commands", version="0.02")   # what split_data.py --download DIR runs

The archive (`speech_commands_v0.0X.tar.gz`, about 2.3 GB for v0.02 and 1.4 GB for v0.01) is downloaded into
the folder with `density.runtime.download.download_resumable`: a partial download is kept as `<archive>.partial`
and continued by the next run with an HTTP Range request, and the file gets its final name only when its SHA-256
is the pinned one. Only then is it extracted, after every member has been checked: a link, a device or any
other non-regular member, or a name that leaves the folder (absolute, or with `..`), refuses the whole archive
before anything is written. A damaged archive (whose hash was overridden) is refused the same way.
`.<archive>.extracted` records a finished extraction (the archive's SHA-256), so a re-run skips both steps
and the archive may then be deleted. The archive's members sit at its top level (`./zero/...wav`,
`./validation_list.txt`, ...), so the folder becomes the `--root_path` of split_data.py.

The URL and the hash can be overridden (argument first, then ASGAN_SPEECH_COMMANDS_URL and
ASGAN_SPEECH_COMMANDS_SHA256), e.g. for a mirror or a local copy served over HTTP.
"""

import os
import tarfile
import zlib
from pathlib import Path

from density.runtime.download import download_resumable, resolve
from density.runtime.fileio import write_text

URL_ENV, SHA_ENV = "ASGAN_SPEECH_COMMANDS_URL", "ASGAN_SPEECH_COMMANDS_SHA256"
# The official archives, with the SHA-256 that torchaudio pins for them (torchaudio/datasets/speechcommands.py,
# _CHECKSUMS, github.com/pytorch/audio). They could not be checked against the files here (no internet).
ARCHIVES = {
    "0.02": (
        "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
        "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
    ),
    "0.01": (
        "http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz",
        "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
    ),
}
VERSIONS = tuple(ARCHIVES)


class ArchiveError(ValueError):
    """An archive that is not extracted: damaged, or with a member that is not a plain file or folder or that
    would be written outside the target folder."""


def archive_name(version):
    return f"speech_commands_v{version}.tar.gz"


def fetch_speech_commands(folder, version="0.02", url=None, sha256=None, progress=True) -> Path:
    """Download (resuming), verify and extract Speech Commands `version` into `folder` unless done. -> folder.

    Raises DownloadError (network, truncated transfer, wrong SHA-256) or ArchiveError; in both cases
    nothing is extracted.
    """
    if version not in ARCHIVES:
        raise ValueError(f"Speech Commands version {version!r}: expected one of {', '.join(VERSIONS)}")
    default_url, default_sha = ARCHIVES[version]
    url, sha256 = resolve(url, URL_ENV, default_url), resolve(sha256, SHA_ENV, default_sha)
    folder = Path(folder)
    marker = folder / f".{archive_name(version)}.extracted"
    if marker.is_file() and marker.read_text().strip() == sha256.lower():
        print(f"{folder}: Speech Commands v{version} is already extracted here")
        return folder
    archive = download_resumable(url, folder / archive_name(version), sha256, progress)
    extract_safely(archive, folder)
    write_text(marker, sha256.lower() + "\n")
    return folder


def _problem(member, target):
    """Why `member` of a tar archive must not be extracted into the absolute folder `target`, or None."""
    if member.issym() or member.islnk():
        return f"is a link (to {member.linkname!r})"
    if not (member.isfile() or member.isdir()):
        return "is a device, pipe or other special file"
    path = os.path.realpath(os.path.join(target, member.name))  # through links already on disk, too
    if os.path.isabs(member.name) or os.path.commonpath([target, path]) != target:
        return "would be written outside the folder"
    return None


def checked_members(tar, archive, target):
    """Every member of the open `tar`, each checked (see `_problem`) -> list of TarInfo; ArchiveError
    names the first bad one or the damage that stopped the reading."""
    try:
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ArchiveError(
            f"{archive}: not a complete tar.gz archive ({type(e).__name__}: {e}); nothing was extracted. "
            "Delete it and run again"
        ) from e
    for member in members:
        problem = _problem(member, target)
        if problem is not None:
            raise ArchiveError(
                f"{archive}: refused, member {member.name!r} {problem}; nothing was extracted. The official "
                "archive has only plain files and folders: check where the file came from"
            )
    return members


def extract_safely(archive, folder):
    """Extract the tar.gz `archive` into `folder` after checking every member (`checked_members`); tarfile's
    'data' filter (Python >= 3.10.12) guards the extraction as well."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = os.path.realpath(folder)
    print(f"extracting {archive} into {folder}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = checked_members(tar, archive, target)
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(target, members=members, **safe)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise ArchiveError(f"{archive}: extraction failed ({type(e).__name__}: {e}); run again") from e
    return folder
