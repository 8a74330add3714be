"""Atomic file writing: every output goes to a temporary file in its folder and is renamed into place."""
import contextlib
import os
import tempfile
from pathlib import Path

import torch


@contextlib.contextmanager
def atomic_path(path, suffix='.tmp'):
    """Yield a temporary path next to `path` (its folder is created); on success it replaces `path`, on any
    error it is removed. Readers never see a half-written `path`. `suffix` keeps extension-sniffing writers
    (matplotlib) working."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_torch(obj, path):
    """Atomic torch.save."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, newline='')
