"""The offline demo: train ASGAN on the built-in spoken-digits corpus and show that it learns.

    make demo                         # = python demo.py --out outputs/demo
    DEMO_STEPS=3000 make demo         # a longer training run (the preset's fixed length otherwise)
    python demo.py --out outputs/demo_tiny --tiny      # every stage in seconds (what the test runs)

Every stage runs one of the repo's own commands, as a user would type it, and is skipped when it has finished
before (a marker in <out>/.done/), so re-running after Ctrl-C continues where it stopped (training resumes from
its newest checkpoint). Stages: corpus (density.digits) -> splits (split_data.py) -> log-mel features
(hubert_feature_reader.py) -> evaluation classifier (train_classifier.py) -> ASGAN at initialisation and trained
(train_asgan.py preset=mel_small) -> samples (generate.py) -> metrics (evaluate.py) -> report (density.report):
<out>/report.md and <out>/report.html.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from density import cli
from density.fileio import write_text

ROOT = Path(__file__).resolve().parent
PYTHON = sys.executable
SEED = 0
# The full demo: 8,000 clips (test split >= 1,000 for fair reference rows), the CPU classifier, N = 2048.
FULL = dict(speakers=400, per_word=2, test_frac=0.15, classifier=[], asgan=[], n_eval=2048, n_samples=16)
# Seconds per stage on purpose: a handful of speakers, a tiny model, a few steps.
TINY = dict(speakers=12, per_word=1, test_frac=0.2, n_eval=64, n_samples=8,
            classifier=['max_steps=20', 'batch_size=16', 'validation_interval=10', 'checkpoint_interval=10'],
            asgan=['max_steps=6', 'batch_size=8', 'checkpoint_interval=3', 'validation_interval=3',
                   'rp_w_cfg.layer_specs=[[32,3,12],[32,3,24],[16,3,48],[16,3,96]]', 'rp_w_cfg.ff_channels=32',
                   'rp_w_cfg.w_dim=32', 'z_dim=32', 'rp_w_cfg.z_dim=32', 'rp_w_cfg.D_head_dim=16'])


def run_stage(name, out, argv, log):
    """Run one command unless <out>/.done/<name> exists; append its timing to the log. -> seconds taken."""
    marker = out / '.done' / name
    if marker.exists():
        print(f'== {name}: done before, skipped', flush=True)
        return None
    print(f'== {name}: {shlex.join(argv)}', flush=True)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f'demo: stage {name} failed (exit {proc.returncode}); fix the error above and run the '
                         'demo again: finished stages are skipped')
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_text(marker, f'{seconds:.1f}\n')
    log[name] = seconds
    print(f'== {name}: {seconds:.0f} s', flush=True)
    return seconds


def final_checkpoint(run_dir):
    """The newest periodic checkpoint of a training run folder."""
    ckpts = sorted(Path(run_dir).glob('ckpt_[0-9]*.pt'))
    if not ckpts:
        raise SystemExit(f'demo: {run_dir} holds no checkpoint')
    return ckpts[-1]


def stages(out, setting, steps):
    """[(name, argv or a function of nothing returning argv)] in order."""
    py = [PYTHON]
    corpus, splits, feats = out / 'corpus', out / 'splits', out / 'features'
    csv = {s: splits / f'sc09-{s}.csv' for s in ('train', 'valid', 'test')}
    train_args = [f'train_root={feats}', f'sc09_train_csv={csv["train"]}', f'sc09_valid_csv={csv["valid"]}',
                  'n_valid=0', f'seed={SEED}', *setting['asgan']]
    classifier = out / 'classifier' / 'classifier_best.pt'
    evaluate = py + ['evaluate.py', '--classifier', str(classifier), '--train_csv', str(csv['train']),
                     '--test_csv', str(csv['test']), '--n', str(setting['n_eval']), '--seed', str(SEED),
                     '--device', 'cpu', '--cache_dir', str(out / 'eval_cache')]
    return [
        ('corpus', py + ['-m', 'density.digits', '--out', str(corpus), '--speakers', str(setting['speakers']),
                         '--per_word', str(setting['per_word']), '--test_frac', str(setting['test_frac']),
                         '--seed', str(SEED), '--overwrite']),
        ('splits', py + ['split_data.py', '--root_path', str(corpus), '--sc09_only', 'true', '--out_dir', str(splits)]),
        *[(f'features_{s}', py + ['hubert_feature_reader.py', '--csv', str(csv[s]), '--out', str(feats),
                                  '--type', 'melspec']) for s in ('train', 'valid')],
        ('classifier', py + ['train_classifier.py', f'train_csv={csv["train"]}', f'valid_csv={csv["valid"]}',
                             f'test_csv={csv["test"]}', f'checkpoint_path={out / "classifier"}', f'seed={SEED}',
                             'resume_checkpoint=auto', *setting['classifier']]),
        ('asgan_init', py + ['train_asgan.py', 'preset=mel_small', *train_args, 'max_steps=1',
                             f'checkpoint_path={out / "asgan_init"}', 'overwrite=true']),
        ('asgan', py + ['train_asgan.py', 'preset=mel_small', *train_args, *([f'max_steps={steps}'] if steps else []),
                        f'checkpoint_path={out / "asgan"}', 'resume_checkpoint=auto']),
        ('samples', lambda: py + ['generate.py', '--checkpoint', str(final_checkpoint(out / 'asgan')),
                                  '--out_dir', str(out / 'samples'), '--n', str(setting['n_samples']),
                                  '--seed', str(SEED), '--device', 'cpu']),
        ('metrics_trained', lambda: evaluate + ['--checkpoint', str(final_checkpoint(out / 'asgan')),
                                                '--json', str(out / 'metrics_trained.json')]),
        ('metrics_init', lambda: evaluate + ['--checkpoint', str(final_checkpoint(out / 'asgan_init')),
                                             '--json', str(out / 'metrics_init.json')]),
        ('report', py + ['-m', 'density.report', '--demo_dir', str(out)]),
    ]


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='outputs/demo', help='demo folder (created; re-running continues in it)')
    p.add_argument('--tiny', action='store_true', help='tiny settings: every stage in seconds (for tests)')
    p.add_argument('--steps', type=int, default=int(os.environ.get('DEMO_STEPS', 0)),
                   help='ASGAN training steps (default: $DEMO_STEPS, else the preset\'s max_steps)')
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / 'timings.json'
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    total = time.perf_counter()
    for name, argv_ in stages(out, TINY if args.tiny else FULL, args.steps):
        if name == 'report':  # the report shows every stage's time, so it is always written last and anew
            write_text(timings_path, json.dumps(timings, indent=2))
            (out / '.done' / 'report').unlink(missing_ok=True)
        run_stage(name, out, argv_() if callable(argv_) else argv_, timings)
        write_text(timings_path, json.dumps(timings, indent=2))
    print(f'demo finished in {time.perf_counter() - total:.0f} s: {out / "report.md"}, {out / "report.html"}')


if __name__ == '__main__':
    cli.run(main)
