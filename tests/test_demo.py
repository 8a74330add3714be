"""demo.py end to end with tiny settings (every stage in seconds): the same stages and commands as `make demo`,
so that the pipeline cannot rot; then a re-run skips every finished stage."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole-pipeline / multi-process runs

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_demo_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "demo"
    env_cmd = [sys.executable, str(ROOT / "demo.py"), "--out", str(out), "--tiny"]
    proc = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings["stages"]) == [
        "corpus",
        "splits",
        "features_train",
        "features_valid",
        "asgan_init",
        "classifier",
        "metrics_init",
        "asgan",
        "samples",
        "metrics_trained",
        "report",
    ]
    assert timings["side_by_side"] == [["classifier", "metrics_init"], ["asgan"]]
    lanes = [sum(timings["stages"][s] for s in lane) for lane in timings["side_by_side"]]
    assert timings["total"] == pytest.approx(sum(timings["stages"].values()) - min(lanes))
    assert (out / "logs" / "classifier.log").stat().st_size > 0 and (out / "logs" / "metrics_init.log").is_file()
    md = (out / "report.md").read_text()
    assert "| ASGAN, trained (EMA G) | 64 |" in md and "| ASGAN at initialisation | 64 |" in md
    assert len(list((out / "samples").glob("*.wav"))) == 8
    html = (out / "report.html").read_text()
    assert html.count("<audio controls") == 8
    rows = json.loads((out / "metrics_trained.json").read_text())["rows"]
    assert [(r["name"], r["n"]) for r in rows] == [
        ("ckpt_00000005.pt", 64),
        ("real train", 90),
        ("real test", 20),
        ("Griffin-Lim of real test", 20),
        ("white noise", 64),
    ]
    assert all(math.isfinite(r["fid"]) and r["inception_score"] > 0.99 for r in rows)

    again = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("done before, skipped") == len(timings["stages"]) - 1  # all but the report, rewritten

    # a marker whose outputs are gone does not count; a cache beside the checkpoints is not taken as the newest one
    (out / "samples" / "seed0_00003.wav").unlink()
    (out / "metrics_trained.json").unlink()
    (out / "asgan" / "ckpt_00000005.pt.w_avg-0123abcd-n100.pt").write_bytes(b"generate.py's mean-w cache")
    repaired = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert repaired.returncode == 0, repaired.stdout[-3000:] + repaired.stderr[-3000:]
    for stage in ("samples", "metrics_trained"):
        assert f"== {stage}: done before, but " in repaired.stdout
    assert repaired.stdout.count("done before, skipped") == len(timings["stages"]) - 3
    assert len(list((out / "samples").glob("*.wav"))) == 8
    assert json.loads((out / "metrics_trained.json").read_text())["rows"][0]["name"] == "ckpt_00000005.pt"

    # make demo-vocoder on the same folder: the data stages are skipped, the two vocoders train side by side
    vocoders = subprocess.run(env_cmd + ["--vocoders"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert vocoders.returncode == 0, vocoders.stdout[-3000:] + vocoders.stderr[-3000:]
    assert vocoders.stdout.count("done before, skipped") == 5  # corpus, splits, features x 2, classifier
    rows = json.loads((out / "vocoder_metrics.json").read_text())["rows"]
    assert [(r["name"], r["n"]) for r in rows] == [
        ("real clips", 16),
        ("Griffin-Lim (32 it.)", 16),
        ("HiFi-GAN small (mel)", 16),
        ("iSTFT (mel)", 16),
    ]
    assert rows[2]["steps"] == rows[3]["steps"] == 2
    after = json.loads((out / "timings.json").read_text())
    demo_stages = {k: v for k, v in after["stages"].items() if not k.startswith("vocoder_")}  # the total is theirs
    lanes = [sum(demo_stages[s] for s in lane) for lane in after["side_by_side"]]
    assert after["total"] == pytest.approx(sum(demo_stages.values()) - min(lanes))
    assert list(after["stages"])[-4:] == ["report", "vocoder_hifigan", "vocoder_istft", "vocoder_metrics"]
    md = (out / "report.md").read_text()
    assert "## Vocoders" in md and "| iSTFT (mel) | 16 |" in md and "vocoder_istft (make demo-vocoder" in md
    assert "<td>HiFi-GAN small (mel)</td>" in (out / "report.html").read_text()
