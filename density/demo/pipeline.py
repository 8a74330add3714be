"""The offline demo: train ASGAN on the built-in spoken-digits corpus and show that it learns.

    make demo                         # = python demo.py --out outputs/demo
    make demo-vocoder                 # = python demo.py --out outputs/demo --vocoders (not part of make demo)
    DEMO_STEPS=3000 make demo         # a longer training run (the preset's fixed length otherwise)
    python demo.py --out outputs/demo_tiny --tiny      # every stage in seconds (what the test runs)

Every stage runs one of the repo's own commands, as a user would type it, and is skipped when it has finished
before (a marker in <out>/.done/), so re-running after Ctrl-C continues where it stopped (training resumes from
its newest checkpoint). Stages: corpus (density.digits) -> splits (split_data.py) -> log-mel features
(hubert_feature_reader.py) -> ASGAN at initialisation (train_asgan.py preset=mel_small) -> side by side, one
CPU thread each: [evaluation classifier (train_classifier.py) -> metrics of the initial ASGAN (evaluate.py)] and
[ASGAN training] -> samples (generate.py) -> metrics of the trained ASGAN -> report (density.report):
<out>/report.md and <out>/report.html. The side lane's output goes to <out>/logs/<stage>.log.

--vocoders (make demo-vocoder) runs the stages the vocoders need (corpus, splits, features, classifier; skipped when
done), then trains the small mel vocoders side by side, one CPU thread each, for a fixed number of steps
(train_vocoder.py: HiFi-GAN small and the iSTFT vocoder), scores them and Griffin-Lim on the test split
(density.vocoder_eval -> <out>/vocoder_metrics.json) and, once `make demo` has finished, rewrites the report with
their rows.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from density.runtime import cli
from density.runtime.fileio import write_text
from density.runtime.run import PERIODIC

ROOT = Path(__file__).resolve().parents[2]  # the folder holding `density`: the commands run there as `-m`
PYTHON = sys.executable
SEED = 0
# The full demo: 8,000 clips (test split >= 1,000 for fair reference rows), the CPU classifier, N = 2048.
FULL = dict(speakers=400, per_word=2, test_frac=0.15, classifier=[], asgan=[], n_eval=2048, n_samples=16)
# make demo-vocoder: train_vocoder.py settings of each small mel vocoder (README, "Training a vocoder")
FULL["vocoders"] = {  # the log-mel loss alone, then a short adversarial tail (README, "Training a vocoder")
    "hifigan": [
        "vocoder=hifigan_mel_small",
        "max_steps=650",
        "adv_start_step=580",
        "lr=1e-3",
        "d_width=0.125",
        "validation_interval=100",
        "checkpoint_interval=100",
        "n_valid=64",
    ],
    "istft": [
        "vocoder=istft_mel",
        "vocoder_config.dim=256",
        "vocoder_config.intermediate_dim=768",
        "max_steps=1900",
        "adv_start_step=1750",
        "lr=1e-3",
        "d_width=0.125",
        "validation_interval=100",
        "checkpoint_interval=100",
        "n_valid=64",
    ],
}
FULL["n_vocoder_eval"] = 0  # every test clip
VOCODER_NAMES = {"hifigan": "HiFi-GAN small (mel)", "istft": "iSTFT (mel)"}  # rows of the report
# Seconds per stage on purpose: a handful of speakers, a tiny model, a few steps.
TINY = dict(
    speakers=12,
    per_word=1,
    test_frac=0.2,
    n_eval=64,
    n_samples=8,
    classifier=["max_steps=20", "batch_size=16", "validation_interval=10", "checkpoint_interval=10"],
    asgan=[
        "max_steps=6",
        "batch_size=8",
        "checkpoint_interval=3",
        "validation_interval=3",
        "rp_w_cfg.layer_specs=[[32,3,12],[32,3,24],[16,3,48],[16,3,96]]",
        "rp_w_cfg.ff_channels=32",
        "rp_w_cfg.w_dim=32",
        "z_dim=32",
        "rp_w_cfg.z_dim=32",
        "rp_w_cfg.D_head_dim=16",
    ],
    vocoders={
        "hifigan": [
            "vocoder=hifigan_mel_small",
            "vocoder_config.upsample_initial_channel=16",
            "d_width=0.0625",
            "max_steps=2",
            "adv_start_step=1",
            "segment_frames=8",
            "batch_size=4",
            "n_valid=4",
        ],
        "istft": [
            "vocoder=istft_mel",
            "vocoder_config.dim=16",
            "vocoder_config.intermediate_dim=32",
            "d_width=0.0625",
            "max_steps=2",
            "adv_start_step=1",
            "segment_frames=8",
            "batch_size=4",
            "n_valid=4",
        ],
    },
    n_vocoder_eval=16,
)
DATA_STAGES = ("corpus", "splits", "features_train", "features_valid", "classifier")  # what the vocoders need


class StageFailed(Exception):
    """A stage's command exited non-zero."""


def run_stage(name, out, argv, log, log_file=None, env=None):
    """Run one command unless <out>/.done/<name> exists; record its seconds in `log`.

    log_file: send the command's output there instead of the terminal. env: its environment (None: ours).
    """
    marker = out / ".done" / name
    if marker.exists():
        print(f"== {name}: done before, skipped", flush=True)
        return
    print(f"== {name}: {shlex.join(argv)}" + (f"  (output: {log_file})" if log_file else ""), flush=True)
    start = time.perf_counter()
    if log_file is None:
        proc = subprocess.run(argv, cwd=ROOT, env=env)
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as f:
            proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        where = f"in {log_file}" if log_file else "above"
        raise StageFailed(
            f"demo: stage {name} failed (exit {proc.returncode}); fix the error {where} and run the "
            "demo again: finished stages are skipped"
        )
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_text(marker, f"{seconds:.1f}\n")
    log[name] = seconds
    print(f"== {name}: {seconds:.0f} s", flush=True)


def run_lanes(lanes, out, log):
    """Run lanes (lists of (name, argv)) side by side, each stage after the one before it in its lane.

    One lane runs in the foreground with every thread. Several share the CPU: one thread each, and all but the
    last lane write to <out>/logs/<stage>.log (the last keeps the terminal for its progress bars).
    """
    if len(lanes) == 1:
        for name, argv in lanes[0]:
            run_stage(name, out, argv() if callable(argv) else argv, log)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    errors = []

    def lane(stages, quiet):
        try:
            for name, argv in stages:
                run_stage(
                    name,
                    out,
                    argv() if callable(argv) else argv,
                    log,
                    out / "logs" / f"{name}.log" if quiet else None,
                    env,
                )
        except StageFailed as e:
            errors.append(str(e))

    threads = [
        threading.Thread(target=lane, args=(stages, k < len(lanes) - 1), daemon=True) for k, stages in enumerate(lanes)
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # join with a timeout, so Ctrl-C reaches the main thread
            t.join(timeout=0.5)
    if errors:
        raise StageFailed("\n".join(errors))


def periodic_checkpoints(run_dir):
    """A training run folder's periodic checkpoints ckpt_<steps>.pt, oldest first (not the caches that generate.py
    and the studio write next to them, ckpt_<steps>.pt.w_avg-...pt)."""
    return sorted(p for p in Path(run_dir).glob("ckpt_*.pt") if PERIODIC.fullmatch(p.name))


def final_checkpoint(run_dir):
    """The newest periodic checkpoint of a training run folder."""
    ckpts = periodic_checkpoints(run_dir)
    if not ckpts:
        raise SystemExit(f"demo: {run_dir} holds no checkpoint")
    return ckpts[-1]


def stages(out, setting, steps):
    """The plan: a list of steps run in order; a step is a list of lanes run side by side (see run_lanes); a lane
    is a list of (name, argv or a function of nothing returning argv)."""
    py = [PYTHON]
    corpus, splits, feats = out / "corpus", out / "splits", out / "features"
    csv = {s: splits / f"sc09-{s}.csv" for s in ("train", "valid", "test")}
    train_args = [
        f"train_root={feats}",
        f"sc09_train_csv={csv['train']}",
        f"sc09_valid_csv={csv['valid']}",
        "n_valid=0",
        f"seed={SEED}",
        *setting["asgan"],
    ]
    classifier = out / "classifier" / "classifier_best.pt"
    evaluate = py + [
        "-m",
        "density.evaluation.evaluate",
        "--classifier",
        str(classifier),
        "--train_csv",
        str(csv["train"]),
        "--test_csv",
        str(csv["test"]),
        "--n",
        str(setting["n_eval"]),
        "--seed",
        str(SEED),
        "--device",
        "cpu",
        "--cache_dir",
        str(out / "eval_cache"),
    ]
    corpus_stage = (
        "corpus",
        py
        + [
            "-m",
            "density.data.digits",
            "--out",
            str(corpus),
            "--speakers",
            str(setting["speakers"]),
            "--per_word",
            str(setting["per_word"]),
            "--test_frac",
            str(setting["test_frac"]),
            "--seed",
            str(SEED),
            "--overwrite",
        ],
    )
    splits_stage = (
        "splits",
        py + ["-m", "density.data.splits", "--root_path", str(corpus), "--sc09_only", "true", "--out_dir", str(splits)],
    )
    feature_stages = [
        (
            f"features_{s}",
            py + ["-m", "density.features.extract", "--csv", str(csv[s]), "--out", str(feats), "--type", "melspec"],
        )
        for s in ("train", "valid")
    ]
    classifier_stage = (
        "classifier",
        py
        + [
            "-m",
            "density.evaluation.train_classifier",
            f"train_csv={csv['train']}",
            f"valid_csv={csv['valid']}",
            f"test_csv={csv['test']}",
            f"checkpoint_path={out / 'classifier'}",
            f"seed={SEED}",
            "resume_checkpoint=auto",
            *setting["classifier"],
        ],
    )
    init_stage = (
        "asgan_init",
        py
        + [
            "-m",
            "density.gan.train",
            "preset=mel_small",
            *train_args,
            "max_steps=1",
            f"checkpoint_path={out / 'asgan_init'}",
            "overwrite=true",
        ],
    )
    train_stage = (
        "asgan",
        py
        + [
            "-m",
            "density.gan.train",
            "preset=mel_small",
            *train_args,
            *([f"max_steps={steps}"] if steps else []),
            f"checkpoint_path={out / 'asgan'}",
            "resume_checkpoint=auto",
        ],
    )
    samples_stage = (
        "samples",
        lambda: (
            py
            + [
                "-m",
                "density.inference.generate",
                "--checkpoint",
                str(final_checkpoint(out / "asgan")),
                "--out_dir",
                str(out / "samples"),
                "--n",
                str(setting["n_samples"]),
                "--seed",
                str(SEED),
                "--device",
                "cpu",
            ]
        ),
    )
    metrics = {
        run: (
            f"metrics_{run}",
            lambda run=run: (
                evaluate
                + [
                    "--checkpoint",
                    str(final_checkpoint(out / ("asgan" if run == "trained" else "asgan_init"))),
                    "--json",
                    str(out / f"metrics_{run}.json"),
                ]
            ),
        )
        for run in ("trained", "init")
    }
    report_stage = ("report", py + ["-m", "density.demo.report", "--demo_dir", str(out)])
    return [
        [[corpus_stage]],
        [[splits_stage]],
        *[[[f]] for f in feature_stages],
        [[init_stage]],
        [[classifier_stage, metrics["init"]], [train_stage]],  # side by side: they need nothing of each other
        [[samples_stage]],
        [[metrics["trained"]]],
        [[report_stage]],
    ]


def vocoder_stages(out, setting):
    """make demo-vocoder's steps after the data: the vocoders side by side, then their scores."""
    splits = out / "splits"
    common = [
        f"train_csv={splits / 'sc09-train.csv'}",
        f"valid_csv={splits / 'sc09-valid.csv'}",
        f"feature_root={out / 'features'}",
        f"seed={SEED}",
        "resume_checkpoint=auto",
        "num_threads=1",
    ]
    train = [
        (
            f"vocoder_{name}",
            [PYTHON, "-m", "density.vocoders.train", *common, f"checkpoint_path={out / f'vocoder_{name}'}", *extra],
        )
        for name, extra in setting["vocoders"].items()
    ]
    scores = (
        "vocoder_metrics",
        [
            PYTHON,
            "-m",
            "density.evaluation.vocoders",
            "--test_csv",
            str(splits / "sc09-test.csv"),
            "--classifier",
            str(out / "classifier" / "classifier_best.pt"),
            "--n",
            str(setting["n_vocoder_eval"]),
            "--json",
            str(out / "vocoder_metrics.json"),
            *[
                f"--vocoder={VOCODER_NAMES[name]}={out / f'vocoder_{name}' / 'vocoder_best.pt'}"
                for name in setting["vocoders"]
            ],
        ],
    )
    return [[[stage] for stage in train], [[scores]]]


def total_seconds(plan, stage_seconds):
    """Wall-clock seconds of a plan: steps one after another, a step as long as its longest lane."""
    return sum(max(sum(stage_seconds.get(name, 0.0) for name, _ in lane) for lane in step) for step in plan)


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="demo folder (created; re-running continues in it)")
    p.add_argument("--tiny", action="store_true", help="tiny settings: every stage in seconds (for tests)")
    p.add_argument(
        "--steps",
        type=int,
        default=int(os.environ.get("DEMO_STEPS", 0)),
        help="ASGAN training steps (default: $DEMO_STEPS, else the preset's max_steps)",
    )
    p.add_argument(
        "--vocoders",
        action="store_true",
        help="train and score the small mel vocoders instead of ASGAN (make demo-vocoder)",
    )
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings_path = out / "timings.json"
    seconds = json.loads(timings_path.read_text())["stages"] if timings_path.exists() else {}
    setting = TINY if args.tiny else FULL
    demo_plan = stages(out, setting, args.steps)
    plan, extra = demo_plan, vocoder_stages(out, setting)
    if args.vocoders:
        by_name = {name: (name, argv) for step in demo_plan for lane in step for name, argv in lane}
        report = [step for step in demo_plan if step[0][0][0] == "report"]
        plan = (
            [[[by_name[name]]] for name in DATA_STAGES]
            + extra
            + (report if (out / ".done" / "metrics_trained").exists() else [])
        )
    names = [name for step in demo_plan + extra for lane in step for name, _ in lane]

    def save_timings():  # plan order, whatever order the side-by-side stages finished in; the total is make demo's
        ordered = {name: seconds[name] for name in names if name in seconds}
        side_by_side = [[name for name, _ in lane] for step in demo_plan if len(step) > 1 for lane in step]
        write_text(
            timings_path,
            json.dumps(
                {"stages": ordered, "side_by_side": side_by_side, "total": total_seconds(demo_plan, seconds)}, indent=2
            ),
        )

    start = time.perf_counter()
    try:
        for step in plan:
            if step[0][0][0] == "report":  # the report shows every stage's time, so it is written last and anew
                save_timings()
                (out / ".done" / "report").unlink(missing_ok=True)
            run_lanes(step, out, seconds)
            save_timings()
    except StageFailed as e:
        raise SystemExit(str(e)) from None
    if plan[-1][0][0][0] != "report":
        print(
            f"vocoders finished in {time.perf_counter() - start:.0f} s: {out / 'vocoder_metrics.json'} (the report "
            "shows them once `make demo` has run)"
        )
        return
    print(f"demo finished in {time.perf_counter() - start:.0f} s: {out / 'report.md'}, {out / 'report.html'}")


if __name__ == "__main__":
    cli.command(main)
