"""demo.py end to end with tiny settings (every stage in seconds): the same stages and commands as `make demo`,
so that the pipeline cannot rot; then a re-run skips every finished stage."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_demo_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / 'demo'
    env_cmd = [sys.executable, str(ROOT / 'demo.py'), '--out', str(out), '--tiny']
    proc = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    timings = json.loads((out / 'timings.json').read_text())
    assert list(timings['stages']) == ['corpus', 'splits', 'features_train', 'features_valid', 'asgan_init',
                                       'classifier', 'metrics_init', 'asgan', 'samples', 'metrics_trained', 'report']
    assert timings['side_by_side'] == [['classifier', 'metrics_init'], ['asgan']]
    lanes = [sum(timings['stages'][s] for s in lane) for lane in timings['side_by_side']]
    assert timings['total'] == pytest.approx(sum(timings['stages'].values()) - min(lanes))
    assert (out / 'logs' / 'classifier.log').stat().st_size > 0 and (out / 'logs' / 'metrics_init.log').is_file()
    md = (out / 'report.md').read_text()
    assert '| ASGAN, trained (EMA G) | 64 |' in md and '| ASGAN at initialisation | 64 |' in md
    assert len(list((out / 'samples').glob('*.wav'))) == 8
    html = (out / 'report.html').read_text()
    assert html.count('<audio controls') == 8
    rows = json.loads((out / 'metrics_trained.json').read_text())['rows']
    assert [(r['name'], r['n']) for r in rows] == [('ckpt_00000005.pt', 64), ('real train', 90), ('real test', 20),
                                                  ('Griffin-Lim of real test', 20), ('white noise', 64)]
    assert all(math.isfinite(r['fid']) and r['inception_score'] > 0.99 for r in rows)

    again = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count('done before, skipped') == len(timings['stages']) - 1  # all but the report, rewritten
