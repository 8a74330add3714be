"""Where a command may write: every output path derived from an input name stays inside the command's output
folder, two inputs never map to one output, and a file this invocation did not create is replaced only with
`--overwrite`; a file written at the end of a run (a results JSON) is a writable path. Each rule is checked for
all outputs before any work starts, so a refused run writes nothing."""

import os
from collections.abc import Iterable
from pathlib import Path


class OutputError(ValueError):
    """An output that would escape its folder, collide with another, or replace a file without --overwrite."""


def confined(folder, relative, source=None) -> Path:
    """folder / relative, refused (OutputError naming `source`) unless it resolves to a path inside folder."""
    folder = Path(folder)
    relative = Path(relative)
    target = (folder / relative).resolve()
    if relative.is_absolute() or ".." in relative.parts or not target.is_relative_to(folder.resolve()):
        raise OutputError(
            f"{source or relative}: its output {relative} would lie outside {folder}; rename the input "
            "(a name may not contain '..' or start with '/')"
        )
    return folder / relative


def add_overwrite_flag(parser, replaces, refused_before):
    """Add --overwrite (what plan_outputs' `overwrite` takes) to an argparse parser or group; its help names what
    it `replaces` and what a refused run comes before, e.g. 'wavs already in --out_dir', 'the model loads'."""
    parser.add_argument(
        "--overwrite", action="store_true", help=f"replace {replaces} (default: refuse before {refused_before})"
    )


def plan_outputs(folder, outputs: Iterable[tuple[object, Path]], *, overwrite: bool) -> list[Path]:
    """Check (source, output relative to folder) pairs before any work; -> the output paths, in order.

    Refused with one OutputError: an output outside folder, two sources with one output, or (without overwrite)
    an output that exists already.
    """
    paths, sources = [], {}
    for source, relative in outputs:
        path = confined(folder, relative, source)
        if path in sources and sources[path] != source:
            raise OutputError(
                f"{sources[path]} and {source} would both be written to {path}: rename one of them or give only one"
            )
        sources[path] = source
        paths.append(path)
    if not overwrite:
        existing = [p for p in sources if p.exists()]
        if existing:
            more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
            raise OutputError(
                f"{existing[0]}{more} exists already: give --overwrite to replace it, or choose another output folder"
            )
    return paths


def writable_file(path, flag) -> Path:
    """A file path the command will write at the end, checked before any work: refused (OutputError naming `flag`)
    when it is a directory, lies below a file, or its nearest existing folder is not writable."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a directory; give a file path, e.g. {flag} {path / 'results.json'}")
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir():
        raise OutputError(f"{flag} {path} lies below the file {folder}; give a path in a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(
            f"{flag} {path}: cannot write in {folder} (no write permission); choose another path or make "
            f"{folder} writable"
        )
    return path
