"""The paper's path as the user runs it (docs/paper.md), on a small Speech-Commands-shaped archive.

The archive is built from the built-in digits corpus with the real archive's layout (members `./<word>/...wav`,
`validation_list.txt`, `testing_list.txt`, `_background_noise_/`, a non-digit word, README.md, LICENSE) and served
by a local HTTP server on 127.0.0.1 that honours Range requests. Then, each command's `main` in-process:
split_data.py --download -> hubert_feature_reader.py (the tiny fairseq HuBERT of tests/fixtures) ->
train_asgan.py --config configs/sc09_hubert.yaml scaled down -> generate.py (a HiFi-GAN file for its features) ->
evaluate.py (a classifier in the published whole-model resnext.pth format). The download's failure modes have
their own tests: an interrupted transfer resumed, a server without ranges, a wrong hash, a truncated archive and
members that would escape the folder.
"""

import csv
import fcntl
import hashlib
import http.server
import io
import json
import re
import shutil
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import published_like

from density.data import speech_commands
from density.data import splits as split_data
from density.data.digits import make_digits_corpus
from density.data.speech_commands import ArchiveError
from density.evaluation import evaluate
from density.features import extract
from density.gan import train as train_asgan
from density.inference import generate
from density.runtime import cli
from density.runtime.download import DownloadError
from density.vocoders.vocoder import HifiGAN, HifiGANConfig, save_vocoder

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = speech_commands.archive_name("0.02")
HUBERT_DIM = 48  # the tiny fairseq HuBERT's width
# configs/sc09_hubert.yaml scaled down: 48-d features, a 16-frame G and D of a few thousand parameters, 4 steps.
TINY_PAPER = [
    f"c_dim={HUBERT_DIM}",
    f"rp_w_cfg.c_dim={HUBERT_DIM}",
    f"rp_w_cfg.head_spec=[{HUBERT_DIM},1]",
    "z_dim=16",
    "rp_w_cfg.z_dim=16",
    "rp_w_cfg.w_dim=16",
    "rp_w_cfg.ff_channels=16",
    "rp_w_cfg.seq_len=16",
    "rp_w_cfg.layer_specs=[[16,3,2],[16,3,4],[12,3,8],[8,3,16]]",
    "rp_w_cfg.D_head_dim=8",
    "rp_w_cfg.D_block_repeats=[1,1]",
    "batch_size=4",
    "num_workers=0",
    "max_steps=4",
    "checkpoint_interval=2",
    "validation_interval=2",
    "audio_samples=0",
]


# ---------------------------------------------------------------- the archive and its server


def speech_commands_tree(folder):
    """5 voices x the ten digits (30 train, 10 valid, 10 test clips), the word `yes` for the same voices, 3 s of
    background noise, and the archive's README.md and LICENSE -> folder."""
    make_digits_corpus(folder, seed=4, n_speakers=5, per_word=1, valid_frac=0.2, test_frac=0.2, progress=False)
    (folder / "speakers.csv").unlink()  # the digits corpus's own table; not in the archive
    shutil.copytree(folder / "zero", folder / "yes")
    for name in ("validation_list.txt", "testing_list.txt"):
        lines = (folder / name).read_text().split()
        lines += [line.replace("zero/", "yes/") for line in lines if line.startswith("zero/")]
        (folder / name).write_text("\n".join(sorted(lines)) + "\n")
    noise = np.random.default_rng(0).normal(0, 0.1, 3 * 16000).astype(np.float32)
    (folder / "_background_noise_").mkdir()
    sf.write(str(folder / "_background_noise_" / "white_noise.wav"), noise, 16000, subtype="PCM_16")
    (folder / "_background_noise_" / "README.md").write_text("background noise\n")
    (folder / "README.md").write_text("Speech Commands (test stand-in)\n")
    (folder / "LICENSE").write_text("CC BY 4.0\n")
    return folder


def tar_gz(folder):
    """The folder as a tar.gz whose members sit at the top level (`./zero/...`), as the official archive's do."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files` ({name: bytes}) at /<mode>/<name>. Modes: `range` answers `Range: bytes=N-` with 206;
    `norange` ignores Range (200, the whole file); `cut` is `range` that closes the connection at the middle of the
    file, having announced all of it; `short` sends the first half without a Content-Length."""

    def do_GET(self):
        mode, _, name = self.path.strip("/").partition("/")
        data = self.server.files.get(name)
        if data is None or mode not in ("range", "norange", "cut", "short"):
            self.send_error(404)
            return
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(asked[1]) if asked and mode in ("range", "cut") else 0
        if start >= len(data):  # nothing after the bytes the client has
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            self.server.log.append((mode, self.headers.get("Range"), start, 0))
            return
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:] if mode != "short" else data[: len(data) // 2]
        if mode != "short":
            self.send_header("Content-Length", str(len(body)))
        if mode == "cut":
            body = body[: max(0, len(data) // 2 - start)]
        self.end_headers()
        self.wfile.write(body)
        self.server.log.append((mode, self.headers.get("Range"), start, len(body)))

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """(the tree the archive holds, the archive's bytes)."""
    tree = speech_commands_tree(tmp_path_factory.mktemp("sc") / "tree")
    return tree, tar_gz(tree)


@pytest.fixture
def server(archive, monkeypatch):
    """-> (base URL, the server's log of (mode, Range header, start byte, bytes sent)); the archive is served as
    ARCHIVE, and the environment points the download at it (URL and SHA-256)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.files, httpd.log = {ARCHIVE: archive[1]}, []
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    monkeypatch.setenv(speech_commands.URL_ENV, base + "range/" + ARCHIVE)
    monkeypatch.setenv(speech_commands.SHA_ENV, hashlib.sha256(archive[1]).hexdigest())
    yield httpd, base
    httpd.shutdown()
    httpd.server_close()


def split(folder, out, *extra):
    split_data.main(["--download", str(folder), "--sc09_only", "true", "--out_dir", str(out), *extra])


def extracted(folder):
    """Every file under `folder` except the archive and its partial download."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if ARCHIVE not in p.name)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the download


def test_interrupted_download_is_resumed_with_a_range_request(server, archive, tmp_path, monkeypatch):
    httpd, base = server
    data, folder = archive[1], tmp_path / "sc"
    monkeypatch.setenv(speech_commands.URL_ENV, base + "cut/" + ARCHIVE)
    with pytest.raises(DownloadError, match=rf"truncated: got {len(data) // 2} of {len(data)} bytes.*run again"):
        split(folder, tmp_path / "splits")
    assert (folder / f"{ARCHIVE}.partial").read_bytes() == data[: len(data) // 2]
    assert extracted(folder) == [] and not (tmp_path / "splits").exists()  # nothing extracted, nothing split
    monkeypatch.setenv(speech_commands.URL_ENV, base + "range/" + ARCHIVE)
    split(folder, tmp_path / "splits")
    assert httpd.log[-1] == ("range", f"bytes={len(data) // 2}-", len(data) // 2, len(data) - len(data) // 2)
    assert (folder / ARCHIVE).read_bytes() == data and not (folder / f"{ARCHIVE}.partial").exists()
    assert len(rows(tmp_path / "splits" / "sc09-train.csv")) == 30
    n_requests = len(httpd.log)
    split(folder, tmp_path / "again")  # done before: neither downloaded nor extracted again
    assert len(httpd.log) == n_requests and len(rows(tmp_path / "again" / "sc09-valid.csv")) == 10


def test_a_server_that_ignores_ranges_sends_the_file_again_from_byte_0(server, archive, tmp_path, monkeypatch, capsys):
    httpd, base = server
    folder = tmp_path / "sc"
    folder.mkdir()
    (folder / f"{ARCHIVE}.partial").write_bytes(b"\0" * 1000)  # not the archive's first bytes: appending would fail
    monkeypatch.setenv(speech_commands.URL_ENV, base + "norange/" + ARCHIVE)
    split(folder, tmp_path / "splits")
    assert httpd.log == [("norange", "bytes=1000-", 0, len(archive[1]))]
    assert "does not resume (HTTP Range); downloading from byte 0" in capsys.readouterr().err
    assert (folder / ARCHIVE).read_bytes() == archive[1] and (folder / "zero").is_dir()


def test_a_complete_partial_file_is_verified_and_a_second_download_waits(server, archive, tmp_path):
    httpd, base = server
    folder = tmp_path / "sc"
    folder.mkdir()
    (folder / f"{ARCHIVE}.partial").write_bytes(archive[1])  # killed after the last byte, before the rename
    with open(folder / f"{ARCHIVE}.partial", "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process downloading into the same folder
        with pytest.raises(DownloadError, match=r"\.partial: another process is downloading it"):
            split(folder, tmp_path / "splits")
    assert httpd.log == [] and extracted(folder) == []
    split(folder, tmp_path / "splits")
    assert httpd.log == [("range", f"bytes={len(archive[1])}-", len(archive[1]), 0)]  # 416: nothing more to send
    assert (folder / ARCHIVE).read_bytes() == archive[1] and len(rows(tmp_path / "splits" / "sc09-test.csv")) == 10


def test_a_wrong_hash_is_refused_and_the_file_removed(server, archive, tmp_path, monkeypatch):
    httpd, base = server
    monkeypatch.setenv(speech_commands.SHA_ENV, "0" * 64)
    with pytest.raises(DownloadError, match=r"SHA-256 is [0-9a-f]{64}, expected 0{64}; the file was removed"):
        split(tmp_path / "sc", tmp_path / "splits")
    assert list((tmp_path / "sc").iterdir()) == []  # no archive, no partial, nothing extracted
    monkeypatch.delenv(speech_commands.SHA_ENV)
    monkeypatch.setenv(speech_commands.URL_ENV, base + "range/" + ARCHIVE)
    (tmp_path / "sc" / ARCHIVE).write_bytes(archive[1])  # an archive at hand that is not the pinned one
    n_requests = len(httpd.log)
    with pytest.raises(DownloadError, match=rf"{ARCHIVE} \(from .*\); delete it to download again"):
        split(tmp_path / "sc", tmp_path / "splits")
    assert [p.name for p in (tmp_path / "sc").iterdir()] == [ARCHIVE] and len(httpd.log) == n_requests  # kept


def test_a_failed_request_leaves_no_partial_file(server, tmp_path, monkeypatch):
    httpd, base = server
    monkeypatch.setenv(speech_commands.URL_ENV, base + "range/missing.tar.gz")
    with pytest.raises(DownloadError, match=r"missing\.tar\.gz failed after 0 bytes: HTTP Error 404") as error:
        split(tmp_path / "sc", tmp_path / "splits")
    assert "kept" not in str(error.value) and list((tmp_path / "sc").iterdir()) == []


def test_a_truncated_archive_is_never_extracted(server, archive, tmp_path, monkeypatch):
    httpd, base = server
    data = archive[1]
    monkeypatch.setenv(speech_commands.URL_ENV, base + "short/" + ARCHIVE)  # cut short without a Content-Length
    with pytest.raises(DownloadError, match="SHA-256 is .* the file was removed"):
        split(tmp_path / "a", tmp_path / "splits")
    assert list((tmp_path / "a").iterdir()) == []
    cut = data[: len(data) // 2]  # even with a hash that matches it, a cut archive is not extracted
    httpd.files[ARCHIVE] = cut
    monkeypatch.setenv(speech_commands.URL_ENV, base + "range/" + ARCHIVE)
    monkeypatch.setenv(speech_commands.SHA_ENV, hashlib.sha256(cut).hexdigest())
    with pytest.raises(ArchiveError, match=rf"{ARCHIVE}: not a complete tar.gz archive.*nothing was extracted"):
        split(tmp_path / "b", tmp_path / "splits")
    assert extracted(tmp_path / "b") == [] and not (tmp_path / "splits").exists()


def evil_member(kind):
    """A tar member that must not be extracted."""
    if kind == "dotdot":
        return tarfile.TarInfo("./../escape.txt")
    if kind == "absolute":
        return tarfile.TarInfo("/tmp/asgan_escape.txt")
    member = tarfile.TarInfo("./zero/evil_nohash_0.wav")
    if kind in ("symlink", "hardlink"):
        member.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        member.linkname = "../../outside.wav" if kind == "hardlink" else "/etc/passwd"
    else:
        member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3  # /dev/null's numbers
    return member


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("dotdot", "would be written outside the folder"),
        ("absolute", "would be written outside the folder"),
        ("symlink", r"is a link \(to '/etc/passwd'\)"),
        ("hardlink", r"is a link \(to '\.\./\.\./outside\.wav'\)"),
        ("device", "is a device, pipe or other special file"),
    ],
)
def test_an_archive_with_a_member_that_escapes_or_is_not_a_plain_file_is_refused(
    server, tmp_path, monkeypatch, capsys, kind, problem
):
    httpd, base = server
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        good = tarfile.TarInfo("./zero/good_nohash_0.wav")
        good.size = 4
        tar.addfile(good, io.BytesIO(b"RIFF"))
        bad = evil_member(kind)
        bad.size = 4 if bad.isfile() else 0
        tar.addfile(bad, io.BytesIO(b"pwnd") if bad.isfile() else None)
    httpd.files[ARCHIVE] = buffer.getvalue()
    monkeypatch.setenv(speech_commands.SHA_ENV, hashlib.sha256(buffer.getvalue()).hexdigest())
    folder = tmp_path / "deep" / "sc"
    argv = ["--download", str(folder), "--sc09_only", "true", "--out_dir", str(tmp_path / "splits")]
    with pytest.raises(SystemExit) as stop:
        cli.run(split_data.main, argv)  # as the command runs: one error line, status 2
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.match(rf"error: .*{ARCHIVE}: refused, member '{re.escape(bad.name)}' {problem}; nothing was", err)
    assert extracted(folder) == [] and sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["sc"]
    assert not Path("/tmp/asgan_escape.txt").exists() and not (tmp_path / "splits").exists()


# ---------------------------------------------------------------- the whole path


@pytest.fixture
def published_classifier(tmp_path, monkeypatch, original_resnext_module):
    """A classifier file in the published resnext.pth format (helpers.published_like) -> its path."""
    published_like(tmp_path / "resnext.pth", legacy=False)
    monkeypatch.delitem(sys.modules, "models.resnext")  # evaluate.py must not need the original code
    monkeypatch.delitem(sys.modules, "models")
    return tmp_path / "resnext.pth"


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    torch.set_flush_denormal(False)  # train_asgan.main sets it for the process


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")  # the restated classifier classes have no file
def test_download_split_features_train_generate_evaluate(
    server, tmp_path, fixtures_dir, published_classifier, one_thread, capsys
):
    data, splits = tmp_path / "data" / "speech_commands", tmp_path / "splits"
    split(data, splits)
    parts = {name: rows(splits / f"sc09-{name}.csv") for name in ("train", "valid", "test")}
    assert [len(parts[n]) for n in ("train", "valid", "test")] == [30, 10, 10]
    for name, listed in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        digits = [line for line in (data / listed).read_text().split() if not line.startswith("yes/")]
        assert [r["path"] for r in parts[name]] == [str(data / line) for line in digits]  # the archive's own lists
    assert {r["label"] for part in parts.values() for r in part} == set(split_data.SC09_CLASSES)
    assert (data / "_background_noise_" / "white_noise.wav").is_file() and (data / "yes").is_dir()

    hubert, features = fixtures_dir / "hubert_fairseq" / "tiny_hubert_fairseq.pt", tmp_path / "data" / "sc09_hubert"
    for name in ("train", "valid"):
        extract.main(
            ["--csv", str(splits / f"sc09-{name}.csv"), "--out", str(features), "--type", "hubert_L6"]
            + ["--checkpoint", str(hubert), "--device", "cpu"]
        )
    first = Path(parts["train"][0]["path"])
    assert torch.load(features / first.parent.name / f"{first.stem}.pt").shape == (50, HUBERT_DIM)

    run = tmp_path / "runs" / "asgan"
    train_asgan.main(
        ["--config", str(REPO / "configs" / "sc09_hubert.yaml"), f"train_root={features}", f"checkpoint_path={run}"]
        + [f"sc09_train_csv={splits / 'sc09-train.csv'}", f"sc09_valid_csv={splits / 'sc09-valid.csv'}", *TINY_PAPER]
    )
    checkpoints = sorted(p.name for p in run.glob("ckpt_*.pt"))
    assert checkpoints == ["ckpt_00000002.pt", "ckpt_00000003.pt", "ckpt_best_fad.pt"]  # periodic, final, best
    cfg = yaml.safe_load(torch.load(run / "ckpt_00000003.pt", weights_only=True)["cfg_yaml"])
    paper = {k: cfg[k] for k in ("lr", "grad_clip", "d_lr_mult", "betas", "aug_init_p", "use_sc09_splits")}
    assert paper == dict(lr=2e-3, grad_clip=10, d_lr_mult=0.1, betas=[0, 0.99], aug_init_p=0.2, use_sc09_splits=True)
    assert {k: cfg["rp_w_cfg"][k] for k in ("use_sg3_ff", "D_kernel_size", "r1_gamma", "w_layers", "c_dim")} == dict(
        use_sg3_ff=True, D_kernel_size=5, r1_gamma=0.1, w_layers=1, c_dim=HUBERT_DIM
    )  # the paper config, scaled down only where TINY_PAPER says

    vocoder = tmp_path / "hifigan.pt"  # a HiFi-GAN for 48-d frames at 50 Hz
    torch.manual_seed(0)
    save_vocoder(
        HifiGAN(HifiGANConfig(HUBERT_DIM, [10, 8, 2, 2], [20, 16, 4, 4], upsample_initial_channel=16)), vocoder
    )
    samples = tmp_path / "samples"
    generate.main(
        ["--checkpoint", str(run / "ckpt_00000003.pt"), "--vocoder", str(vocoder), "--out_dir", str(samples)]
        + ["--n", "4", "--device", "cpu", "--no_progress", "--png_max", "0"]
    )
    wavs = sorted(samples.glob("*.wav"))
    assert len(wavs) == 4 and all(sf.info(str(w)).frames == 16000 for w in wavs)

    metrics = tmp_path / "metrics.json"
    evaluate.main(
        ["--checkpoint", str(run / "ckpt_00000003.pt"), "--vocoder", str(vocoder), "--classifier"]
        + [str(published_classifier), "--train_csv", str(splits / "sc09-train.csv"), "--test_csv"]
        + [str(splits / "sc09-test.csv"), "--n", "8", "--device", "cpu", "--no_cache", "--ndb_k", "2"]
        + ["--griffin_lim_iters", "2", "--json", str(metrics)]
    )
    result = json.loads(metrics.read_text())
    assert [r["name"] for r in result["rows"]][:2] == ["ckpt_00000003.pt", "real train"]
    assert result["rows"][0]["n"] == 8 and 1 <= result["rows"][0]["inception_score"] <= 10
    assert "| ckpt_00000003.pt |" in capsys.readouterr().out


def test_a_member_is_refused_where_a_link_already_on_disk_leads_out_of_the_folder(tmp_path):
    archive = tmp_path / "sc.tar.gz"
    with tarfile.open(archive, mode="w:gz") as tar:
        member = tarfile.TarInfo("./zero/a_nohash_0.wav")
        member.size = 4
        tar.addfile(member, io.BytesIO(b"RIFF"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "sc").mkdir()
    (tmp_path / "sc" / "zero").symlink_to(tmp_path / "outside")
    with pytest.raises(ArchiveError, match=r"'\./zero/a_nohash_0\.wav' would be written outside the folder"):
        speech_commands.extract_safely(archive, tmp_path / "sc")
    assert list((tmp_path / "outside").iterdir()) == []
