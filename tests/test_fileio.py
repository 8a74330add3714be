"""density/fileio.py: atomic writes with the umask's mode, clear write errors, stale temporaries, loaders."""

import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from density.audio.signal import save_wav
from density.runtime import checkpoint as ckpt
from density.runtime.fileio import (
    WriteError,
    atomic_path,
    is_stale_temporary,
    load_torch,
    remove_stale_temporaries,
    save_torch,
    write_text,
)


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_outputs_get_the_umask_mode(tmp_path):
    """A regression: mkstemp's 0600 mode used to be kept by the rename."""
    save_torch({"a": torch.zeros(2)}, tmp_path / "c.pt")
    write_text(tmp_path / "t.csv", "a,b\n")
    save_wav(tmp_path / "w.wav", torch.zeros(160))
    for name in ("c.pt", "t.csv", "w.wav"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "t.csv", "w.wav"]


def test_a_full_disk_is_a_write_error_naming_the_path_and_the_fix(tmp_path):
    """torch.save used to say 'unexpected pos 128 vs 0'. A file-size limit fails writes as a full disk
    does; nothing is left behind."""
    state = {"w": torch.zeros(100_000)}
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(
            WriteError,
            match=rf"{tmp_path / 'ckpt_00000001.pt'}: cannot write .*free space .*"
            rf"write permission of {tmp_path}",
        ):
            ckpt.save(state, tmp_path / "ckpt_00000001.pt")
        with pytest.raises(WriteError, match="File too large"):
            write_text(tmp_path / "big.txt", "x" * 10_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_folder_is_a_write_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(WriteError, match=f"{tmp_path / 'x.pt'}: cannot write"):
            save_torch(1, tmp_path / "x.pt")
    finally:
        tmp_path.chmod(0o700)


def test_stale_temporaries_are_told_from_live_ones(tmp_path):
    with atomic_path(tmp_path / "live.pt") as live:  # this process: alive
        dead_pid = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        ).stdout.strip()
        dead = tmp_path / os.path.basename(live).replace(f"-{os.getpid()}.", f"-{dead_pid}.")
        dead.write_bytes(b"x")
        other_host = tmp_path / ".x.pt.elsewhere-1.abcd1234.partial"
        other_host.write_bytes(b"x")
        old = tmp_path / ".y.pt.elsewhere-1.abcd1234.tmp"
        old.write_bytes(b"x")
        os.utime(old, (0, 0))
        assert [is_stale_temporary(p) for p in (live, dead, other_host, old)] == [False, True, False, True]
        assert remove_stale_temporaries(tmp_path) == 2
        assert os.path.exists(live) and other_host.exists()
    assert not os.path.exists(live)  # replaced the target


@pytest.mark.parametrize("content", [os.urandom(256), b"", b"<html>not found</html>"])
def test_load_torch_names_the_file_for_any_failure(tmp_path, content):
    """Random bytes used to raise IndexError: pop from empty list."""
    (tmp_path / "f.pt").write_bytes(content)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'f.pt'}: not a readable ASGAN checkpoint"):
        load_torch(tmp_path / "f.pt", "ASGAN checkpoint")


def test_save_wav_refuses_non_finite_audio(tmp_path):
    """A regression: generate.py --truncation nan used to write garbage wavs."""
    with pytest.raises(ValueError, match=r"w\.wav: not written, the audio holds 2 NaN or infinite samples"):
        save_wav(tmp_path / "w.wav", np.array([0.0, np.nan, np.inf, 0.5]))
    assert list(tmp_path.iterdir()) == []
