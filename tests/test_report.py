"""density.report on a made-up demo folder: report.md / report.html contents, and report.html rendered in headless
Chromium with every image and audio element loading (CI installs Debian's chromium; without it, outside CI, the
rendering test is skipped and says how to install it)."""

import json
import os
import shutil
import subprocess

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from density.audio.signal import save_wav
from density.config import config_to_yaml, parse_config
from density.demo import report
from density.evaluation.classifier import ResNeXt, checkpoint_dict

CHECK_SCRIPT = """<script>
window.addEventListener('load', async () => {
  const audios = [...document.querySelectorAll('audio')];
  const loaded = await Promise.all(audios.map(a => a.readyState >= 1 ? true : new Promise(done => {
    a.addEventListener('loadedmetadata', () => done(true));
    a.addEventListener('error', () => done(false));
    a.load();
  })));
  document.body.setAttribute('data-images', [...document.images].map(i => i.naturalWidth > 0 ? 1 : 0).join(''));
  document.body.setAttribute('data-audio', loaded.map(ok => ok ? 1 : 0).join(''));
});
</script></body>"""


def metrics(name, n, fid, is_):
    return {
        "name": name,
        "n": n,
        "fid": fid,
        "inception_score": is_,
        "modified_inception_score": 2.0,
        "am_score": 0.5,
        "ndb_over_k": 0.3,
    }


def make_demo_dir(root, n_samples=3):
    """What the demo's stages leave behind, made up: wavs, a test split, tensorboard scalars, metrics, timings."""
    g = torch.Generator().manual_seed(0)
    rows = ["path,label"]
    for k, label in enumerate(["zero", "one", "two"]):
        wav = root / "corpus" / label / f"x_nohash_{k}.wav"
        save_wav(wav, 0.1 * torch.randn(16000, generator=g))
        rows.append(f"{wav},{label}")
    (root / "splits").mkdir()
    (root / "splits" / "sc09-test.csv").write_text("\n".join(rows) + "\n")
    for k in range(n_samples):
        save_wav(root / "samples" / f"seed0_{k:05d}.wav", 0.1 * torch.randn(16000, generator=g))
    writer = SummaryWriter(str(root / "asgan" / "logs"))
    for step in range(0, 30, 10):
        for tag, _ in report.CURVES:
            writer.add_scalar(tag, 1.0 / (step + 1), step)
    writer.close()
    reference = [metrics("real test", 3, 0.0, 9.0), metrics("noise", 3, 90.0, 1.0)]  # as evaluate.py --json
    (root / "metrics_trained.json").write_text(json.dumps({"rows": [metrics("ckpt", 8, 10.0, 5.0)] + reference}))
    (root / "metrics_init.json").write_text(json.dumps({"rows": [metrics("ckpt", 8, 80.0, 1.2)] + reference}))
    (root / "timings.json").write_text(
        json.dumps(
            {
                "stages": {"corpus": 1.0, "classifier": 2.5, "asgan": 2.0},
                "side_by_side": [["classifier"], ["asgan"]],
                "total": 3.5,
            }
        )
    )
    return root


def test_report_files_and_tables(tmp_path):
    demo = make_demo_dir(tmp_path)
    md = report.build(demo).read_text()
    for needle in (
        "| ASGAN, trained (EMA G) | 8 | 10.000 | 5.000 |",
        "| ASGAN at initialisation | 8 | 80.000 | 1.200 |",
        "| real test | 3 | 0.000 | 9.000 |",
        "| noise | 3 | 90.000 | 1.000 |",
        "| total (wall clock) | 4 s |",
        "machine: ",
        "Side by side, one CPU thread each: classifier and asgan",
    ):
        assert needle in md
    assert (demo / "report_spectrograms.png").stat().st_size > 1000
    assert (demo / "report_curves.png").stat().st_size > 1000
    assert sorted(p.name for p in (demo / "samples").glob("*.png")) == [f"seed0_{k:05d}.png" for k in range(3)]
    page = (demo / "report.html").read_text()
    assert page.count("<audio controls") == 3 and page.count("<img ") == 5


def test_report_shows_mean_and_std_of_repeated_metrics(tmp_path):
    demo = make_demo_dir(tmp_path)
    rows = json.loads((demo / "metrics_trained.json").read_text())["rows"]
    rows[0].update(repeats=3, fid_std=0.25, inception_score_std=0.125)  # as evaluate.py --repeats 3 --json
    (demo / "metrics_trained.json").write_text(json.dumps({"rows": rows}))
    assert "| ASGAN, trained (EMA G) | 8 | 10.000 ± 0.250 | 5.000 ± 0.125 | 2.000 |" in report.build(demo).read_text()
    assert "<td>10.000 ± 0.250</td>" in (demo / "report.html").read_text()


def test_report_says_what_the_classifier_hears_and_what_the_numbers_mean(tmp_path):
    demo = make_demo_dir(tmp_path)
    md = report.build(demo).read_text()
    assert (
        "heard as" not in md and "The paper's released HuBERT model saw 8,320,000 clips" in md
    )  # no run, no classifier
    torch.manual_seed(0)
    (demo / "classifier").mkdir()
    torch.save(checkpoint_dict(ResNeXt.from_arch("cpu")), demo / "classifier" / "classifier_best.pt")
    cfg = parse_config(["preset=mel_small"])
    for steps in (999, 1999):
        torch.save({"steps": steps, "cfg_yaml": config_to_yaml(cfg)}, demo / "asgan" / f"ckpt_{steps:08d}.pt")
    (demo / "asgan" / "ckpt_00001999.pt.w_avg-0123456789abcdef-n10000.pt").write_bytes(b"a cache, not a checkpoint")
    train = ["path,label"] + [f"{demo}/corpus/zero/x_nohash_0.wav,zero"] * 1000
    (demo / "splits" / "sc09-train.csv").write_text("\n".join(train) + "\n")
    md = report.build(demo).read_text()
    assert (
        "The trained generator saw 32,000 clips (2,000 steps of batch 16: 32.0 passes over its 1,000 training clips) "
        "on a CPU; the paper's released HuBERT model saw 8,320,000 (520,000 steps of batch 16, on a GPU), 260 times"
    ) in md
    heard = [line.split(": ", 1)[1] for line in md.splitlines() if line.startswith("- [seed0_")]
    assert len(heard) == 3 and all(h.startswith("heard as “") and h.endswith("%)") for h in heard), heard
    page = (demo / "report.html").read_text()
    assert page.count("<br>heard as “") == 3 and "32,000 clips" in page


def test_report_html_renders_in_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium) - CI runs this test")
    demo = make_demo_dir(tmp_path)
    report.build(demo)
    check = demo / "check.html"  # next to report.html, so relative links resolve the same way
    check.write_text((demo / "report.html").read_text().replace("</body>", CHECK_SCRIPT))
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            check.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'data-images="11111"' in dom, dom[:500]  # two figures and three sample spectrograms
    assert 'data-audio="111"' in dom, dom[:500]
