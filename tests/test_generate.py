"""generate.py: wavs, PNG grid, seeding, interpolation and truncation, on tiny checkpoints made here."""

import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import soundfile as sf
import torch
from helpers import make_checkpoint, tiny_vocoder

from density.audio.plots import write_spectrogram_grid
from density.audio.signal import log_mel
from density.inference import generate
from density.inference.asgan import load_asgan
from density.inference.latent import w_stats
from density.vocoders.vocoder import save_vocoder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(tmp_path):
    make_checkpoint(tmp_path / "ckpt.pt")
    save_vocoder(tiny_vocoder(), tmp_path / "voc.pt")
    return [
        "--checkpoint",
        str(tmp_path / "ckpt.pt"),
        "--vocoder",
        str(tmp_path / "voc.pt"),
        "--no_progress",
        "--device",
        "cpu",
    ]


def read(folder):
    """{file name: samples} of every wav in folder, checking 16 kHz mono 1 s."""
    out = {}
    for path in sorted(Path(folder).glob("*.wav")):
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")
        out[path.name], _ = sf.read(str(path), dtype="float32")
    return out


def generated(base, folder, *options):
    """generate.py with the arguments base, --out_dir folder, options -> read(folder)."""
    generate.main([*base, "--out_dir", str(folder), *options])
    return read(folder)


def test_writes_wavs_and_png(tiny, tmp_path):
    wavs = generated(tiny, tmp_path / "a", "--n", "5", "--batch_size", "2", "--seed", "3")
    assert list(wavs) == [f"seed3_{i:05d}.wav" for i in range(5)]
    assert all(abs(w).max() > 0 for w in wavs.values())
    png = matplotlib.image.imread(tmp_path / "a" / "spectrograms.png")
    assert png.ndim == 3 and png.shape[0] > 50 and png.shape[1] > 200
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.name.startswith(".")) == []  # no temporaries
    again = generated(tiny, tmp_path / "b", "--n", "3", "--batch_size", "3", "--seed", "3", "--png_max", "0")
    assert not (tmp_path / "b" / "spectrograms.png").exists()
    for name, w in again.items():  # same seed, other batch size: same samples up to float and 16-bit rounding
        assert abs(w - wavs[name]).max() <= 2 / 32768


def test_interpolation_endpoints_match_seeds(tiny, tmp_path):
    interp = generated(tiny, tmp_path / "i", "--interpolate", "4", "9", "--steps", "4")
    assert list(interp) == [f"interp_z_4_9_{k:03d}.wav" for k in range(4)]
    for seed, name in [(4, "interp_z_4_9_000.wav"), (9, "interp_z_4_9_003.wav")]:
        single = generated(tiny, tmp_path / f"s{seed}", "--n", "1", "--seed", str(seed))[f"seed{seed}_00000.wav"]
        assert abs(single - interp[name]).max() <= 2 / 32768  # equal up to 16-bit rounding
    assert abs(interp["interp_z_4_9_001.wav"] - interp["interp_z_4_9_000.wav"]).max() > 0


def test_w_interpolation_and_truncation(tiny, tmp_path):
    w_path = ["--interpolate", "1", "2", "--space", "w", "--steps", "3"]
    assert len(generated(tiny, tmp_path / "w", *w_path, "--truncation", "0.5", "--w_avg_samples", "100")) == 3
    truncated = generated(
        tiny, tmp_path / "t", "--n", "3", "--truncation", "0", "--w_avg_samples", "100", "--png_max", "0"
    )
    wavs = list(truncated.values())  # psi = 0: every sample is the mean w's
    assert all((w == wavs[0]).all() for w in wavs)


def test_truncation_is_lerp_toward_mean_w(tiny, tmp_path):
    options = ["--n", "2", "--seed", "5", "--truncation", "0.5", "--w_avg_samples", "300", "--png_max", "0"]
    got = generated(tiny, tmp_path / "t", *options)
    model = load_asgan(tiny[1], tiny[3], "cpu", progress=False)
    w_avg = w_stats(model.g, 300).w_avg
    w = model.z2w(torch.randn(2, model.z_dim, generator=torch.Generator().manual_seed(5)))
    expected = model.generate_from_w(w_avg + 0.5 * (w - w_avg)).clamp(-1, 1)
    for i in range(2):
        assert abs(got[f"seed5_{i:05d}.wav"] - expected[i].numpy()).max() <= 2 / 32768
    assert abs(expected - model.generate_from_w(w)).max() > 0.01  # psi = 0.5 really changed the audio


def test_png_of_a_silent_clip(tmp_path):
    silence = log_mel(torch.zeros(16000))  # constant log(1e-5): the colour scale must still be valid
    write_spectrogram_grid(tmp_path / "s.png", [silence, silence + 3], ["silence", "louder"])
    assert matplotlib.image.imread(tmp_path / "s.png").ndim == 3


def test_mel_checkpoint_with_griffin_lim(tmp_path):
    make_checkpoint(tmp_path / "mel.pt", mel=True)
    got = generated(
        ["--checkpoint", str(tmp_path / "mel.pt")], tmp_path / "m", "--n", "2", "--no_progress", "--device", "cpu"
    )
    assert len(got) == 2 and (tmp_path / "m" / "spectrograms.png").is_file()
    model = load_asgan(tmp_path / "mel.pt", None, "cpu", progress=False)  # Griffin-Lim
    expected = model.generate_from_latent(torch.randn(2, model.z_dim, generator=torch.Generator().manual_seed(0)))
    assert expected.abs().max() > 1e-3
    for i in range(2):
        assert abs(got[f"seed0_{i:05d}.wav"] - expected[i].clamp(-1, 1).numpy()).max() <= 2 / 32768


def test_command_line_help_and_errors(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "generate.py"), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0
    for option in [
        "--pretrained",
        "--checkpoint",
        "--vocoder",
        "--interpolate",
        "--space",
        "--steps",
        "--truncation",
        "--w_avg_samples",
        "--batch_size",
        "--seed",
        "--device",
    ]:
        assert option in out.stdout
    with pytest.raises(SystemExit):
        generate.parse_args(["--vocoder", "v.pt", "--pretrained", "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        generate.parse_args(["--out_dir", str(tmp_path)])  # neither --pretrained nor --checkpoint


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--truncation", "nan"], "--truncation must be a finite number, got nan"),
        (["--device", "tpu"], "--device tpu: not a device"),
        (["--out_dir", "FILE"], "is a file; give a folder"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_loads(tmp_path, tiny, capsys, monkeypatch, extra, message):
    """These used to fail after loading (or, for nan, write garbage wavs with status 0)."""
    monkeypatch.setattr(generate, "load_asgan", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "FILE").write_text("")
    extra = [str(tmp_path / "FILE") if a == "FILE" else a for a in extra]
    with pytest.raises(SystemExit) as e:
        generate.main([*tiny, "--out_dir", str(tmp_path / "o"), *extra])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unreadable_checkpoint_is_one_error_line_and_status_2(tmp_path, tiny, capsys):
    (tmp_path / "ckpt.pt").write_bytes(bytes(range(256)))
    with pytest.raises(SystemExit) as e:
        generate.main([*tiny, "--out_dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {tmp_path / 'ckpt.pt'}: not a readable ASGAN checkpoint")
    assert err.count("\n") == 1


def test_existing_outputs_are_refused_before_the_model_loads_unless_overwrite(tiny, tmp_path, capsys, monkeypatch):
    """generate.py used to replace wavs and spectrograms.png already in --out_dir without a word."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "spectrograms.png").write_bytes(b"my figure")
    argv = [*tiny, "--out_dir", str(out), "--n", "2"]
    real_load = generate.load_asgan
    monkeypatch.setattr(generate, "load_asgan", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(SystemExit) as e:
        generate.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {out / 'spectrograms.png'} exists already: give --overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["spectrograms.png"]
    monkeypatch.setattr(generate, "load_asgan", real_load)
    generate.main([*argv, "--png_max", "0"])  # the PNG is not written: nothing to refuse
    assert (out / "spectrograms.png").read_bytes() == b"my figure" and len(read(out)) == 2
    with pytest.raises(SystemExit):  # the wavs of the last run are not replaced either
        generate.main([*argv, "--png_max", "0"])
    assert "seed0_00000.wav and 1 more exists already" in capsys.readouterr().err
    generate.main([*argv, "--overwrite"])
    assert (out / "spectrograms.png").read_bytes()[:4] == b"\x89PNG" and len(read(out)) == 2


@pytest.mark.parametrize("psi", ["1e9", "-100", "-3", "2.5"])
def test_truncation_outside_its_range_is_refused(tmp_path, capsys, psi):
    """--truncation 1e9 used to write clipped full-scale noise with status 0."""
    with pytest.raises(SystemExit) as e:
        generate.parse_args(["--pretrained", "--out_dir", str(tmp_path), "--truncation", psi])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--truncation {float(psi):g} is outside [-2, 2]" in err
    for edge in ("-2", "2", "0"):
        assert generate.parse_args(["--pretrained", "--out_dir", str(tmp_path), "--truncation", edge])
