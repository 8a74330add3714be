"""density/latent.py and edit.py on tiny generators: projection, mixing, conversion, directions, probe, errors."""

import json

import pytest
import soundfile as sf
import torch
from helpers import TINY_SPECS, make_checkpoint, tiny_cfg, tiny_vocoder

from density.config import config_to_yaml
from density.inference import edit, latent
from density.inference.asgan import load_asgan, load_generator
from density.models import Generator
from density.vocoders.vocoder import HifiGAN, HifiGANConfig, save_vocoder

HUBERT_DIM = 48  # hidden size of the tiny HuBERT fixture
N_WS = len(TINY_SPECS) + 2
FAST = ["--steps", "60", "--w_avg_samples", "500", "--no_progress", "--device", "cpu"]


@pytest.fixture
def mel_ckpt(tmp_path):
    make_checkpoint(tmp_path / "mel.pt", mel=True)
    return tmp_path / "mel.pt"


@pytest.fixture
def g(mel_ckpt):
    return load_generator(mel_ckpt, progress=False)[0]


def seed_w(g, seed, n=1):
    return g.W(torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(seed))).detach()


def generated_wav(model, path, w):
    wav = model.generate_from_w(w)[0]
    sf.write(path, wav.clamp(-1, 1).numpy(), 16000, subtype="PCM_16")
    return path


def read(path):
    return torch.from_numpy(sf.read(str(path), dtype="float32")[0])


def test_projection_beats_the_mean_w_by_10x(g):
    w = seed_w(g, 3, n=2)
    with torch.no_grad():
        target = g.forward_w(w)
        stats = latent.w_stats(g, 1000)
        base = latent.feature_loss(g.forward_w(stats.w_avg.expand(2, -1)), target, "l1")
    for space, n in [("w", 2), ("w+", 1)]:
        p = latent.project(g, target[:n], stats=stats, space=space, steps=100, loss="l1")
        assert p.w.shape == ((n, g.w_dim) if space == "w" else (n, N_WS, g.w_dim)) and p.z is None
        assert (p.error < 0.1 * base[:n]).all(), (space, p.error / base[:n])
        with torch.no_grad():
            torch.testing.assert_close(latent.feature_loss(g.forward_w(p.w), target[:n], "l1"), p.error)
    p = latent.project(g, target, stats=stats, space="z", steps=5)
    assert p.z.shape == (2, g.z_dim) and torch.allclose(p.w, g.W(p.z).detach())


def test_projection_is_deterministic_and_per_clip(g):
    target = g.forward_w(seed_w(g, 4, n=2)).detach()
    stats = latent.w_stats(g, 200)
    a = latent.project(g, target, stats=stats, steps=10, loss="cosine")
    b = latent.project(g, target, stats=stats, steps=10, loss="cosine")
    assert torch.equal(a.w, b.w) and torch.equal(a.error, b.error)
    one = latent.project(g, target[1:], stats=stats, steps=10, loss="cosine", batch_size=1)
    torch.testing.assert_close(one.w, a.w[1:], rtol=1e-4, atol=1e-5)  # other clips in the batch do not matter
    assert all(p.requires_grad for p in g.parameters()) and all(p.grad is None for p in g.parameters())


def test_mixing_and_conversion_identities(g):
    wa, wb = seed_w(g, 1), seed_w(g, 2)
    ws_a = latent.broadcast(wa, N_WS)
    assert torch.equal(latent.mix(ws_a, wb, N_WS), ws_a)  # every layer from A
    assert torch.equal(latent.mix(wa, latent.broadcast(wb, N_WS), 0), latent.broadcast(wb, N_WS))
    with torch.no_grad():
        assert torch.equal(
            g.forward_w(latent.mix(ws_a, wb, N_WS)),
            g(torch.randn(1, g.z_dim, generator=torch.Generator().manual_seed(1))),
        )
        assert torch.equal(latent.swap_layers(ws_a, wb, []), ws_a)  # conversion swapping nothing: the source
    mixed = latent.mix(ws_a, wb, 3)
    assert torch.equal(mixed[:, :3], ws_a[:, :3]) and torch.equal(mixed[:, 3:], latent.broadcast(wb, N_WS)[:, 3:])
    swapped = latent.swap_layers(ws_a, wb, [5, 0])
    assert torch.equal(swapped[:, [0, 5]], latent.broadcast(wb, N_WS)[:, [0, 5]])
    assert torch.equal(swapped[:, 1:5], ws_a[:, 1:5])
    for bad in ([N_WS], [-1]):
        with pytest.raises(ValueError, match="layer indices must be in"):
            latent.swap_layers(ws_a, wb, bad)
    with pytest.raises(ValueError, match="crossover"):
        latent.mix(ws_a, wb, N_WS + 1)


def test_direction_and_edit():
    w_from, shift = torch.randn(5, 8), torch.randn(8)
    d = latent.direction(w_from, (w_from.mean(0) + shift).expand(4, -1))
    torch.testing.assert_close(d, shift)
    w = torch.randn(2, 8)
    assert torch.equal(latent.edit(w, d, 0.0), w)
    torch.testing.assert_close(latent.edit(w, d, 2.0), w + 2 * shift)
    per_layer = latent.edit(w, torch.ones(3, 8), 1.0)  # a per-layer direction broadcasts a plain w
    assert per_layer.shape == (2, 3, 8) and torch.equal(per_layer[:, 1], w + 1)
    with pytest.raises(ValueError):
        latent.direction(w_from[:0], w_from)


def test_mean_w_cache(g, mel_ckpt, monkeypatch):
    stats = latent.w_stats(g, 300, checkpoint=mel_ckpt)
    caches = list(mel_ckpt.parent.glob("mel.pt.w_avg-*-n300.pt"))
    assert len(caches) == 1 and sorted(p.name for p in mel_ckpt.parent.iterdir() if p.name.startswith(".")) == []
    fresh = latent.w_stats(g, 300)
    assert torch.equal(stats.w_avg, fresh.w_avg) and stats.w_std == pytest.approx(fresh.w_std) and fresh.w_std > 0
    monkeypatch.setattr(latent, "_compute_w_stats", lambda *a: pytest.fail("not read from the cache"))
    assert torch.equal(latent.w_stats(g, 300, checkpoint=mel_ckpt).w_avg, stats.w_avg)
    monkeypatch.undo()
    other = latent.w_cache_path(mel_ckpt, 200, latent.sha256_of(mel_ckpt))
    other.write_text("someone else's file")
    with pytest.warns(UserWarning, match="not the mean-w cache"):
        latent.w_stats(g, 200, checkpoint=mel_ckpt)
    assert other.read_text() == "someone else's file"  # never overwritten


def test_edit_commands_on_a_mel_checkpoint(mel_ckpt, tmp_path):
    model = load_asgan(mel_ckpt, None, "cpu", progress=False)  # Griffin-Lim
    src = generated_wav(model, tmp_path / "src.wav", seed_w(model.g, 5))
    common = ["--checkpoint", str(mel_ckpt), *FAST]
    edit.main(["project", str(src), "seed:2", "--out_dir", str(tmp_path / "p"), *common])
    result = json.loads((tmp_path / "p" / "projection.json").read_text())
    assert result["error"][0] < result["w_avg_error"][0]
    assert {p.name for p in (tmp_path / "p").iterdir()} == {
        "src_projected.wav",
        "seed2_projected.wav",
        "projection.json",
        "projection.pt",
        "spectrograms.png",
    }
    edit.main(
        [
            "mix",
            "--a",
            "seed:1",
            "--b",
            "seed:2",
            "--crossover",
            str(N_WS),
            "3",
            "--out_dir",
            str(tmp_path / "m"),
            *common,
        ]
    )
    z1 = torch.randn(1, model.z_dim, generator=torch.Generator().manual_seed(1))
    a = model.generate_from_latent(z1)[0].clamp(-1, 1)
    assert (read(tmp_path / "m" / f"mix_{N_WS}.wav") - a).abs().max() <= 2 / 32768  # every layer from A: A
    assert (read(tmp_path / "m" / "mix_3.wav") - a).abs().max() > 0.01
    edit.main(
        ["convert", "--source", "seed:1", "--target", str(src), "--layers", "--out_dir", str(tmp_path / "c"), *common]
    )
    assert (read(tmp_path / "c" / "converted.wav") - a).abs().max() <= 2 / 32768  # nothing swapped: the source
    assert (tmp_path / "c" / "spectrograms.png").is_file()


def test_direction_and_probe_commands(mel_ckpt, tmp_path):
    model = load_asgan(mel_ckpt, None, "cpu", progress=False)
    rows = ["path,label"]
    for i in range(12):
        label = ["one", "two"][i % 2]
        path = generated_wav(model, tmp_path / f"{label}_{i}.wav", seed_w(model.g, 100 + i % 2) + 0.01 * i)
        rows.append(f"{path},{label}")
    (tmp_path / "split.csv").write_text("\n".join(rows) + "\n")
    common = ["--checkpoint", str(mel_ckpt), *FAST]
    edit.main(
        [
            "direction",
            "--csv",
            str(tmp_path / "split.csv"),
            "--labels",
            "one",
            "two",
            "--per_label",
            "3",
            "--apply",
            "seed:7",
            "--strengths",
            "0",
            "1",
            "--out_dir",
            str(tmp_path / "d"),
            *common,
        ]
    )
    d = torch.load(tmp_path / "d" / "direction_one_to_two.pt")
    assert d["direction"].shape == (N_WS, model.w_dim) and d["n"] == [3, 3]
    z7 = torch.randn(1, model.z_dim, generator=torch.Generator().manual_seed(7))
    unedited = model.generate_from_latent(z7)[0].clamp(-1, 1)
    assert (read(tmp_path / "d" / "seed7_two+0.wav") - unedited).abs().max() <= 2 / 32768
    assert (read(tmp_path / "d" / "seed7_two+1.wav") - unedited).abs().max() > 0.01
    edit.main(
        [
            "probe",
            "--train_csv",
            str(tmp_path / "split.csv"),
            "--test_csv",
            str(tmp_path / "split.csv"),
            "--n_train",
            "8",
            "--n_test",
            "4",
            "--out_dir",
            str(tmp_path / "pr"),
            *common,
            "--steps",
            "20",
        ]
    )
    probe = json.loads((tmp_path / "pr" / "probe.json").read_text())
    assert (probe["n_train"], probe["n_test"], probe["chance"]) == (8, 4, 0.5)
    assert set(probe["probes"]) == {"w (trained G)", "z (trained G)", "w (random G)"}
    assert probe["probes"]["w (trained G)"]["accuracy"] == 1.0  # two well separated voices


def hubert_checkpoint(path):
    """A tiny hubert_L6 generator whose c_dim is the tiny HuBERT fixture's 48, and a vocoder for it."""
    torch.manual_seed(1)
    cfg = tiny_cfg(c_dim=HUBERT_DIM)
    g = Generator(cfg.rp_w_cfg).eval()
    g.calibrate_norm_ema(torch.randn(64, g.z_dim))
    torch.save({"cfg_yaml": config_to_yaml(cfg), "g_ema_state_dict": g.state_dict()}, path)
    save_vocoder(
        HifiGAN(HifiGANConfig(HUBERT_DIM, [10, 8, 2, 2], [20, 16, 4, 4], upsample_initial_channel=16)),
        path.with_name("voc48.pt"),
    )
    return path


def test_hubert_projection_with_the_tiny_hubert(tmp_path, fixtures_dir):
    """Real HuBERT is not available offline: the front end runs on the tiny HuBERT fixture (48-dim layer 6)."""
    from density.features.hubert import HubertFeatureReader

    ckpt = hubert_checkpoint(tmp_path / "hub.pt")
    hubert = fixtures_dir / "hubert_fairseq" / "tiny_hubert_fairseq.pt"
    t = torch.arange(16000) / 16000
    wav = (0.3 * torch.sin(2 * torch.pi * 220 * t) * torch.exp(-3 * t)).numpy()
    sf.write(tmp_path / "tone.wav", wav, 16000, subtype="FLOAT")
    model = load_asgan(ckpt, ckpt.with_name("voc48.pt"), "cpu", progress=False)
    feats = edit.FrontEnd(model, hubert)(torch.from_numpy(wav)[None])
    full = HubertFeatureReader(hubert, layer=6).get_feats(audio=torch.from_numpy(wav))  # (50, 48)
    torch.testing.assert_close(feats[0], full[17:33])  # centre 16 frames of 50
    edit.main(
        [
            "project",
            str(tmp_path / "tone.wav"),
            "--checkpoint",
            str(ckpt),
            "--vocoder",
            str(ckpt.with_name("voc48.pt")),
            "--hubert",
            str(hubert),
            "--out_dir",
            str(tmp_path / "p"),
            *FAST,
        ]
    )
    result = json.loads((tmp_path / "p" / "projection.json").read_text())
    assert result["loss"] == "cosine" and result["error"][0] < result["w_avg_error"][0]


def test_errors_are_one_line(mel_ckpt, tmp_path, capsys):
    sf.write(tmp_path / "8k.wav", torch.zeros(8000).numpy(), 8000)
    sf.write(tmp_path / "empty.wav", torch.zeros(0).numpy(), 16000)
    save_vocoder(tiny_vocoder(), tmp_path / "voc.pt")
    hub = hubert_checkpoint(tmp_path / "hub.pt")
    cases = [
        (["project", str(tmp_path / "8k.wav")], mel_ckpt, "sample rate is 8000 Hz, expected 16000 Hz"),
        (["project", str(tmp_path / "empty.wav")], mel_ckpt, "file holds no samples"),
        (["project", str(tmp_path / "none.wav")], mel_ckpt, "no such file"),
        (["project", "seed:1"], tmp_path / "voc.pt", "no 'cfg_yaml' entry"),
        (["project", "seed:1", "--vocoder", str(tmp_path / "voc48.pt")], hub, "needs its HuBERT model, --hubert"),
        (
            ["convert", "--source", "seed:1", "--target", "seed:2", "--layers", "99"],
            mel_ckpt,
            "layer indices must be in 0..15",
        ),
    ]
    for argv, ckpt, message in cases:
        with pytest.raises(SystemExit) as e:
            edit.main([*argv, "--checkpoint", str(ckpt), "--out_dir", str(tmp_path / "o"), *FAST])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and err.count("\n") == 1 and err.startswith("error: "), err
    with pytest.raises(SystemExit):
        edit.parse_args(["project", "seed:x", "--checkpoint", str(mel_ckpt), "--out_dir", str(tmp_path / "o")])


def test_outputs_are_checked_before_the_checkpoint_loads(mel_ckpt, tmp_path, capsys, monkeypatch):
    """`project` with two inputs of one file name used to write one output over the other without a word, and
    every sub-command replaced files already in --out_dir."""
    real_load = edit.load_asgan
    monkeypatch.setattr(edit, "load_asgan", lambda *a, **k: pytest.fail("checkpoint loaded"))
    out = tmp_path / "o"
    out.mkdir()
    (out / "converted.wav").write_bytes(b"mine")
    a, b = tmp_path / "a" / "x.wav", tmp_path / "b" / "x.wav"
    cases = [
        (["project", str(a), str(b)], f"{a} and {b} would both be written to {out / 'x_projected.wav'}"),
        (["project", "seed:3", str(tmp_path / "seed3.wav")], "would both be written to"),
        (["convert", "--source", "seed:1", "--target", "seed:2", "--layers", "3"], "converted.wav exists already"),
        (
            ["direction", "--csv", "s.csv", "--labels", "one", "../../two", "--apply", "seed:1"],
            "would lie outside",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            edit.main([*argv, "--checkpoint", str(mel_ckpt), "--out_dir", str(out), *FAST])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in out.iterdir()) == ["converted.wav"]
    assert not (tmp_path / "two+0.wav").exists()
    monkeypatch.setattr(edit, "load_asgan", real_load)
    convert = ["convert", "--source", "seed:1", "--target", "seed:2", "--layers", "3", "--out_dir", str(out)]
    edit.main([*convert, "--checkpoint", str(mel_ckpt), *FAST, "--overwrite"])
    assert (out / "converted.wav").read_bytes()[:4] == b"RIFF"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lr", "inf"], "--lr inf is outside (0, 10]"),
        (["--lr", "1e6"], "--lr 1e+06 is outside (0, 10]"),
        (["--lr", "nan"], "--lr nan is outside (0, 10]"),
        (["--strengths", "1", "nan"], "--strengths nan: each must be a number in [-10, 10]"),
        (["--strengths", "1e9", "-20"], "--strengths 1e+09 -20: each must be a number in [-10, 10]"),
    ],
)
def test_absurd_numbers_are_refused(tmp_path, capsys, argv, message):
    """--lr inf or nan and --strengths nan used to run and write garbage (a non-finite w) with status 0."""
    direction = ["direction", "--csv", "s.csv", "--labels", "one", "two", "--apply", "seed:1"]
    with pytest.raises(SystemExit) as e:
        edit.parse_args([*direction, *argv, "--checkpoint", "c.pt", "--out_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err, err
