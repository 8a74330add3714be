"""Command-line conventions (density/cli.py): a user error is one `error: ...` line and status 2, --debug adds the
traceback."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from density.inference import generate
from density.runtime import cli
from density.runtime.download import DownloadError

ROOT = Path(__file__).resolve().parents[1]


def command(tmp_path, script, *args, **env):
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", TORCH_HOME=str(tmp_path / "hub"), **env),
        timeout=300,
    )


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_one_error_line(done, message):
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and message in done.stderr


@pytest.mark.slow
def test_offline_pretrained_download_is_one_error_line_and_debug_shows_the_traceback(tmp_path):
    url = f"ASGAN_CHECKPOINT_URL=http://127.0.0.1:{closed_port()}/asgan.pt".split("=", 1)
    done = command(tmp_path, "generate.py", "--pretrained", "--out_dir", "out", **{url[0]: url[1]})
    assert_one_error_line(done, "asgan.pt")
    debug = command(tmp_path, "generate.py", "--pretrained", "--out_dir", "out", "--debug", **{url[0]: url[1]})
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("train_asgan.py", ["model=rp_w", "bacth_size=4"], "Unknown config key 'bacth_size'"),
        ("train_asgan.py", ["--config", "missing.yaml"], "--config missing.yaml: no such file"),
        ("train_classifier.py", ["arch=gpu"], "config key 'train_csv' is mandatory"),
        ("split_data.py", ["--root_path", "nowhere"], "nowhere"),
        ("evaluate.py", ["--gen_feats", "missing.npy", "--real_feats", "missing.npy"], "missing.npy does not exist"),
        ("generate.py", ["--out_dir", "o"], "one of the arguments --pretrained --checkpoint is required"),
        ("edit.py", ["project", "a.wav", "--checkpoint", "missing.pt", "--out_dir", "o"], "missing.pt"),
    ],
)
@pytest.mark.slow
def test_user_errors_of_every_command(tmp_path, script, args, message):
    assert_one_error_line(command(tmp_path, script, *args), message)


def test_run_converts_user_errors_only(capsys):
    def fails(error):
        def main(argv):
            assert "--debug" not in argv
            raise error

        return main

    for error, debug, line in (
        (DownloadError("offline"), False, "error: offline"),
        (SystemExit("split_data.py: offline"), False, "error: split_data.py: offline"),
        (ValueError("line 1\nline 2"), True, "error: line 1 line 2"),
    ):
        with pytest.raises(SystemExit) as e:
            cli.run(fails(error), ["--debug"] if debug else [])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.splitlines()[-1] == line and ("Traceback" in err) == debug
    with pytest.raises(KeyError):  # a bug is not a user error: its traceback is shown
        cli.run(fails(KeyError("bug")), [])
    assert cli.run(lambda argv: argv, ["a", "--debug"]) == ["a"]


def test_generate_main_reports_a_download_error(monkeypatch, tmp_path, capsys):
    from density.inference import hub as hubconf

    def offline(**kwargs):
        raise DownloadError("https://example.org/asgan.pt: cannot download (offline)")

    monkeypatch.setattr(hubconf, "asgan_hubert_sc09_6", offline)
    with pytest.raises(SystemExit) as e:
        generate.main(["--pretrained", "--out_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "error: https://example.org/asgan.pt: cannot download (offline)\n"
