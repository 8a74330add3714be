"""The offline demo: train ASGAN on the built-in spoken-digits corpus and show that it learns.

    make demo                         # = python demo.py --out outputs/demo
    make demo-vocoder                 # = python demo.py --out outputs/demo --vocoders (not part of make demo)
    DEMO_STEPS=3000 make demo         # a longer training run (the preset's fixed length otherwise)
    python demo.py --out outputs/demo_tiny --tiny      # every stage in seconds (what the test runs)

Every stage runs one of the repo's own commands, as a user would type it, and is skipped when it has finished
before (a marker in <out>/.done/, written once the stage's outputs exist; a marker whose outputs are gone does not
count), so re-running after Ctrl-C continues where it stopped (training resumes from its newest checkpoint). A stage
that runs again may replace its own earlier outputs (`--overwrite` on the demo's own folders).
Stages: corpus (density.digits) -> splits (split_data.py) -> log-mel features (hubert_feature_reader.py) -> ASGAN
at initialisation (train_asgan.py preset=mel_small) -> side by side, one CPU thread each: [evaluation classifier
(train_classifier.py) -> metrics of the initial ASGAN (evaluate.py)] and [ASGAN training] -> samples (generate.py)
-> metrics of the trained ASGAN -> report (density.report):
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

from density.data.splits import read_split_csv
from density.dataset import feature_path
from density.runtime import cli
from density.runtime.fileio import write_text
from density.runtime.run import periodic_checkpoints

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
# Both tiny vocoders: a narrow discriminator, two steps (the second adversarial) on short segments.
TINY_VOCODER_RUN = [
    "d_width=0.0625",
    "max_steps=2",
    "adv_start_step=1",
    "segment_frames=8",
    "batch_size=4",
    "n_valid=4",
]
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
        "hifigan": ["vocoder=hifigan_mel_small", "vocoder_config.upsample_initial_channel=16", *TINY_VOCODER_RUN],
        "istft": [
            "vocoder=istft_mel",
            "vocoder_config.dim=16",
            "vocoder_config.intermediate_dim=32",
            *TINY_VOCODER_RUN,
        ],
    },
    n_vocoder_eval=16,
)
DATA_STAGES = ("corpus", "splits", "features_train", "features_valid", "classifier")  # what the vocoders need


class StageFailed(Exception):
    """A stage's command exited non-zero."""


def run_stage(name, out, argv, log, *, outputs=None, log_file=None, env=None):
    """Run one command unless <out>/.done/<name> exists and its outputs are all there; record its seconds in `log`.

    outputs: a function of nothing -> the files the stage leaves behind (None: none checked). The marker is written
    only when they exist after the command; a marker whose outputs are gone does not count (the stage runs again).
    log_file: send the command's output there instead of the terminal. env: its environment (None: ours).
    """
    marker = out / ".done" / name
    if marker.exists():
        missing = missing_outputs(outputs)
        if not missing:
            print(f"== {name}: done before, skipped", flush=True)
            return
        print(f"== {name}: done before, but {missing[0]} is missing: running it again", flush=True)
        marker.unlink()
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
    missing = missing_outputs(outputs)
    if missing:
        raise StageFailed(f"demo: stage {name} exited 0 but did not write {missing[0]}")
    write_text(marker, f"{seconds:.1f}\n")
    log[name] = seconds
    print(f"== {name}: {seconds:.0f} s", flush=True)


def missing_outputs(outputs):
    """The files of a stage's `outputs` function that do not exist (all of them when it cannot list them)."""
    if outputs is None:
        return []
    try:
        paths = list(outputs())
    except (OSError, ValueError) as e:  # e.g. a split CSV that is gone
        return [f"its outputs ({e})"]
    return [p for p in paths if not Path(p).is_file()]


def run_lanes(lanes, out, log, outputs):
    """Run lanes (lists of (name, argv)) side by side, each stage after the one before it in its lane; outputs:
    {stage name: function -> the files it leaves behind} (stage_outputs).

    One lane runs in the foreground with every thread. Several share the CPU: one thread each, and all but the
    last lane write to <out>/logs/<stage>.log (the last keeps the terminal for its progress bars).
    """
    if len(lanes) == 1:
        for name, argv in lanes[0]:
            run_stage(name, out, argv() if callable(argv) else argv, log, outputs=outputs.get(name))
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
                    outputs=outputs.get(name),
                    log_file=out / "logs" / f"{name}.log" if quiet else None,
                    env=env,
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


def final_checkpoint(run_dir):
    """The newest periodic checkpoint of a training run folder."""
    ckpts = periodic_checkpoints(run_dir)
    if not ckpts:
        raise SystemExit(f"demo: {run_dir} holds no checkpoint")
    return ckpts[-1]


def command(module, *args):
    """argv of `python -m module args...` with this interpreter."""
    return [PYTHON, "-m", module, *map(str, args)]


def stage_outputs(out, setting):
    """{stage name: function of nothing -> the files the stage leaves behind}: a stage counts as done only with them."""
    csv = split_csvs(out)

    def features(split):
        return lambda: [feature_path(p, out / "features") for p in read_split_csv(csv[split])[0]]

    return {
        "corpus": lambda: [out / "corpus" / "speakers.csv"],
        "splits": lambda: list(csv.values()),
        "features_train": features("train"),
        "features_valid": features("valid"),
        "classifier": lambda: [out / "classifier" / "classifier_best.pt", out / "classifier" / "test_results.json"],
        "asgan_init": lambda: [final_checkpoint(out / "asgan_init")],
        "asgan": lambda: [final_checkpoint(out / "asgan")],
        "samples": lambda: (
            [out / "samples" / "spectrograms.png"]
            + [out / "samples" / f"seed{SEED}_{i:05d}.wav" for i in range(setting["n_samples"])]
        ),
        "metrics_init": lambda: [out / "metrics_init.json"],
        "metrics_trained": lambda: [out / "metrics_trained.json"],
        "report": lambda: [out / "report.md", out / "report.html"],
        **{
            f"vocoder_{name}": (lambda name=name: [out / f"vocoder_{name}" / "vocoder_best.pt"])
            for name in VOCODER_NAMES
        },
        "vocoder_metrics": lambda: [out / "vocoder_metrics.json"],
    }


def split_csvs(out):
    """{'train', 'valid', 'test'}: the split CSVs the splits stage writes."""
    return {s: out / "splits" / f"sc09-{s}.csv" for s in ("train", "valid", "test")}


def data_stages(out, setting):
    """The stages DATA_STAGES names: corpus, splits, log-mel features of train and valid, evaluation classifier."""
    corpus, csv = out / "corpus", split_csvs(out)
    corpus_args = ["--out", corpus, "--speakers", setting["speakers"], "--per_word", setting["per_word"]]
    return [
        (
            "corpus",
            command(
                "density.data.digits", *corpus_args, "--test_frac", setting["test_frac"], "--seed", SEED, "--overwrite"
            ),
        ),
        (
            "splits",
            command(
                "density.data.splits",
                "--root_path",
                corpus,
                "--sc09_only",
                "true",
                "--out_dir",
                out / "splits",
                "--overwrite",
            ),
        ),
        *[
            (
                f"features_{s}",
                command("density.features.extract", "--csv", csv[s], "--out", out / "features", "--type", "melspec"),
            )
            for s in ("train", "valid")
        ],
        (
            "classifier",
            command(
                "density.evaluation.train_classifier",
                f"train_csv={csv['train']}",
                f"valid_csv={csv['valid']}",
                f"test_csv={csv['test']}",
                f"checkpoint_path={out / 'classifier'}",
                f"seed={SEED}",
                "resume_checkpoint=auto",
                *setting["classifier"],
            ),
        ),
    ]


def asgan_training(out, setting, name, max_steps, *extra):
    """A train_asgan stage (preset mel_small on the demo's features and splits) writing to <out>/<name>;
    max_steps 0: the preset's."""
    csv = split_csvs(out)
    return (
        name,
        command(
            "density.gan.train",
            "preset=mel_small",
            f"train_root={out / 'features'}",
            f"sc09_train_csv={csv['train']}",
            f"sc09_valid_csv={csv['valid']}",
            "n_valid=0",
            f"seed={SEED}",
            *setting["asgan"],
            *([f"max_steps={max_steps}"] if max_steps else []),
            f"checkpoint_path={out / name}",
            *extra,
        ),
    )


def samples_stage(out, setting):
    """generate.py on the trained run's newest checkpoint (argv built when the stage starts)."""
    return (
        "samples",
        lambda: command(
            "density.inference.generate",
            "--checkpoint",
            final_checkpoint(out / "asgan"),
            "--out_dir",
            out / "samples",
            "--n",
            setting["n_samples"],
            "--seed",
            SEED,
            "--device",
            "cpu",
            "--overwrite",  # the demo's own folder: a stage that runs again replaces what it wrote before
        ),
    )


def metrics_stage(out, setting, run):
    """evaluate.py on the newest checkpoint of run 'trained' (<out>/asgan) or 'init' (<out>/asgan_init) ->
    <out>/metrics_<run>.json (argv built when the stage starts)."""
    csv = split_csvs(out)
    run_dir = out / ("asgan" if run == "trained" else "asgan_init")
    return (
        f"metrics_{run}",
        lambda: command(
            "density.evaluation.evaluate",
            "--classifier",
            out / "classifier" / "classifier_best.pt",
            "--train_csv",
            csv["train"],
            "--test_csv",
            csv["test"],
            "--n",
            setting["n_eval"],
            "--seed",
            SEED,
            "--device",
            "cpu",
            "--cache_dir",
            out / "eval_cache",
            "--checkpoint",
            final_checkpoint(run_dir),
            "--json",
            out / f"metrics_{run}.json",
        ),
    )


def stages(out, setting, steps):
    """The plan: a list of steps run in order; a step is a list of lanes run side by side (see run_lanes); a lane
    is a list of (name, argv or a function of nothing returning argv)."""
    corpus, splits, features_train, features_valid, classifier = data_stages(out, setting)
    init = asgan_training(out, setting, "asgan_init", 1, "overwrite=true")
    train = asgan_training(out, setting, "asgan", steps, "resume_checkpoint=auto")
    return [
        [[corpus]],
        [[splits]],
        [[features_train]],
        [[features_valid]],
        [[init]],
        [[classifier, metrics_stage(out, setting, "init")], [train]],  # side by side: they need nothing of each other
        [[samples_stage(out, setting)]],
        [[metrics_stage(out, setting, "trained")]],
        [[("report", command("density.demo.report", "--demo_dir", out))]],
    ]


def vocoder_stages(out, setting):
    """make demo-vocoder's steps after the data: the vocoders side by side, then their scores."""
    csv = split_csvs(out)
    common = [
        f"train_csv={csv['train']}",
        f"valid_csv={csv['valid']}",
        f"feature_root={out / 'features'}",
        f"seed={SEED}",
        "resume_checkpoint=auto",
        "num_threads=1",
    ]
    train = [
        (
            f"vocoder_{name}",
            command("density.vocoders.train", *common, f"checkpoint_path={out / f'vocoder_{name}'}", *extra),
        )
        for name, extra in setting["vocoders"].items()
    ]
    scores = (
        "vocoder_metrics",
        command(
            "density.evaluation.vocoders",
            "--test_csv",
            csv["test"],
            "--classifier",
            out / "classifier" / "classifier_best.pt",
            "--n",
            setting["n_vocoder_eval"],
            "--json",
            out / "vocoder_metrics.json",
            *[
                f"--vocoder={VOCODER_NAMES[name]}={out / f'vocoder_{name}' / 'vocoder_best.pt'}"
                for name in setting["vocoders"]
            ],
        ),
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
    outputs = stage_outputs(out, setting)
    plan, extra = demo_plan, vocoder_stages(out, setting)
    if args.vocoders:
        by_name = {name: (name, argv) for step in demo_plan for lane in step for name, argv in lane}
        report = [step for step in demo_plan if step[0][0][0] == "report"]
        demo_done = (out / ".done" / "metrics_trained").exists() and not missing_outputs(outputs["metrics_trained"])
        plan = [[[by_name[name]]] for name in DATA_STAGES] + extra + (report if demo_done else [])
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
            run_lanes(step, out, seconds, outputs)
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
