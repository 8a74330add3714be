"""Every picture the project draws, with matplotlib's file-only backend: log-mel grids, training-curve panels and
the figures training logs to tensorboard. Figures are written atomically (`save_figure`)."""

import matplotlib

matplotlib.use("Agg")  # files only, no display: chosen here, once, for every importer
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from density.audio.signal import LOG_MEL_SILENCE  # noqa: E402
from density.runtime.fileio import atomic_path  # noqa: E402

GRID_COLUMNS = 8  # log-mels per row of a grid


def save_figure(fig, path, dpi=90):
    """Write fig as a PNG atomically, then close it."""
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)


def show_log_mel(ax, mel, title, fontsize=7):
    """mel: (128, frames) log-mel; silence (LOG_MEL_SILENCE) is the bottom of the colour scale."""
    vmax = max(mel.max().item(), LOG_MEL_SILENCE + 1)  # a silent clip is all LOG_MEL_SILENCE: keep vmin < vmax
    ax.imshow(mel.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=LOG_MEL_SILENCE, vmax=vmax)
    ax.set_title(title, fontsize=fontsize)
    ax.axis("off")


def log_mel_image(mel):
    """(128, frames) log-mel -> (128, frames, 3) uint8 RGB image, low bands at the bottom, in `show_log_mel`'s
    colours and scale, without a figure (fast enough for a live page)."""
    vmax = max(mel.max().item(), LOG_MEL_SILENCE + 1)
    scaled = ((mel.float() - LOG_MEL_SILENCE) / (vmax - LOG_MEL_SILENCE)).clamp(0, 1).flip(0)
    return (matplotlib.colormaps["magma"](scaled.numpy())[..., :3] * 255).round().astype("uint8")


def spectrogram_figure(rows, size=1.8):
    """A figure of log-mel images, one row of the figure per list of (title, log-mel (128, frames))."""
    n = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(size * n, size * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, row in enumerate(rows):
        for k, (title, mel) in enumerate(row):
            show_log_mel(axes[r, k], mel, title)
    fig.tight_layout()
    return fig


def write_spectrogram_grid(path, mels, names, columns=GRID_COLUMNS):
    """Grid of log-mels (128, frames) titled by `names`, `columns` a row, written atomically as a PNG."""
    items = list(zip(names, mels))
    rows = [items[k : k + columns] for k in range(0, len(items), columns)]
    save_figure(spectrogram_figure(rows, size=2.2), path, dpi=100)


def write_spectrogram(path, mel):
    """One small untitled log-mel (128, frames) image."""
    fig, ax = plt.subplots(figsize=(2.4, 1.6))
    show_log_mel(ax, mel, "")
    fig.tight_layout(pad=0.1)
    save_figure(fig, path)


def curves_figure(curves, size=(3.2, 2.6)):
    """One panel per (title, steps, values) of `curves`."""
    fig, axes = plt.subplots(1, len(curves), figsize=(size[0] * len(curves), size[1]), squeeze=False)
    for ax, (title, steps, values) in zip(axes[0], curves):
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def grad_norm_figure(named_grads):
    """Bar chart of per-parameter gradient L2 norms {name: norm} (NaN where a parameter has no gradient)."""
    names = list(named_grads)
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.12), 4))
    ax.bar(range(len(names)), [named_grads[n] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=4)
    ax.set_yscale("log")
    ax.set_ylabel("grad L2 norm")
    fig.tight_layout()
    return fig


def histogram_figure(edges, counts, xlabel):
    """Step histograms, normalised to sum 1: counts {name: (bins,) tensor} over the left bin edges (bins,)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    for name, c in counts.items():
        ax.step(edges, (c / c.sum().clamp_min(1)).numpy(), where="post", label=name)
    ax.set_xlabel(xlabel)
    ax.legend()
    fig.tight_layout()
    return fig


def feature_frames_figure(frames, n=4):
    """The first (up to) n feature sequences (B, L, C) as images, time across."""
    n = min(n, frames.shape[0])
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3), squeeze=False)
    for ax, m in zip(axes[0], frames[:n].float().cpu()):
        ax.imshow(m.T.numpy(), origin="lower", aspect="auto")
    fig.tight_layout()
    return fig
