"""The seam between the training loop and its back end: device, precision, process group, optimiser steps.

`make_engine(cfg)` gives a TorchEngine (one process on the CPU or one GPU, or DDP under torchrun) or a
DeepSpeedEngine (`deepspeed.initialize` for each model, ZeRO stage 0). Both offer the same few things:

    engine.device, .rank, .world_size, .is_main, .precision ('fp32' | 'fp16' | 'bf16')
    engine.autocast()            context for forward passes (autocast to fp16/bf16, or nothing for fp32)
    engine.wrap(model, optim)    -> Trainable
    engine.all_sum(t)            in-place sum of a tensor over ranks (nothing to do in one process)
    engine.all_gather_object(o)  -> [o of rank 0, o of rank 1, ...] (picklable objects)
    engine.close()
    Trainable(...)               forward of the wrapped model; .module is the plain nn.Module
    trainable.zero_grad(), .backward(loss), .step() -> pre-clip global gradient L2 norm (a float;
        non-finite means the update was skipped), .state_dict() -> (optimiser state, scaler state or None),
        .load_state_dict(optim_state, scaler_state)

Mixed precision is autocast with fp32 weights and buffers in both engines (the generator's norm EMA and
Fourier frequencies would not survive fp16 storage); fp16 adds dynamic loss scaling by a GradScaler.
With several ranks, forwards of a Trainable copy rank 0's buffers to all ranks first (DDP's `broadcast_buffers`;
DeepSpeed broadcasts only parameters, so its Trainable does it before every forward): ranks are seeded
differently, so without it they would hold different random Fourier frequencies and norm EMAs.
"""

import contextlib
import logging
import math
import os
import socket
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

FP16_INIT_SCALE = 512  # GradScaler start value of the reference (reference note 28)
ENGINES = ("torch", "deepspeed")


class EngineError(RuntimeError):
    """A launch or precision setting that cannot work; the message says how to launch instead."""


def make_engine(cfg):
    if cfg.engine not in ENGINES:
        raise EngineError(f"engine={cfg.engine}: choose one of {', '.join(ENGINES)}")
    return (TorchEngine if cfg.engine == "torch" else DeepSpeedEngine)(cfg)


def _launch():
    """(rank, local_rank, world_size) from the torchrun / deepspeed launcher environment."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))


class _Engine:
    def __init__(self, cfg):
        self.rank, local_rank, self.world_size = _launch()
        self.is_main = self.rank == 0
        wanted = cfg.distributed.n_nodes * cfg.distributed.n_gpus_per_node
        if wanted > 1 and self.world_size == 1:
            raise EngineError(
                f"distributed.n_nodes x n_gpus_per_node = {wanted} but this is one process: launch one process "
                f"per GPU with `torchrun --nproc_per_node {cfg.distributed.n_gpus_per_node} train_asgan.py ...` "
                f"(engine=torch) or `deepspeed --num_gpus {cfg.distributed.n_gpus_per_node} train_asgan.py "
                f"engine=deepspeed ...`"
            )
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        self.backend = cfg.distributed.dist_backend if cuda else "gloo"
        if cfg.bf16:
            self.precision = "bf16"
        elif cfg.fp16 and not cuda:
            log.warning("fp16=True needs a CUDA device; training in fp32 on the CPU")
            self.precision = "fp32"
        else:
            self.precision = "fp16" if cfg.fp16 else "fp32"
        self.grad_clip = cfg.grad_clip

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def all_sum(self, t):
        if self.world_size > 1:
            dist.all_reduce(t)
        return t

    def all_gather_object(self, obj):
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self):
        if dist.is_initialized():
            dist.destroy_process_group()


class TorchEngine(_Engine):
    """Plain PyTorch: one process, or DistributedDataParallel when started by torchrun."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if self.world_size > 1:
            dist.init_process_group(self.backend, rank=self.rank, world_size=self.world_size)

    def wrap(self, model, optimizer):
        model.to(self.device)
        ddp = None
        if self.world_size > 1:
            ddp = DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        scaler = (
            torch.amp.GradScaler(self.device.type, init_scale=FP16_INIT_SCALE) if self.precision == "fp16" else None
        )
        return TorchTrainable(model, ddp, optimizer, scaler, self.grad_clip)


class _Trainable:
    """Optimiser + loss-scaler state shared by both engines' trainables (`optimizer`, `scaler` attributes)."""

    def state_dict(self):
        return self.optimizer.state_dict(), self.scaler.state_dict() if self.scaler else None

    def load_state_dict(self, optim_state, scaler_state):
        self.optimizer.load_state_dict(optim_state)
        if self.scaler and scaler_state:
            self.scaler.load_state_dict(scaler_state)


class TorchTrainable(_Trainable):
    def __init__(self, module, ddp, optimizer, scaler, grad_clip):
        self.module, self.ddp, self.optimizer, self.scaler, self.grad_clip = module, ddp, optimizer, scaler, grad_clip

    def __call__(self, *args, **kwargs):
        return (self.ddp or self.module)(*args, **kwargs)

    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss):
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self):
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        # grad_clip 0 disables clipping (as DeepSpeed's gradient_clipping=0); the norm is still measured
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip or math.inf).item()
        if self.scaler:  # skips the update itself when the unscaled gradients hold inf/NaN
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif math.isfinite(norm):
            self.optimizer.step()
        return norm


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DeepSpeedEngine(_Engine):
    """DeepSpeed, ZeRO stage 0: gradient all-reduce, clipping, loss scaling and the step are DeepSpeed's.

    Forward passes call the plain module (stage 0 keeps full parameters on every rank), because DeepSpeed's
    output hooks reject the R1 penalty's torch.autograd.grad; mixed precision is DeepSpeed's
    `torch_autocast` (fp16 adds its GradScaler; the engine's scaler starts at 512 like the reference).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.deepspeed = deepspeed
        if "RANK" not in os.environ:  # plain `python train_asgan.py engine=deepspeed`: a one-process group
            os.environ.update(
                RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())
            )
        deepspeed.init_distributed(dist_backend=self.backend, auto_mpi_discovery=False, verbose=False)
        self.ds_config = {
            "train_micro_batch_size_per_gpu": cfg.batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": cfg.grad_clip,
            "zero_optimization": {"stage": 0},
            "steps_per_print": 2**62,
            "torch_autocast": {
                "enabled": self.precision != "fp32",
                "dtype": "float16" if self.precision == "fp16" else "bfloat16",
            },
        }

    def close(self):
        if dist.is_initialized():  # DeepSpeed's own call also drops its group references, so it can start again
            self.deepspeed.comm.destroy_process_group()

    def wrap(self, model, optimizer):
        engine, *_ = self.deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config)
        if engine.torch_autocast_z0_gradscaler is not None:
            engine.torch_autocast_z0_gradscaler = torch.amp.GradScaler(self.device.type, init_scale=FP16_INIT_SCALE)
        return DeepSpeedTrainable(engine, self.world_size > 1)


@torch.no_grad()
def broadcast_buffers(module):
    """Copy rank 0's buffers (all float32 here) into `module` on every rank, in one collective."""
    buffers = list(module.buffers())
    if not buffers:  # e.g. a HiFi-GAN generator
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.broadcast(flat, 0)
    for b, part in zip(buffers, flat.split([b.numel() for b in buffers])):
        b.copy_(part.view_as(b))


class DeepSpeedTrainable(_Trainable):
    def __init__(self, engine, sync_buffers):
        self.engine, self.module, self.optimizer = engine, engine.module, engine.optimizer
        self.sync_buffers = sync_buffers

    @property
    def scaler(self):
        return self.engine.torch_autocast_z0_gradscaler

    def __call__(self, *args, **kwargs):
        if self.sync_buffers:
            broadcast_buffers(self.module)
        return self.module(*args, **kwargs)

    def zero_grad(self):
        self.engine.zero_grad()

    def backward(self, loss):
        self.engine.backward(loss)

    def step(self):
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()
        if self.scaler:  # gradients are still scaled here; the GradScaler skips non-finite updates itself
            norm /= self.scaler.get_scale()
            self.engine.step()
        elif math.isfinite(norm):
            self.engine.step()
        else:
            self.engine.zero_grad()
        return norm


def resolve_device(device=None) -> torch.device:
    """None -> CUDA if available else CPU; a CUDA device without CUDA -> CPU with a warning."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"device {device} requested but CUDA is not available; using the CPU", stacklevel=3)
        return torch.device("cpu")
    return device


def mean_over_ranks(engine, *values):
    """Python floats of scalar tensors averaged over ranks (one host sync), so every rank decides alike."""
    t = torch.stack([v.detach().float() for v in values])
    return (engine.all_sum(t) / engine.world_size).tolist()


def optimise(trainable, loss, name, steps, grad_norms=None):
    """Backward, clip and step one model; returns the pre-clip gradient norm (non-finite: update skipped).

    grad_norms: a dict that receives '{name}.{parameter}' -> unscaled gradient L2 norm, for the figure.
    """
    trainable.backward(loss)
    if grad_norms is not None:
        scale = trainable.scaler.get_scale() if trainable.scaler else 1.0
        grad_norms.update(
            {
                f"{name}.{n}": p.grad.float().norm().item() / scale
                for n, p in trainable.module.named_parameters()
                if p.grad is not None
            }
        )
    norm = trainable.step()
    if not math.isfinite(norm):
        log.warning("step %d: non-finite %s gradient norm (%s); %s update skipped", steps, name, norm, name)
    return norm
