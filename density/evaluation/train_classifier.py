"""Train the evaluation classifier on the split CSVs of a Speech-Commands-style tree.

    python split_data.py --root_path data/digits --sc09_only true --out_dir data/digits_splits
    python train_classifier.py train_csv=data/digits_splits/sc09-train.csv \\
        valid_csv=data/digits_splits/sc09-valid.csv test_csv=data/digits_splits/sc09-test.csv \\
        checkpoint_path=runs/classifier [key=value ...]
    python train_classifier.py --help                                                       (all keys and defaults)

Writes to checkpoint_path: classifier_best.pt (best validation accuracy; what evaluate.py --classifier takes),
ckpt_XXXXXXXX.pt (periodic and final, with everything needed to resume exactly: resume_checkpoint=auto or a file;
the run-folder rules of train_asgan.py apply, see density/runtime/run.py),
logs/ (tensorboard) and, when test_csv is given, test_results.json (test accuracy and confusion matrix of
classifier_best.pt). Ctrl-C / SIGTERM finish the step, write a checkpoint and exit 0.
A user error ends with one `error: ...` line and status 2; `--debug` shows its traceback.

Each step: a batch of clips (fixed per-epoch order from `seed`), augmented in the main process (random time shift
up to `shift_s`, gain in `gain_range`, white noise at an SNR in `snr_db_range` with probability `noise_prob`),
the 32x32 log-mel front end, cross-entropy, AdamW with a linear warm-up then cosine decay to 0 over all steps.
The file reads top to bottom: the config, augmentation and scoring, the splits, `main`, the loop state (`Loop`:
step, end_of_step), `build` (optimiser, schedule, resume) and `train`, which runs the epoch loop of
density/runtime/trainer.py and then scores the test split.
"""

import json
import logging
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig, OmegaConf
from torch.optim.lr_scheduler import LambdaLR
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
from density.evaluation.classifier import CONFIGS, ClipDataset, ResNeXt, classifier_input, load_classifier
from density.evaluation.classifier import checkpoint_dict as classifier_checkpoint
from density.runtime import checkpoint as ckpt
from density.runtime import cli, trainer
from density.runtime.engine import resolve_device
from density.runtime.fileio import write_text
from density.runtime.run import Harness, TrainingAborted, ignore_stop_signals, seed_all

log = logging.getLogger("train_classifier")

BEST = "classifier_best.pt"
RESULTS = "test_results.json"
EVAL_BATCH = 128  # validation / test batch
RESUME_KEYS = ("state_dict", "optim_state_dict", "sched_state_dict", *trainer.LOOP_KEYS)


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


@dataclass
class Splits:
    """The class names (the training split's, in order) and the clips of each split (test: None without
    test_csv); every file's header is checked first."""

    classes: tuple[str, ...]
    train: ClipDataset
    valid: ClipDataset
    test: ClipDataset | None

    @classmethod
    def read(cls, cfg):
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
        return cls(
            classes,
            *(
                ClipDataset(*splits[n], classes=classes, resample=cfg.resample) if n in splits else None
                for n in ("train", "valid", "test")
            ),
        )


def main(argv):
    if trainer.show_help(argv, __doc__, ClassifierConfig):
        return None
    cfg = parse_config(argv)
    trainer.log_per_rank()
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    splits = Splits.read(cfg)
    steps_per_epoch = len(splits.train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(splits.train)} training clips make no full batch of batch_size={cfg.batch_size}")
    seed_all(cfg.seed)
    model = ResNeXt.from_arch(cfg.arch, splits.classes).to(device)
    with trainer.open_harness(cfg) as harness:
        loop = build(cfg, harness, model, splits, steps_per_epoch, device)
        limit = f"max_steps={cfg.max_steps}" if cfg.max_steps else f"n_epochs={cfg.n_epochs}"
        if trainer.already_finished(loop, loop.position, steps_per_epoch=steps_per_epoch, limit=limit):
            return finish(loop)
        return train(loop)


def loader(cfg, dataset, batches=None):
    """Training batches in the given order, or the whole split in order (EVAL_BATCH per batch)."""
    sizes = dict(batch_sampler=batches) if batches is not None else dict(batch_size=EVAL_BATCH)
    return DataLoader(
        dataset, **sizes, num_workers=cfg.num_workers, worker_init_fn=ignore_stop_signals, generator=torch.Generator()
    )


@dataclass
class StepResult:
    """A step's logits (B, classes), labels (B,) and loss."""

    logits: torch.Tensor
    labels: torch.Tensor
    loss: torch.Tensor


@dataclass
class Loop:
    """What the training loop works with: config, Harness, the classifier, its optimiser and learning-rate
    schedule, the splits, the length of an epoch and of the run in steps, the device, the position in the run, the
    best validation scores and the tensorboard writer. The loop of density/runtime/trainer.py drives it:
    epoch_batches, step, end_of_step."""

    cfg: DictConfig
    harness: Harness
    model: ResNeXt
    opt: torch.optim.AdamW
    sched: LambdaLR
    splits: Splits
    steps_per_epoch: int
    total_steps: int
    device: torch.device
    position: trainer.Position = field(default_factory=trainer.Position)
    best: dict[str, float] = field(default_factory=lambda: {"accuracy": -1.0, "loss": math.inf})
    writer: SummaryWriter | None = None
    stopped: bool = False  # by a stop signal

    def more_epochs(self):
        return self.position.steps < self.total_steps

    def epoch_batches(self, epoch, first):
        """The epoch's batches from batch `first` on, in an order fixed by seed and epoch."""
        size = self.cfg.batch_size
        order = torch.randperm(len(self.splits.train), generator=torch.Generator().manual_seed(self.cfg.seed + epoch))
        batches = order[: self.steps_per_epoch * size].view(self.steps_per_epoch, size).tolist()
        return loader(self.cfg, self.splits.train, batches[first:])

    def step(self, batch):
        """One AdamW step on a batch of clips (B, T) and labels (B,), augmented -> StepResult. TrainingAborted,
        before the update, when the loss is not finite (the weights have gone non-finite, e.g. a too large lr)."""
        wav, labels = batch
        logits, _ = self.model(classifier_input(augment(wav, self.cfg).to(self.device)))
        loss = F.cross_entropy(logits, labels.to(self.device))
        if not torch.isfinite(loss):
            raise TrainingAborted(
                f"the training loss is {loss.item()} at step {self.position.steps}: training stopped, nothing "
                f"written. Last checkpoint: {self.harness.last_finite or 'none'} (resume from it with "
                "overwrite=true, which deletes the newer ones, and a lower lr)"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return StepResult(logits, labels, loss)

    def end_of_step(self, result, pbar):
        """Finish the step: training scalars, validation (classifier_best.pt when it is the best so far) and the
        periodic or final checkpoint -> whether training ends here (a stop signal or the last step)."""
        cfg, position, step = self.cfg, self.position, self.position.steps
        if step % cfg.summary_interval == 0:
            accuracy = (result.logits.argmax(1).cpu() == result.labels).float().mean().item()
            self.writer.add_scalar("train/loss", result.loss.item(), step)
            self.writer.add_scalar("train/accuracy", accuracy, step)
            self.writer.add_scalar("opt/lr", self.opt.param_groups[0]["lr"], step)
            pbar.set_postfix(loss=f"{result.loss.item():.3f}", acc=f"{accuracy:.2f}")
        self.stopped = self.harness.stop_requested
        final = self.stopped or step + 1 >= self.total_steps
        if step % cfg.validation_interval == 0 or final:
            self.validate_and_keep_best(step)
        position.steps += 1
        position.batch_index += 1
        if trainer.on_interval(step, cfg.checkpoint_interval) or final:
            self.harness.save_periodic(self.checkpoint_dict(), step)
        return final

    def validate_and_keep_best(self, step):
        """Validation loss and accuracy (tensorboard); classifier_best.pt when the accuracy (then the loss) is the
        best so far."""
        loss, accuracy, _ = evaluate_split(
            self.model, loader(self.cfg, self.splits.valid), len(self.splits.classes), self.device, "validation"
        )
        self.writer.add_scalar("valid/loss", loss, step)
        self.writer.add_scalar("valid/accuracy", accuracy, step)
        tqdm.write(f"step {step}: validation accuracy {accuracy:.4f}, loss {loss:.4f}")
        if (accuracy, -loss) > (self.best["accuracy"], -self.best["loss"]):
            self.best = {"accuracy": accuracy, "loss": loss, "steps": step}
            weights = classifier_checkpoint(
                self.model, arch=self.cfg.arch, steps=step, valid_accuracy=accuracy, valid_loss=loss
            )
            self.harness.save(weights, BEST, step)

    def checkpoint_dict(self):
        """The periodic checkpoint (RESUME_KEYS and more) after the last finished step."""
        return classifier_checkpoint(
            self.model,
            arch=self.cfg.arch,
            optim_state_dict=self.opt.state_dict(),
            sched_state_dict=self.sched.state_dict(),
            **trainer.loop_entries(self.position, best=self.best, rng_state=ckpt.rng_state(), cfg=self.cfg),
            run_id=self.harness.run.run_id,
        )


def build(cfg, harness, model, splits, steps_per_epoch, device):
    """The optimiser and the warm-up + cosine schedule over all steps, and the loop state: resumed from
    the checkpoint the run folder chose (which must be of the same classes and architecture), else new."""
    total = cfg.max_steps or cfg.n_epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = LambdaLR(opt, lr_lambda(total, max(1, round(cfg.warmup_frac * total))))
    loop = Loop(cfg, harness, model, opt, sched, splits, steps_per_epoch, total, device)
    resume = trainer.agreed_resume(harness)
    if resume:
        checkpoint = ckpt.load(resume, RESUME_KEYS, "a train_classifier.py checkpoint")
        if tuple(checkpoint["classes"]) != splits.classes or checkpoint["config"] != model.config:
            raise ckpt.CheckpointError(
                f"{resume}: written for classes {checkpoint['classes']} and "
                f"{checkpoint['config']}, but this run has {list(splits.classes)} and {model.config}"
            )
        model.load_state_dict(checkpoint["state_dict"])
        opt.load_state_dict(checkpoint["optim_state_dict"])
        sched.load_state_dict(checkpoint["sched_state_dict"])
        loop.position, loop.best = trainer.Position.after(checkpoint, checkpoint["rng_state"]), checkpoint["best"]
        at = loop.position
        log.info("resumed from %s at step %d (epoch %d, batch %d)", resume, at.steps, at.epoch, at.batch_index)
    log.info(
        "%s classifier (%d parameters), %d classes, %d/%d/%d train/valid/test clips, %d steps on %s",
        cfg.arch,
        sum(p.numel() for p in model.parameters()),
        len(splits.classes),
        len(splits.train),
        len(splits.valid),
        len(splits.test) if splits.test else 0,
        total,
        loop.device,
    )
    return loop


def train(loop):
    """Epochs of steps until the last step or a stop signal, then the test split scored with classifier_best.pt
    -> the test results (also test_results.json), or None without test_csv or when a stop signal ended training."""
    folder = loop.harness.folder
    loop.writer = SummaryWriter(str(folder / "logs"))
    try:
        t0 = time.perf_counter()
        loop.model.train()
        with loop.harness.stop_signals():
            trainer.run_epochs(loop, loop.position, steps_per_epoch=loop.steps_per_epoch)
        train_seconds = time.perf_counter() - t0
        if loop.stopped:
            trainer.log_stopped(log, loop.position.steps - 1, folder)
            return None
        log.info(
            "trained %d steps in %.1f s; best validation accuracy %.4f at step %d",
            loop.position.steps,
            train_seconds,
            loop.best["accuracy"],
            loop.best.get("steps", -1),
        )
        return score_test_split(loop, train_seconds) if loop.splits.test is not None else None
    finally:
        loop.writer.close()


def finish(loop):
    """A finished run resumed: the test split's scores when test_csv is given and test_results.json is missing (a
    stop signal or a kill ended the last step before them), else nothing -> the results or None."""
    if loop.splits.test is None or (loop.harness.folder / RESULTS).is_file():
        return None
    loop.writer = SummaryWriter(str(loop.harness.folder / "logs"))
    try:
        return score_test_split(loop, None)
    finally:
        loop.writer.close()


def score_test_split(loop, train_seconds):
    """Score classifier_best.pt on the test split: tensorboard, test_results.json (train_seconds: None when not
    measured, a finished run resumed) and a printed confusion matrix -> the results."""
    folder, splits, steps = loop.harness.folder, loop.splits, loop.position.steps
    best_model = load_classifier(folder / BEST, loop.device)
    t_loss, t_acc, confusion = evaluate_split(
        best_model, loader(loop.cfg, splits.test), len(splits.classes), loop.device, "test"
    )
    loop.writer.add_scalar("test/accuracy", t_acc, steps - 1)
    result = dict(
        test_accuracy=t_acc,
        test_loss=t_loss,
        n_test=len(splits.test),
        classes=list(splits.classes),
        confusion_matrix=confusion.tolist(),
        checkpoint=str(folder / BEST),
        best_step=loop.best["steps"],
        valid_accuracy=loop.best["accuracy"],
        train_seconds=None if train_seconds is None else round(train_seconds, 1),
        steps=steps,
    )
    write_text(folder / RESULTS, json.dumps(result, indent=2))
    print(
        f"test accuracy {t_acc:.4f} ({len(splits.test)} clips), {folder / BEST}\n"
        f"confusion matrix (rows: true, columns: predicted):\n{confusion_table(confusion, splits.classes)}"
    )
    return result


if __name__ == "__main__":
    cli.command(main)
