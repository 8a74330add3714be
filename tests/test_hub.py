"""torch.hub entries, the inference wrapper, checkpoint loading and the hash-checked downloader.

Remote files are served by a local HTTP server on 127.0.0.1 and reach the code through the real download
path, with the URLs overridden by environment variables or arguments.
"""

import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers import make_checkpoint, tiny_vocoder
from torch.package import PackageExporter

from density.audio.signal import CLIP_SAMPLES, fit_length
from density.inference import hub as hubconf
from density.inference.asgan import ASGANInference, Conv2SC09Wrapper
from density.runtime.download import DownloadError, download, sha256_of
from density.vocoders.vocoder import GriffinLimVocoder, save_vocoder

REPO = Path(__file__).resolve().parents[1]


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; /truncated/<name> announces the full length but sends half of the file, /nolength/<name>
    sends half without a Content-Length, /html/<name> a 200 HTML page, /trickle/<name> a byte every 0.1 s,
    /silent/<name> only the headers."""

    def do_GET(self):
        self.server.requests.append(self.path)
        kind = self.path.split("/")[1]
        if kind not in ("truncated", "nolength", "html", "trickle", "silent"):
            return super().do_GET()
        data = (Path(self.directory) / self.path.split("/")[-1]).read_bytes()
        self.send_response(200)
        if kind == "truncated":
            self.send_header("Content-Length", str(len(data)))
        if kind == "html":  # a login or error page served with status 200
            self.send_header("Content-Type", "text/html" if "typed" in self.path else "application/octet-stream")
        self.end_headers()
        try:
            if kind in ("truncated", "nolength"):
                self.wfile.write(data[: len(data) // 2])
            elif kind == "html":
                self.wfile.write(b"\n<!DOCTYPE html><html><body>Sign in to download</body></html>")
            elif kind == "trickle":  # a byte every 0.1 s, forever
                for byte in data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            else:  # "silent": headers, then nothing
                time.sleep(3)
        except OSError:  # the client gave up
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch, fixtures_dir):
    """Folder of release-like files behind http://127.0.0.1:<port>/, and a fresh torch hub cache."""
    root = tmp_path / "release"
    root.mkdir()
    make_checkpoint(root / "asgan_tiny.pt")
    vocoder = tiny_vocoder().remove_weight_norm()
    with PackageExporter(str(root / "g_tiny_package.pth")) as exporter:
        exporter.intern("density.**")
        exporter.extern("**")
        exporter.save_pickle(".", "hifigan_pkl.pt", vocoder)
    shutil.copy(fixtures_dir / "hubert_fairseq" / "tiny_hubert_fairseq.pt", root / "hubert_tiny.pt")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    httpd.requests = []
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert Path(torch.hub.get_dir()).is_relative_to(tmp_path), "another test fixed torch.hub's dir"
    for var in ["CHECKPOINT", "VOCODER", "HUBERT"]:
        monkeypatch.delenv(f"ASGAN_{var}_URL", raising=False)
        monkeypatch.delenv(f"ASGAN_{var}_SHA256", raising=False)
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/", root
    httpd.shutdown()
    httpd.server_close()


def cache_files():
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_official_entry_through_download_path(server, monkeypatch):
    httpd, url, root = server
    monkeypatch.setenv("ASGAN_CHECKPOINT_URL", url + "asgan_tiny.pt")
    monkeypatch.setenv("ASGAN_CHECKPOINT_SHA256", sha256_of(root / "asgan_tiny.pt"))
    model = hubconf.asgan_hubert_sc09_6(vocoder_url=url + "g_tiny_package.pth", progress=False, device="cpu")
    assert isinstance(model, ASGANInference) and Conv2SC09Wrapper is ASGANInference
    assert type(model.vocoder).__module__.startswith("<torch_package_") and model.hifigan is model.vocoder
    assert (model.z_dim, model.w_dim, model.seq_len) == (16, 16, CLIP_SAMPLES)
    audio = model.unconditional_generate(3)
    assert audio.shape == (3, CLIP_SAMPLES) and audio.dtype == torch.float32 and not audio.requires_grad
    assert (audio[0] - audio[1]).abs().max() > 1e-2  # samples differ
    assert cache_files() == ["asgan_tiny.pt", "g_tiny_package.pth"]
    n_requests = len(httpd.requests)
    monkeypatch.setenv("ASGAN_VOCODER_URL", url + "g_tiny_package.pth")  # the variable instead of the argument
    again = hubconf.asgan_hubert_sc09_6(progress=False, device="cpu")
    assert type(again.vocoder).__module__.startswith("<torch_package_")
    assert len(httpd.requests) == n_requests  # served from the cache the second time


def test_official_entry_with_a_mel_checkpoint_url_uses_griffin_lim(server, monkeypatch):
    httpd, url, root = server
    make_checkpoint(root / "asgan_mel.pt", mel=True)
    monkeypatch.setenv("ASGAN_VOCODER_URL", url + "g_tiny_package.pth")  # a HuBERT vocoder: not for mel frames
    model = hubconf.asgan_hubert_sc09_6(checkpoint_url=url + "asgan_mel.pt", progress=False, device="cpu")
    assert isinstance(model.vocoder, GriffinLimVocoder) and cache_files() == ["asgan_mel.pt"]
    assert model.unconditional_generate(1).shape == (1, CLIP_SAMPLES)


def test_hubert_base_through_download_path(server, fixtures_dir):
    httpd, url, root = server
    reader = hubconf.hubert_base(
        url=url + "hubert_tiny.pt", sha256=sha256_of(root / "hubert_tiny.pt"), progress=False, device="cpu"
    )
    expected = torch.load(fixtures_dir / "hubert_fairseq" / "tiny_hubert_expected.pt", weights_only=True)
    feats = reader.extract(expected["wav"])  # what fairseq returned, no padding
    torch.testing.assert_close(feats, expected["layer6"], atol=1e-4, rtol=1e-4)
    assert reader.get_feats(audio=expected["wav"][0]).shape == (50, 48)  # 1 s -> 50 frames at layer 6


def test_wrong_sha256_is_a_clear_error(server, monkeypatch):
    httpd, url, root = server
    monkeypatch.setenv("ASGAN_CHECKPOINT_SHA256", "0" * 64)
    with pytest.raises(DownloadError, match=r"asgan_tiny\.pt: SHA-256 is [0-9a-f]{64}, expected 0{64}"):
        hubconf.asgan_hubert_sc09_6(checkpoint_url=url + "asgan_tiny.pt", progress=False, device="cpu")
    assert cache_files() == []  # nothing kept, not even a partial file


def test_truncated_download_is_a_clear_error(server):
    httpd, url, root = server
    with pytest.raises(DownloadError, match=r"truncated/asgan_tiny\.pt was truncated"):
        hubconf.asgan_from_checkpoint(url + "truncated/asgan_tiny.pt", progress=False, device="cpu")
    assert cache_files() == []
    with pytest.raises(DownloadError, match=r"missing\.pt failed.*404"):
        download(url + "missing.pt", progress=False)


def test_cached_file_with_wrong_hash_is_refused(tmp_path):
    (tmp_path / "f.pt").write_bytes(b"abc")
    with pytest.raises(DownloadError, match=r"cached file .*f\.pt .*delete it"):
        download("http://127.0.0.1:9/f.pt", model_dir=tmp_path, sha256="1" * 64)
    assert download("http://127.0.0.1:9/f.pt", model_dir=tmp_path) == tmp_path / "f.pt"  # cached, no request


def test_hub_load_local_untrained_offline():
    model = torch.hub.load(str(REPO), "asgan_hubert_sc09_6", source="local", pretrained=False, device="cpu")
    audio = model.unconditional_generate(2)
    assert audio.shape == (2, CLIP_SAMPLES) and audio.dtype == torch.float32 and torch.isfinite(audio).all()
    assert sum(p.numel() for p in model.g.parameters()) == 33_384_196  # the released architecture


def test_own_checkpoint_entry_and_wrapper_api(tmp_path):
    g = make_checkpoint(tmp_path / "ckpt.pt")
    vocoder = tiny_vocoder()
    save_vocoder(vocoder, tmp_path / "voc.pt")
    model = torch.hub.load(
        str(REPO),
        "asgan_from_checkpoint",
        source="local",
        checkpoint=str(tmp_path / "ckpt.pt"),
        vocoder=str(tmp_path / "voc.pt"),
        device="cpu",
    )
    z = torch.randn(4, 16, generator=torch.Generator().manual_seed(5))
    audio = model.generate_from_latent(z)
    assert audio.shape == (4, CLIP_SAMPLES)
    with torch.no_grad():
        raw = vocoder.remove_weight_norm()(g(z)).squeeze(1)  # (4, 16 * 320)
    pad = (CLIP_SAMPLES - raw.shape[1]) // 2
    torch.testing.assert_close(audio[:, pad : pad + raw.shape[1]], raw, rtol=1e-4, atol=1e-5)
    assert audio[:, :pad].abs().max() == 0 and audio[:, pad + raw.shape[1] :].abs().max() == 0
    torch.testing.assert_close(model.unconditional_generate(4, generator=torch.Generator().manual_seed(5)), audio)
    w = model.z2w(z)
    assert w.shape == (4, 16)
    torch.testing.assert_close(model.generate_from_w(w), audio, rtol=1e-4, atol=1e-5)
    per_layer = w[:, None].expand(4, g.n_layers + 2, 16)
    torch.testing.assert_close(model.generate_from_w(per_layer), audio, rtol=1e-4, atol=1e-5)


def test_best_fad_checkpoint_falls_back_to_training_g(tmp_path):
    g = make_checkpoint(tmp_path / "ckpt_best_fad.pt", ema=False)
    vocoder = tiny_vocoder()
    save_vocoder(vocoder, tmp_path / "voc.pt")
    with pytest.warns(UserWarning, match="no g_ema_state_dict"):
        model = hubconf.asgan_from_checkpoint(tmp_path / "ckpt_best_fad.pt", tmp_path / "voc.pt", device="cpu")
    z = torch.randn(2, 16)
    with torch.no_grad():  # the wrapper runs the saved training G
        expected = fit_length(vocoder.remove_weight_norm()(g(z)).squeeze(1), CLIP_SAMPLES)
    torch.testing.assert_close(model.generate_from_latent(z), expected, rtol=1e-4, atol=1e-5)


def test_mel_checkpoint_uses_griffin_lim(tmp_path):
    g = make_checkpoint(tmp_path / "mel.pt", mel=True)
    model = hubconf.asgan_from_checkpoint(tmp_path / "mel.pt", device="cpu")
    assert isinstance(model.vocoder, GriffinLimVocoder)
    z = torch.randn(2, 16)
    with torch.no_grad():
        expected = fit_length(GriffinLimVocoder()(g(z)).squeeze(1), CLIP_SAMPLES)
    audio = model.generate_from_latent(z)
    assert audio.shape == (2, CLIP_SAMPLES) and audio.abs().max() > 0
    torch.testing.assert_close(audio, expected)


def test_bad_checkpoints_are_clear_errors(tmp_path):
    make_checkpoint(tmp_path / "ckpt.pt")
    data = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt: not a readable ASGAN checkpoint \(truncated"):
        hubconf.asgan_from_checkpoint(tmp_path / "cut.pt", device="cpu")
    torch.save({"state": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match=r"foreign\.pt: no 'cfg_yaml'"):
        hubconf.asgan_from_checkpoint(tmp_path / "foreign.pt", device="cpu")
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        hubconf.asgan_from_checkpoint(tmp_path / "nothere.pt", device="cpu")
    torch.save({"cfg_yaml": "rp_w_cfg: [", "g_ema_state_dict": {}}, tmp_path / "badyaml.pt")
    with pytest.raises(ValueError, match=r"badyaml\.pt: unusable cfg_yaml"):
        hubconf.asgan_from_checkpoint(tmp_path / "badyaml.pt", device="cpu")


def test_cuda_request_without_cuda_falls_back_to_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    make_checkpoint(tmp_path / "ckpt.pt")
    save_vocoder(tiny_vocoder(), tmp_path / "voc.pt")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        model = hubconf.asgan_from_checkpoint(tmp_path / "ckpt.pt", tmp_path / "voc.pt", device="cuda")
    assert model.device == torch.device("cpu")


def test_hub_entries_and_reference_keyword(monkeypatch):
    import hubconf as hub_script  # torch.hub reads the script at the repository root

    entries = {n for n in dir(hub_script) if callable(getattr(hub_script, n)) and not n.startswith("_")}
    assert entries == {"asgan_hubert_sc09_6", "asgan_from_checkpoint", "hubert_hifigan", "hubert_base"}
    monkeypatch.setattr(hubconf._inf, "untrained_asgan", lambda device: torch.nn.Identity())
    assert isinstance(hubconf.asgan_hubert_sc09_6(pretrianed=False), torch.nn.Identity)  # reference spelling
    vocoder = hubconf.hubert_hifigan(pretrained=False, device="cpu")
    assert vocoder(torch.zeros(1, 2, 768)).shape == (1, 1, 640)


def test_random_bytes_are_errors_naming_the_file(tmp_path):
    """A checkpoint or vocoder of random bytes used to raise IndexError: pop from empty list."""
    make_checkpoint(tmp_path / "ckpt.pt")
    (tmp_path / "random.pt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"random\.pt: not a readable ASGAN checkpoint"):
        hubconf.asgan_from_checkpoint(tmp_path / "random.pt", device="cpu")
    with pytest.raises(ValueError, match=r"random\.pt: not a readable vocoder checkpoint"):
        hubconf.asgan_from_checkpoint(tmp_path / "ckpt.pt", vocoder=tmp_path / "random.pt", device="cpu")


def test_batch_of_zero_and_wrong_shapes_are_clear_errors(tmp_path):
    """These used to be an obscure reshape error, and asserts (gone under python -O)."""
    g = make_checkpoint(tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="a batch of 0 latents"):
        g(torch.zeros(0, 16))
    with pytest.raises(ValueError, match=r"z must be \(B, 16\), got \(2, 3\)"):
        g(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"vocoder expects \(B, L, 12\) frames, got \(1, 4, 5\)"):
        tiny_vocoder()(torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match=r"Griffin-Lim expects \(B, L, 128\) log-mels"):
        GriffinLimVocoder()(torch.zeros(1, 4, 5))
    model = hubconf.asgan_from_checkpoint(tmp_path / "ckpt.pt", vocoder=GriffinLimVocoder(), device="cpu")
    with pytest.raises(ValueError, match="a batch of 0 latents"):
        model.unconditional_generate(0)


@pytest.mark.parametrize(
    "path, message",
    [
        ("nolength/asgan_tiny.pt", r"nolength/asgan_tiny\.pt is not a complete torch file"),
        ("nolength/g_tiny_package.pth", r"is not a complete torch file"),
        ("html/asgan_tiny.pt", r"html/asgan_tiny\.pt is an HTML page"),
        ("html/typed.pt", r"html/typed\.pt is an HTML page"),
    ],
)
def test_short_or_html_downloads_are_never_cached(server, path, message):
    """They used to be cached under the final name and reused after the URL was fixed."""
    httpd, url, root = server
    shutil.copy(root / "asgan_tiny.pt", root / "typed.pt")
    with pytest.raises(DownloadError, match=message):
        download(url + path, progress=False)
    assert cache_files() == []
    name = path.split("/")[-1]
    assert download(url + name, progress=False).read_bytes() == (root / name).read_bytes()  # the fixed URL


def test_stalled_and_trickling_servers_time_out(server, monkeypatch):
    httpd, url, root = server
    monkeypatch.setattr("density.runtime.download.IDLE_TIMEOUT_S", 0.5)
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"stalled: no data for 0\.5 s after 0 bytes"):
        download(url + "silent/asgan_tiny.pt", progress=False)
    monkeypatch.setenv("ASGAN_DOWNLOAD_TIMEOUT", "1")
    with pytest.raises(
        DownloadError,
        match=r"trickle/asgan_tiny\.pt took over 1 s \(\d+ bytes so far\).*"
        "ASGAN_DOWNLOAD_TIMEOUT",
    ):
        download(url + "trickle/asgan_tiny.pt", progress=False)
    assert time.monotonic() - start < 5 and cache_files() == []


def test_partial_files_of_killed_downloads_are_removed(server):
    httpd, url, root = server
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = re.sub(r"\W", "_", socket.gethostname())
    (folder / f".asgan_tiny.pt.{host}-{dead.stdout.strip()}.abcd1234.partial").write_bytes(b"half")
    download(url + "g_tiny_package.pth", progress=False)
    assert cache_files() == ["g_tiny_package.pth"]
    assert (folder / "g_tiny_package.pth").stat().st_mode & 0o777 == 0o666 & ~umask()


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
