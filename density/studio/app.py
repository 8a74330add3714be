"""The studio page: listen to one ASGAN checkpoint and move through its latent space, on this machine only.

    make studio CHECKPOINT=runs/mel/ckpt_00100000.pt [PORT=7860]
    python -m density.studio --checkpoint runs/hubert/ckpt.pt --vocoder hifigan.pt --hubert hubert_base.pt
    python -m density.studio                  # the demo's model (outputs/demo, after `make demo`)

Tabs: Generate (seed, count, truncation psi: players with spectrograms and, given --classifier, the digit heard),
Interpolate (two seeds or the projected clip, slerp/lerp in Z or W), Mix styles (which layers come from the
second source), Project (upload or record a clip, project it into W / W+, hear the reconstruction, edit it along
a digit-to-digit direction: computed once from --csv and cached next to the checkpoint).

Served on 127.0.0.1 only; Gradio's analytics and version check are off and the page uses system fonts, so
nothing is fetched from or sent to another machine. Requests run one at a time. Audio and images for the page
are written to a temporary folder that is removed on exit; the only other files are the checkpoint's caches
(the mean w and the directions, next to it). Needs the `studio` extra: pip install -e ".[studio]".
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio: no telemetry and no version check
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
try:
    import gradio as gr
except ModuleNotFoundError as e:  # the studio is an optional extra
    raise SystemExit('error: the studio needs Gradio: pip install -e ".[studio]" (make install does)') from e

from density.audio.signal import SAMPLE_RATE
from density.data.splits import SC09_CLASSES
from density.runtime import cli
from density.runtime.run import periodic_checkpoints
from density.studio import engine
from density.studio.engine import MAX_CLIPS, MAX_STEPS, PROJECT_STEPS, Studio, StudioError

DEMO_DIR = Path("outputs/demo")  # where `make demo` leaves its model, classifier and splits
DEFAULT_PORT = 7860
COLUMNS = 4  # players per row
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no font files fetched
MONO_FONTS = ["ui-monospace", "monospace"]
SOURCES = ("seed", "projected clip")
TQDM_PROGRESS = gr.Progress(track_tqdm=True)  # a handler with this default shows the tqdm bars it runs
CSS = (
    ".studio-caption p {font-size: 0.85em; margin: 0} "
    ".studio-spectrogram .image-frame, .studio-spectrogram img {width: 100% !important; height: 100% !important} "
    ".studio-spectrogram img {object-fit: fill !important}"
)


def pcm16(wav):
    """(T,) float waveform in [-1, 1] -> int16 numpy array (what the page's players get)."""
    return (wav.clamp(-1, 1) * 32767).round().short().numpy()


class Page:
    """The Gradio Blocks of the studio around a Studio; each public method is one button's handler (and one API
    endpoint of the same name)."""

    def __init__(self, studio: Studio):
        self.studio = studio

    # ---------------------------------------------------------------- layout helpers

    def slots(self, n):
        """n hidden (spectrogram, player, caption) triples, COLUMNS a row -> flat list of components."""
        out = []
        for start in range(0, n, COLUMNS):
            with gr.Row(equal_height=False):
                for _ in range(start, min(n, start + COLUMNS)):
                    with gr.Column(min_width=180):
                        out += [
                            gr.Image(
                                show_label=False,
                                visible=False,
                                height=110,
                                format="png",
                                interactive=False,
                                elem_classes="studio-spectrogram",
                            ),
                            gr.Audio(show_label=False, visible=False, interactive=False, format="wav"),
                            gr.Markdown(visible=False, elem_classes="studio-caption"),
                        ]
        return out

    def fill(self, clips, n):
        """Updates for n slots: the clips in the first ones, the rest hidden."""
        out = []
        for k in range(n):
            if k < len(clips):
                c = clips[k]
                out += [
                    gr.update(value=c.image, visible=True),
                    gr.update(value=(SAMPLE_RATE, pcm16(c.wav)), visible=True),
                    gr.update(value=c.caption, visible=True),
                ]
            else:
                out += [gr.update(value=None, visible=False)] * 3
        return out

    def source_inputs(self, label, seed):
        with gr.Column(min_width=200):
            kind = gr.Radio(list(SOURCES), value="seed", label=f"{label}: source")
            number = gr.Number(value=seed, precision=0, label=f"{label}: seed")
        return [kind, number]

    def source(self, kind, seed, projected):
        if kind == "seed":
            return self.studio.seed_source(seed)
        if kind == "projected clip":
            return self.studio.projected_source(projected)
        raise StudioError(f"source must be one of {', '.join(SOURCES)}; got {kind!r}")

    def run(self, fn, *args):
        """fn(*args) -> (its result, the seconds it took as text); a StudioError is shown on the page."""
        start = time.perf_counter()
        try:
            result = fn(*args)
        except StudioError as e:
            raise gr.Error(str(e), print_exception=False) from None
        return result, f"{time.perf_counter() - start:.2f} s"

    # ---------------------------------------------------------------- handlers

    def generate(self, seed, count, psi):
        clips, took = self.run(self.studio.generate, seed, count, psi)
        return [f"{len(clips)} clips in {took}", *self.fill(clips, MAX_CLIPS)]

    def _interpolate(self, kind_a, seed_a, kind_b, seed_b, steps, space, method, projected):
        a, b = self.source(kind_a, seed_a, projected), self.source(kind_b, seed_b, projected)
        return self.studio.interpolate(a, b, steps, str(space).lower(), method)

    def interpolate(self, kind_a, seed_a, kind_b, seed_b, steps, space, method, projected):
        clips, took = self.run(self._interpolate, kind_a, seed_a, kind_b, seed_b, steps, space, method, projected)
        return [f"{len(clips)} points in {took}", engine.spectrogram_strip(clips), *self.fill(clips, MAX_STEPS)]

    def _mix(self, kind_a, seed_a, kind_b, seed_b, layers, projected):
        a, b = self.source(kind_a, seed_a, projected), self.source(kind_b, seed_b, projected)
        return self.studio.mix(a, b, layers)

    def mix(self, kind_a, seed_a, kind_b, seed_b, layers, projected):
        clips, took = self.run(self._mix, kind_a, seed_a, kind_b, seed_b, layers, projected)
        return [f"mixed in {took}", *self.fill(clips, 3)]

    def project(self, path, space, steps, progress=TQDM_PROGRESS):
        (projected, clips), took = self.run(self.studio.project, path, str(space).lower(), steps, True)
        status = f"projected in {took}; feature error {projected.error:.4f} ({self.studio.loss})"
        return [projected, status, *self.fill(clips, 2)]

    def edit(self, projected, source, target, strength, progress=TQDM_PROGRESS):
        clips, took = self.run(self.studio.edit, projected, source, target, strength, True)
        return [f"edited in {took}", *self.fill(clips, 1)]

    # ---------------------------------------------------------------- the page

    def build(self):
        """-> the gradio Blocks."""
        st = self.studio
        cfg = st.model.cfg
        with gr.Blocks(title="ASGAN studio", analytics_enabled=False, delete_cache=(3600, 7200)) as blocks:
            gr.Markdown(
                f"## ASGAN studio\n`{st.checkpoint.name}` · {cfg.data_type} features · vocoder {st.vocoder_name}"
                + (f" · digit classifier: {', '.join(st.classifier.classes)}" if st.classifier else "")
            )
            projected = gr.State(None)
            with gr.Tab("Generate"):
                self.generate_tab()
            with gr.Tab("Interpolate"):
                self.interpolate_tab(projected)
            with gr.Tab("Mix styles"):
                self.mix_tab(projected)
            with gr.Tab("Project"):
                self.project_tab(projected)
        return blocks

    def generate_tab(self):
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="seed")
            count = gr.Slider(1, MAX_CLIPS, value=4, step=1, label="count")
            psi = gr.Slider(0, engine.MAX_PSI, value=1.0, step=0.05, label="truncation ψ (1: off)")
            button = gr.Button("Generate", variant="primary", elem_id="generate-button")
        status = gr.Markdown()
        outputs = [status, *self.slots(MAX_CLIPS)]
        button.click(self.generate, [seed, count, psi], outputs, api_name="generate")

    def interpolate_tab(self, projected):
        with gr.Row():
            a, b = self.source_inputs("A", 1), self.source_inputs("B", 2)
            with gr.Column(min_width=200):
                space = gr.Radio(["W", "Z"], value="W", label="space")
                method = gr.Radio(["lerp", "slerp"], value="lerp", label="path")
            steps = gr.Slider(2, MAX_STEPS, value=6, step=1, label="steps")
        button = gr.Button("Interpolate", variant="primary")
        status = gr.Markdown()
        strip = gr.Image(
            label="spectrograms along the path",
            format="png",
            interactive=False,
            height=140,
            elem_classes="studio-spectrogram",
        )
        outputs = [status, strip, *self.slots(MAX_STEPS)]
        button.click(self.interpolate, [*a, *b, steps, space, method, projected], outputs, api_name="interpolate")

    def mix_tab(self, projected):
        with gr.Row():
            a, b = self.source_inputs("A", 1), self.source_inputs("B", 2)
            layers = gr.CheckboxGroup(
                self.studio.layer_names(), value=self.studio.layer_names()[-3:], label="layers taken from B"
            )
        button = gr.Button("Mix", variant="primary")
        status = gr.Markdown()
        outputs = [status, *self.slots(3)]
        button.click(self.mix, [*a, *b, layers, projected], outputs, api_name="mix")

    def project_tab(self, projected):
        with gr.Row():
            clip = gr.Audio(sources=["upload", "microphone"], type="filepath", label="your clip (about 1 s)")
            with gr.Column():
                space = gr.Radio(["W", "W+"], value="W", label="project into")
                steps = gr.Slider(*PROJECT_STEPS, value=200, step=10, label="Adam steps")
                button = gr.Button("Project", variant="primary")
        status = gr.Markdown()
        outputs = [projected, status, *self.slots(2)]
        button.click(self.project, [clip, space, steps], outputs, api_name="project")
        gr.Markdown("### Edit the projected clip along a digit-to-digit direction")
        with gr.Row():
            source = gr.Dropdown(list(SC09_CLASSES), value="two", label="from")
            target = gr.Dropdown(list(SC09_CLASSES), value="three", label="to")
            strength = gr.Slider(-engine.MAX_STRENGTH, engine.MAX_STRENGTH, value=1.0, step=0.1, label="strength")
            edit_button = gr.Button("Edit")
        edit_status = gr.Markdown()
        outputs = [edit_status, *self.slots(1)]
        edit_button.click(self.edit, [projected, source, target, strength], outputs, api_name="edit")


def launch(studio, port, temp_dir, block=True):
    """Serve the studio's page on 127.0.0.1:port, page files in temp_dir -> (Blocks, local URL).

    block: serve until Ctrl-C (then close); else return at once with the server running (tests)."""
    os.environ["GRADIO_TEMP_DIR"] = str(temp_dir)  # read when the Blocks and its routes are made
    blocks = Page(studio).build()
    blocks.queue(default_concurrency_limit=1, max_size=32)
    _, url, _ = blocks.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=not block,
        quiet=not block,
        show_error=True,
        max_file_size=f"{engine.MAX_UPLOAD_MB}mb",
        footer_links=[],
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        enable_monitoring=False,
        theme=gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS),
        css=CSS,
    )
    return blocks, url


def demo_file(*parts):
    """A file of the demo's folder (outputs/demo), or None when it is not there."""
    path = DEMO_DIR.joinpath(*parts)
    return path if path.is_file() else None


def demo_checkpoint():
    """The newest periodic checkpoint of the demo's training run, or None."""
    ckpts = periodic_checkpoints(DEMO_DIR / "asgan")
    return ckpts[-1] if ckpts else None


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help=f"ASGAN checkpoint (default: the demo's newest, {DEMO_DIR}/asgan)")
    p.add_argument("--vocoder", help="vocoder file (HiFi-GAN or iSTFT; default for mel checkpoints: Griffin-Lim)")
    p.add_argument("--classifier", help="digit classifier file (default with the demo's model: the demo's)")
    p.add_argument("--hubert", help="fairseq HuBERT checkpoint: lets the Project tab read speech for hubert_L*")
    p.add_argument("--csv", help="labelled split CSV: computes digit directions (default with the demo: its train)")
    p.add_argument("--per_label", type=int, default=16, help="clips of each digit behind a direction")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port on 127.0.0.1")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        p.error(f"--port {args.port}: choose a port from 1 to 65535")
    if args.per_label < 1:
        p.error("--per_label must be >= 1")
    if args.checkpoint is None:
        args.checkpoint = demo_checkpoint()
        if args.checkpoint is None:
            p.error(f"no --checkpoint, and no demo model in {DEMO_DIR}/asgan: give --checkpoint or run `make demo`")
        args.classifier = args.classifier or demo_file("classifier", "classifier_best.pt")
        args.csv = args.csv or demo_file("splits", "sc09-train.csv")
    return args


def stop(signum, frame):
    """SIGTERM handler: stop serving as Ctrl-C does."""
    raise KeyboardInterrupt


def serve(args):
    studio = Studio(
        args.checkpoint,
        vocoder=args.vocoder,
        classifier=args.classifier,
        hubert=args.hubert,
        csv=args.csv,
        device=args.device,
        per_label=args.per_label,
    )
    temp_dir = Path(tempfile.mkdtemp(prefix="asgan-studio-"))
    signal.signal(signal.SIGTERM, stop)  # `kill` closes the page like Ctrl-C, so the folder is removed
    try:
        print(f"studio for {args.checkpoint} on http://127.0.0.1:{args.port} (Ctrl-C stops it)", file=sys.stderr)
        launch(studio, args.port, temp_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def main(argv=None):
    """A user error (a missing file, a busy port, no Gradio) exits with status 2 and one `error: ...` line."""
    cli.run(lambda args: serve(parse_args(args)), argv)


if __name__ == "__main__":
    cli.command(main)
