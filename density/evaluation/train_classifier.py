"""Train the evaluation classifier (issue 8) on the split CSVs of a Speech-Commands-style tree.

    python split_data.py --root_path data/digits --sc09_only true --out_dir data/digits_splits
    python train_classifier.py train_csv=data/digits_splits/sc09-train.csv \\
        valid_csv=data/digits_splits/sc09-valid.csv test_csv=data/digits_splits/sc09-test.csv \\
        checkpoint_path=runs/classifier [key=value ...]
    python train_classifier.py --help                                                       (all keys and defaults)

Writes to checkpoint_path: classifier_best.pt (best validation accuracy; what evaluate.py --classifier takes),
ckpt_XXXXXXXX.pt (periodic and final, with everything needed to resume exactly: resume_checkpoint=auto or a file;
the run-folder rules of train_asgan.py apply, see density/run.py),
logs/ (tensorboard) and, when test_csv is given, test_results.json (test accuracy and confusion matrix of
classifier_best.pt). Ctrl-C / SIGTERM finish the step, write a checkpoint and exit 0.
A user error ends with one `error: ...` line and status 2; `--debug` shows its traceback.

Each step: a batch of clips (fixed per-epoch order from `seed`), augmented in the main process (random time shift
up to `shift_s`, gain in `gain_range`, white noise at an SNR in `snr_db_range` with probability `noise_prob`),
the 32x32 log-mel front end, cross-entropy, AdamW with a linear warm-up then cosine decay to 0 over all steps.
"""

import json
import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import MISSING, OmegaConf
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from density.audio.signal import check_audio_files
from density.config import (
    ConfigError,
    Range,
    above,
    at_least,
    check_ranges,
    parse_overrides,
    require_keys,
    within,
)
from density.data.splits import class_order, read_split_csv
from density.evaluation.classifier import (
    CONFIGS,
    ClipDataset,
    ResNeXt,
    checkpoint_dict,
    classifier_input,
    load_classifier,
)
from density.runtime import checkpoint as ckpt
from density.runtime import cli
from density.runtime.engine import resolve_device
from density.runtime.fileio import write_text
from density.runtime.run import Harness, ignore_stop_signals, seed_all

log = logging.getLogger("train_classifier")

BEST = "classifier_best.pt"
RESULTS = "test_results.json"
EVAL_BATCH = 128  # validation / test batch
RESUME_KEYS = (
    "state_dict",
    "optim_state_dict",
    "sched_state_dict",
    "steps",
    "epoch",
    "batch_index",
    "best",
    "rng_state",
    "cfg_yaml",
)


@dataclass
class ClassifierConfig:
    train_csv: str = MISSING  # split_data.py CSVs (path,label)
    valid_csv: str = MISSING
    test_csv: str | None = None  # scored with classifier_best.pt at the end
    checkpoint_path: str = MISSING  # run folder
    arch: str = "cpu"  # 'cpu' (72 k parameters, minutes on a CPU) or 'paper' (34.4 M, the published design)
    batch_size: int = 32
    lr: float = 3e-3  # AdamW peak learning rate
    weight_decay: float = 1e-2
    warmup_frac: float = 0.05  # share of the steps with a linear warm-up
    max_steps: int = 600  # training length in steps (also the schedule's length); 0: n_epochs decides
    n_epochs: int = 10  # used when max_steps=0
    seed: int = 0
    device: str | None = None  # None: CUDA if available, else CPU
    num_workers: int = 0  # DataLoader workers reading wavs
    num_threads: int = 1  # torch CPU threads (0: torch's default); 1 is fastest on a small, shared CPU
    resume_checkpoint: str = ""  # '': new run; 'auto': newest checkpoint in checkpoint_path; or a ckpt_XXXXXXXX.pt
    overwrite: bool = False  # let a new run delete the checkpoints of another run in checkpoint_path
    resample: bool = False  # resample clips that are not at 16 kHz (else an error)
    shift_s: float = 0.1  # random time shift, +- seconds (zero fill)
    gain_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    noise_prob: float = 0.5
    snr_db_range: list[float] = field(default_factory=lambda: [10.0, 40.0])
    validation_interval: int = 100  # steps; validation also runs at the last step
    checkpoint_interval: int = 200  # steps; a final checkpoint is always written
    keep_last_checkpoints: int = 2  # newest periodic checkpoints kept (0: all); classifier_best.pt is never pruned
    summary_interval: int = 10  # steps between tensorboard training scalars


RANGES = {  # checked by parse_config: `error: key=value: must be <range>`
    **dict.fromkeys(
        ("batch_size", "n_epochs", "validation_interval", "checkpoint_interval", "summary_interval"), at_least(1)
    ),
    **dict.fromkeys(("max_steps", "num_workers", "num_threads", "keep_last_checkpoints", "weight_decay"), at_least(0)),
    "lr": above(0),
    **dict.fromkeys(("warmup_frac", "shift_s", "noise_prob"), within(0, 1)),
    "gain_range": Range(lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[low, high] with 0 < low <= high"),
    "snr_db_range": Range(lambda v: len(v) == 2 and v[0] <= v[1], "[low, high] with low <= high"),
}


def parse_config(argv):
    cfg = parse_overrides(OmegaConf.structured(ClassifierConfig), argv, "train_classifier.py")
    require_keys(cfg, ("train_csv", "valid_csv", "checkpoint_path"))
    if cfg.arch not in CONFIGS:
        raise ConfigError(f"arch={cfg.arch}: choose one of {sorted(CONFIGS)}")
    check_ranges(cfg, RANGES)
    return cfg


def augment(wav, cfg):
    """(B, T) clean clips -> augmented (B, T) with the global torch RNG: time shift, gain, white noise."""
    B, T = wav.shape
    max_shift = int(cfg.shift_s * 16000)
    if max_shift:
        shift = torch.randint(-max_shift, max_shift + 1, (B, 1))
        idx = torch.arange(T) + max_shift - shift  # out[t] = wav[t - shift]
        wav = F.pad(wav, (max_shift, max_shift)).gather(1, idx)
    gain = torch.empty(B, 1).uniform_(*cfg.gain_range)
    snr_db = torch.empty(B, 1).uniform_(*cfg.snr_db_range)
    noisy = torch.rand(B, 1) < cfg.noise_prob
    rms = wav.pow(2).mean(1, keepdim=True).sqrt()
    noise = torch.randn(B, T) * rms * 10 ** (-snr_db / 20) * noisy
    return gain * (wav + noise)


@torch.no_grad()
def evaluate_split(model, loader, n_classes, device, desc):
    """-> (mean loss, accuracy, confusion matrix (K, K) int64 with rows = true class, columns = prediction)."""
    was_training = model.training
    model.eval()
    confusion, loss_sum, n = torch.zeros(n_classes, n_classes, dtype=torch.int64), 0.0, 0
    for wav, y in tqdm(loader, desc=desc, unit="batch", leave=False):
        logits, _ = model(classifier_input(wav.to(device)))
        loss_sum += F.cross_entropy(logits, y.to(device), reduction="sum").item()
        n += len(y)
        confusion += torch.bincount(y * n_classes + logits.argmax(1).cpu(), minlength=n_classes**2).view(
            n_classes, n_classes
        )
    model.train(was_training)
    return loss_sum / n, confusion.diag().sum().item() / n, confusion


def confusion_table(confusion, classes):
    """Markdown table of a confusion matrix (rows: true class, columns: predicted)."""
    head = "| true \\ predicted | " + " | ".join(classes) + " |\n|---|" + "---|" * len(classes) + "\n"
    return head + "".join(
        f"| {c} | " + " | ".join(str(v) for v in row) + " |\n" for c, row in zip(classes, confusion.tolist())
    )


def lr_lambda(total, warmup):
    """Learning-rate factor at step s: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""

    def factor(s):
        return (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))

    return factor


def make_datasets(cfg):
    """-> (classes, train, valid, test or None); every file's header is checked first."""
    splits = {}
    for name in ("train", "valid", "test"):
        csv_path = cfg[f"{name}_csv"]
        if csv_path:
            paths, labels = read_split_csv(csv_path)
            check_audio_files(
                tqdm(paths, desc=f"checking {name} files", unit="file", leave=False), resample=cfg.resample
            )
            splits[name] = (paths, labels)
    classes = class_order(splits["train"][1])
    return (
        classes,
        *(
            ClipDataset(*splits[n], classes=classes, resample=cfg.resample) if n in splits else None
            for n in ("train", "valid", "test")
        ),
    )


def main(argv):
    if "--help" in argv or "-h" in argv:
        print(
            __doc__
            + "\nDefault config (override any key with key=value):\n\n"
            + OmegaConf.to_yaml(OmegaConf.structured(ClassifierConfig))
        )
        return None
    cfg = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    classes, train_ds, valid_ds, test_ds = make_datasets(cfg)
    steps_per_epoch = len(train_ds) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(train_ds)} training clips make no full batch of batch_size={cfg.batch_size}")
    total = cfg.max_steps or cfg.n_epochs * steps_per_epoch
    seed_all(cfg.seed)
    model = ResNeXt.from_arch(cfg.arch, classes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, max(1, round(cfg.warmup_frac * total))))
    with Harness(
        cfg.checkpoint_path, cfg.resume_checkpoint, cfg.overwrite, keep_last=cfg.keep_last_checkpoints
    ) as harness:
        return train(
            cfg, harness, model, opt, sched, classes, train_ds, valid_ds, test_ds, steps_per_epoch, total, device
        )


def train(cfg, harness, model, opt, sched, classes, train_ds, valid_ds, test_ds, steps_per_epoch, total, device):
    run, folder = harness.run, harness.folder
    steps, epoch, first, best, resume_rng = 0, 0, 0, {"accuracy": -1.0, "loss": math.inf}, None
    if run.resume:
        state = ckpt.load(run.resume, RESUME_KEYS, "a train_classifier.py checkpoint")
        if tuple(state["classes"]) != classes or state["config"] != model.config:
            raise ckpt.CheckpointError(
                f"{run.resume}: written for classes {state['classes']} and "
                f"{state['config']}, but this run has {list(classes)} and {model.config}"
            )
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optim_state_dict"])
        sched.load_state_dict(state["sched_state_dict"])
        steps, epoch, first, best = state["steps"] + 1, state["epoch"], state["batch_index"], state["best"]
        if first >= steps_per_epoch:
            epoch, first = epoch + 1, 0
        resume_rng = state["rng_state"]
        log.info("resumed from %s at step %d (epoch %d, batch %d)", run.resume, steps, epoch, first)
    log.info(
        "%s classifier (%d parameters), %d classes, %d/%d/%d train/valid/test clips, %d steps on %s",
        cfg.arch,
        sum(p.numel() for p in model.parameters()),
        len(classes),
        len(train_ds),
        len(valid_ds),
        len(test_ds) if test_ds else 0,
        total,
        device,
    )

    def loader(ds, batches=None):
        """Training batches in the given order, or the whole split in order (128 per batch)."""
        sizes = dict(batch_sampler=batches) if batches is not None else dict(batch_size=EVAL_BATCH)
        return DataLoader(
            ds, **sizes, num_workers=cfg.num_workers, worker_init_fn=ignore_stop_signals, generator=torch.Generator()
        )

    writer = SummaryWriter(str(folder / "logs"))
    valid_loader = loader(valid_ds)
    t0, stopped = time.perf_counter(), False
    model.train()
    with harness.stop_signals():
        while steps < total and not stopped:
            order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(cfg.seed + epoch))
            batches = order[: steps_per_epoch * cfg.batch_size].view(steps_per_epoch, cfg.batch_size).tolist()
            if resume_rng is not None:
                ckpt.set_rng_state(resume_rng)
                resume_rng = None
            pbar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch}", unit="batch")
            for i, (wav, y) in enumerate(loader(train_ds, batches[first:]), start=first):
                logits, _ = model(classifier_input(augment(wav, cfg).to(device)))
                loss = F.cross_entropy(logits, y.to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                pbar.update(1)
                if steps % cfg.summary_interval == 0:
                    acc = (logits.argmax(1).cpu() == y).float().mean().item()
                    writer.add_scalar("train/loss", loss.item(), steps)
                    writer.add_scalar("train/accuracy", acc, steps)
                    writer.add_scalar("opt/lr", opt.param_groups[0]["lr"], steps)
                    pbar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
                stopped = harness.stop_requested
                final = stopped or steps + 1 >= total
                if steps % cfg.validation_interval == 0 or final:
                    v_loss, v_acc, _ = evaluate_split(model, valid_loader, len(classes), device, "validation")
                    writer.add_scalar("valid/loss", v_loss, steps)
                    writer.add_scalar("valid/accuracy", v_acc, steps)
                    tqdm.write(f"step {steps}: validation accuracy {v_acc:.4f}, loss {v_loss:.4f}")
                    if (v_acc, -v_loss) > (best["accuracy"], -best["loss"]):
                        best = {"accuracy": v_acc, "loss": v_loss, "steps": steps}
                        harness.save(
                            checkpoint_dict(model, arch=cfg.arch, steps=steps, valid_accuracy=v_acc, valid_loss=v_loss),
                            BEST,
                        )
                if (steps > 0 and steps % cfg.checkpoint_interval == 0) or final:
                    harness.save_periodic(
                        checkpoint_dict(
                            model,
                            arch=cfg.arch,
                            optim_state_dict=opt.state_dict(),
                            sched_state_dict=sched.state_dict(),
                            steps=steps,
                            epoch=epoch,
                            batch_index=i + 1,
                            best=best,
                            rng_state=ckpt.rng_state(),
                            cfg_yaml=OmegaConf.to_yaml(cfg),
                            run_id=run.run_id,
                        ),
                        steps,
                    )
                steps += 1
                if final:
                    break
            pbar.close()
            epoch, first = epoch + 1, 0
    train_seconds = time.perf_counter() - t0
    if stopped:
        writer.close()
        log.warning(
            "stopped by signal after step %d; resume with resume_checkpoint=%s",
            steps - 1,
            ckpt.periodic_path(folder, steps - 1),
        )
        return None
    log.info(
        "trained %d steps in %.1f s; best validation accuracy %.4f at step %d",
        steps,
        train_seconds,
        best["accuracy"],
        best.get("steps", -1),
    )
    result = None
    if test_ds is not None:
        best_model = load_classifier(folder / BEST, device)
        t_loss, t_acc, confusion = evaluate_split(best_model, loader(test_ds), len(classes), device, "test")
        writer.add_scalar("test/accuracy", t_acc, steps - 1)
        result = dict(
            test_accuracy=t_acc,
            test_loss=t_loss,
            n_test=len(test_ds),
            classes=list(classes),
            confusion_matrix=confusion.tolist(),
            checkpoint=str(folder / BEST),
            best_step=best["steps"],
            valid_accuracy=best["accuracy"],
            train_seconds=round(train_seconds, 1),
            steps=steps,
        )
        write_text(folder / RESULTS, json.dumps(result, indent=2))
        print(
            f"test accuracy {t_acc:.4f} ({len(test_ds)} clips), {folder / BEST}\n"
            f"confusion matrix (rows: true, columns: predicted):\n{confusion_table(confusion, classes)}"
        )
    writer.close()
    return result


if __name__ == "__main__":
    cli.command(main)
