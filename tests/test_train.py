"""train_asgan.py on the CPU with a tiny model and tiny data made here: outputs, exact resume, faults."""
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_asgan
from density import checkpoint as ckpt
from density.config import ConfigError, config_from_yaml
from density.models import Generator

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_KEYS = {'g_state_dict', 'd_state_dict', 'g_optim_state_dict', 'd_optim_state_dict', 'g_ema_state_dict',
                  'g_scaler_state_dict', 'd_scaler_state_dict', 'steps', 'epoch', 'cfg_yaml'}
QUIET = ['validation_interval=1000', 'checkpoint_interval=1000', 'summary_interval=1000', 'stdout_interval=1000',
         'grad_summary_interval=1000']


def make_data(folder, n=24, c_dim=6, seed=0):
    """n feature files of 5..11 frames (some shorter, some longer than seq_len 8)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for k in range(n):
        frames = int(torch.randint(5, 12, (1,), generator=g))
        torch.save(0.3 * torch.randn(frames, c_dim, generator=g), folder / f'{k:03d}.pt')
    return folder


def tiny_args(tmp_path, run='run', *extra):
    """A tiny model (G ~4k, D ~2k parameters), 16 training items = 4 batches of 4, 8 validation items."""
    data = tmp_path / 'data'
    if not data.is_dir():
        make_data(data)
    return ['model=rp_w', f'train_root={data}', f'checkpoint_path={tmp_path / run}', 'n_valid=8', 'batch_size=4',
            'num_workers=0', 'c_dim=6', 'z_dim=8', 'rp_w_cfg.z_dim=8', 'rp_w_cfg.w_dim=8', 'rp_w_cfg.c_dim=6',
            'rp_w_cfg.ff_channels=16', 'rp_w_cfg.seq_len=8', 'rp_w_cfg.D_head_dim=8', 'rp_w_cfg.head_spec=[6,1]',
            'rp_w_cfg.D_block_repeats=[2,2]', 'rp_w_cfg.layer_specs=[[16,3,2],[16,3,2],[12,3,4],[8,3,8]]',
            'rp_w_cfg.apply_r1_every=2', 'lr=2e-3', 'aug_init_p=0.3', *extra]


@pytest.fixture(autouse=True)
def one_thread():
    """The 2-core test machine is shared: one intra-op thread is several times faster for these tiny models."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_identical(a, b, where):
    """Nested dicts/lists/tuples of tensors and plain values are bit-for-bit equal."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f'{where}[{k}]')
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def periodic(folder):
    return sorted(p.name for p in Path(folder).glob('ckpt_0*.pt'))


def test_few_steps_write_events_checkpoints_and_best_fad(tmp_path, capsys):
    out = tmp_path / 'run'
    train_asgan.main(tiny_args(tmp_path, 'run', 'max_steps=9', 'checkpoint_interval=3', 'validation_interval=4',
                               'summary_interval=2', 'stdout_interval=3', 'grad_summary_interval=6',
                               'keep_last_checkpoints=2'))
    assert periodic(out) == ['ckpt_00000006.pt', 'ckpt_00000008.pt']  # 3 pruned; 8 is the final checkpoint
    assert 'Steps: 6, g_loss: ' in capsys.readouterr().out
    state = ckpt.load(out / 'ckpt_00000008.pt')
    assert REFERENCE_KEYS | {'train_state', 'ada_state', 'rng_state'} <= set(state)
    assert state['steps'] == 8 and state['epoch'] == 2
    assert (state['g_scaler_state_dict'] is None) == (not torch.cuda.is_available())  # fp16 GradScaler on GPUs only
    cfg = config_from_yaml(state['cfg_yaml'])
    assert cfg.max_steps == 9 and cfg.rp_w_cfg.seq_len == 8
    Generator(cfg.rp_w_cfg).load_state_dict(state['g_ema_state_dict'])
    assert len(state['g_optim_state_dict']['param_groups']) == 2
    best = ckpt.load(out / 'ckpt_best_fad.pt')
    assert 'g_ema_state_dict' in best and best['steps'] in (4, 8)
    events = EventAccumulator(str(out / 'logs'))
    events.Reload()
    tags = set(events.Tags()['scalars'])
    assert {'training/g_loss_smooth', 'training/d_loss_smooth', 'opt/g_lr', 'opt/g_W_lr', 'opt/d_lr', 'data/ada_p',
            'data/r_t', 'opt/d_update_perc', 'training/dist_loss', 'validation/fad', 'validation/approx_kl_div',
            'validation/g_loss', 'validation/fake_closest_to_real_perc'} <= tags
    assert [e.step for e in events.Scalars('validation/fad')] == [4, 8]
    assert 'opt/grad_norms' in events.Tags()['images']


@pytest.mark.parametrize('num_workers', [0, 2])
def test_resume_is_exact(tmp_path, num_workers):
    """2N steps straight == N steps, stop, resume, N more: parameters, optimiser states, ADA, EMA, RNG."""
    common = [f'num_workers={num_workers}', 'ema_every=3', 'validation_interval=7', 'checkpoint_interval=1000',
              'summary_interval=1000', 'stdout_interval=1000', 'grad_summary_interval=1000']
    train_asgan.main(tiny_args(tmp_path, 'straight', 'max_steps=22', *common))
    train_asgan.main(tiny_args(tmp_path, 'split', 'max_steps=11', *common))
    resume = f'resume_checkpoint={tmp_path}/split/ckpt_00000010.pt'
    train_asgan.main(tiny_args(tmp_path, 'split', 'max_steps=22', resume, *common))
    a, b = ckpt.load(tmp_path / 'straight' / 'ckpt_00000021.pt'), ckpt.load(tmp_path / 'split' / 'ckpt_00000021.pt')
    assert a['ada_state']['p'] != 0.3, 'ADA p never adapted: the test would not cover it'
    for key in ('g_state_dict', 'd_state_dict', 'g_ema_state_dict', 'g_optim_state_dict', 'd_optim_state_dict',
                'ada_state', 'train_state', 'rng_state', 'steps', 'epoch'):
        assert_identical(a[key], b[key], key)


def test_sigterm_checkpoints_and_exits_zero(tmp_path):
    out = tmp_path / 'run'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    args = tiny_args(tmp_path, 'run', 'max_steps=100000', 'stdout_interval=1', 'checkpoint_interval=100000',
                     'validation_interval=100000', 'summary_interval=100000', 'grad_summary_interval=100000')
    proc = subprocess.Popen([sys.executable, str(ROOT / 'train_asgan.py'), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:
            if line.startswith('Steps: 8,'):
                proc.send_signal(signal.SIGTERM)
                break
        proc.stdout.read()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    (name,) = periodic(out)
    state = ckpt.load(out / name)
    assert state['steps'] >= 8 and name == f"ckpt_{state['steps']:08d}.pt"
    train_asgan.main(tiny_args(tmp_path, 'run', f"max_steps={state['steps'] + 3}", f'resume_checkpoint={out / name}',
                               *QUIET))
    assert periodic(out)[-1] == f"ckpt_{state['steps'] + 2:08d}.pt"


def test_reference_checkpoint_without_resume_state_still_resumes(tmp_path, caplog):
    train_asgan.main(tiny_args(tmp_path, 'run', 'max_steps=3', *QUIET))
    state = ckpt.load(tmp_path / 'run' / 'ckpt_00000002.pt')
    ckpt.save({k: v for k, v in state.items() if k in REFERENCE_KEYS}, tmp_path / 'reference.pt')
    with caplog.at_level(logging.WARNING, logger='train_asgan'):
        train_asgan.main(tiny_args(tmp_path, 'run', 'max_steps=6', f'resume_checkpoint={tmp_path}/reference.pt',
                                   *QUIET))
    assert 'has no resume state' in caplog.text
    assert ckpt.load(tmp_path / 'run' / 'ckpt_00000005.pt')['steps'] == 5


def test_injected_nan_loss_is_skipped_and_logged(tmp_path, caplog, monkeypatch):
    calls = []

    def nan_on_second_call(d_fake):
        calls.append(1)
        loss = train_asgan.generator_loss.__wrapped__(d_fake)
        return loss * float('nan') if len(calls) == 2 else loss
    nan_on_second_call.__wrapped__ = train_asgan.generator_loss
    monkeypatch.setattr(train_asgan, 'generator_loss', nan_on_second_call)
    with caplog.at_level(logging.WARNING, logger='train_asgan'):
        train_asgan.main(tiny_args(tmp_path, 'run', 'max_steps=8', *QUIET))
    assert len([r for r in caplog.records if 'non-finite G loss (nan); G update skipped' in r.message]) == 1
    state = ckpt.load(tmp_path / 'run' / 'ckpt_00000007.pt')
    assert all(v.isfinite().all() for v in state['g_state_dict'].values())


def test_consecutive_nonfinite_steps_abort_naming_step_and_checkpoint(tmp_path, monkeypatch):
    calls = []

    def poisoned(loss_fn):
        def wrapped(*args):
            calls.append(1)
            return loss_fn(*args) * (float('nan') if len(calls) > 4 else 1.0)
        return wrapped
    monkeypatch.setattr(train_asgan, 'generator_loss', poisoned(train_asgan.generator_loss))
    monkeypatch.setattr(train_asgan, 'discriminator_loss', poisoned(train_asgan.discriminator_loss))
    args = tiny_args(tmp_path, 'run', 'max_nonfinite_steps=3', 'checkpoint_interval=2', 'validation_interval=1000')
    message = r'3 consecutive non-finite steps up to step 6.*ckpt_00000002'
    with pytest.raises(train_asgan.TrainingAborted, match=message):
        train_asgan.main(args)


def test_mistyped_override_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match='batch_size'):
        train_asgan.main(tiny_args(tmp_path, 'run', 'bacth_size=4'))
    with pytest.raises(ConfigError, match='model=rp_w'):
        train_asgan.main([a for a in tiny_args(tmp_path, 'run') if a != 'model=rp_w'])
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('kind', ['truncated', 'foreign', 'pickled code'])
def test_bad_resume_checkpoint_is_a_clear_error(tmp_path, kind):
    bad = tmp_path / 'bad.pt'
    if kind == 'truncated':
        torch.save({'g_state_dict': {'w': torch.zeros(5000)}}, bad)
        bad.write_bytes(bad.read_bytes()[:3000])
    elif kind == 'foreign':
        torch.save({'model': {'w': torch.zeros(3)}}, bad)
    else:
        torch.save({'g_state_dict': Path('x')}, bad)
    with pytest.raises(ckpt.CheckpointError, match=str(bad)):
        train_asgan.main(tiny_args(tmp_path, 'run', f'resume_checkpoint={bad}'))
    assert not (tmp_path / 'run').exists()
