"""The studio (density/studio): the page served on a free local port and driven tab by tab through gradio_client
(shapes, sample rate, determinism for a seed, refused requests, no connection off this machine, files only in the
temporary folder and the checkpoint's caches), its command's errors, and the page in headless Chromium: click
Generate, the audio players load, nothing is fetched from another host.

Needs the `studio` extra (gradio; `make install` installs it, so CI runs these) and, for the browser test, Debian's
chromium (CI installs it)."""

import base64
import json
import os
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import make_checkpoint, tiny_vocoder

from density.audio.signal import save_wav
from density.evaluation.classifier import ResNeXt, checkpoint_dict
from density.vocoders.vocoder import save_vocoder

try:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from density.studio import app
    from density.studio.engine import MAX_CLIPS, MAX_STEPS, Projected, Studio, StudioError
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip('gradio not installed: pip install -e ".[studio]" (CI installs it)', allow_module_level=True)

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def noise(path, seconds, seed, sr=16000):
    g = torch.Generator().manual_seed(seed)
    save_wav(path, 0.1 * torch.randn(int(seconds * sr), generator=g), sr)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny mel checkpoint (Griffin-Lim), an untrained digit classifier and a labelled CSV of noise clips."""
    root = tmp_path_factory.mktemp("studio")
    ckpt = root / "model" / "ckpt.pt"
    ckpt.parent.mkdir()
    make_checkpoint(ckpt, mel=True)
    torch.manual_seed(0)
    torch.save(checkpoint_dict(ResNeXt.from_arch("cpu")), root / "classifier.pt")
    rows = ["path,label"] + [
        f"{noise(root / f'{label}_{k}.wav', 1.0, seed=10 * k + len(label))},{label}"
        for label in ("two", "three")
        for k in range(2)
    ]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def served(model_dir):
    """The studio on a free port, with every outgoing connection of this process recorded -> (url, peers)."""
    peers = []
    connect = socket.socket.connect

    def recording_connect(sock, address):
        peers.append(address)
        return connect(sock, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", recording_connect)
        studio = Studio(
            model_dir / "model" / "ckpt.pt",
            classifier=model_dir / "classifier.pt",
            csv=model_dir / "train.csv",
            per_label=2,
            device="cpu",
        )
        blocks, url = app.launch(studio, free_port(), model_dir / "page", block=False)
        try:
            yield url, peers, studio
        finally:
            blocks.close()


@pytest.fixture
def client(served, tmp_path):
    return Client(served[0], download_files=str(tmp_path), analytics_enabled=False, verbose=False)


def players(result, n_slots):
    """The visible (spectrogram path, samples, sample rate, caption) of a result's n_slots slots (after the status
    and any other leading outputs)."""
    slots = result[len(result) - 3 * n_slots :]
    out = []
    for image, audio, caption in zip(slots[::3], slots[1::3], slots[2::3]):
        if audio["visible"]:
            data, sr = sf.read(audio["value"], dtype="int16")
            out.append((image["value"], data, sr, caption["value"]))
    return out


def read_image(path):
    """An image file the page served -> (H, W, 3) uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_generate_tab(client):
    first = players(client.predict(3, 4, 1.0, api_name="/generate"), MAX_CLIPS)
    assert len(first) == 4
    for image, samples, sr, caption in first:
        assert sr == 16000 and samples.shape == (16000,) and np.abs(samples).max() > 0
        assert np.asarray(read_image(image)).shape[:2] == (128, 100)
        assert caption.startswith("seed 3") and "heard as “" in caption and "%)" in caption
    again = players(client.predict(3, 4, 1.0, api_name="/generate"), MAX_CLIPS)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again)), "the same seed gave other audio"
    other = players(client.predict(4, 4, 1.0, api_name="/generate"), MAX_CLIPS)
    assert not np.array_equal(first[0][1], other[0][1])
    truncated = players(client.predict(3, 4, 0.0, api_name="/generate"), MAX_CLIPS)
    assert np.array_equal(truncated[0][1], truncated[1][1]), "psi 0 gives every clip the mean w"
    assert len(players(client.predict(3, MAX_CLIPS, 0.5, api_name="/generate"), MAX_CLIPS)) == MAX_CLIPS
    for seed, count, psi, message in [
        (3, 0, 1.0, "Value 0 is less than minimum value 1"),  # the page's own bounds
        (3, MAX_CLIPS + 1, 1.0, f"Value {MAX_CLIPS + 1} is greater than maximum value {MAX_CLIPS}"),
        (-1, 4, 1.0, "seed must be a whole number from 0 to 2147483647, got -1"),
        (3, 4, 2.5, "Value 2.5 is greater than maximum value 2.0"),
    ]:
        with pytest.raises(AppError, match=message):
            client.predict(seed, count, psi, api_name="/generate")


def test_interpolate_tab(client):
    result = client.predict("seed", 1, "seed", 2, 5, "W", "lerp", api_name="/interpolate")
    points = players(result, MAX_STEPS)
    assert len(points) == 5 and all(p[2] == 16000 and p[1].shape == (16000,) for p in points)
    assert [p[3].split(" ·")[0] for p in points][::4] == ["seed 1 → seed 2: 0.00", "seed 1 → seed 2: 1.00"]
    assert read_image(result[1]).shape[:2] == (128, 5 * 100 + 4 * 2)  # the strip of spectrograms
    again = players(client.predict("seed", 1, "seed", 2, 5, "W", "lerp", api_name="/interpolate"), MAX_STEPS)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(points, again))
    assert len(players(client.predict("seed", 1, "seed", 2, 3, "Z", "slerp", api_name="/interpolate"), MAX_STEPS)) == 3
    for args, message in [
        (("seed", 1, "projected clip", 2, 5, "W", "lerp"), "no projected clip yet: project a recording"),
        (("seed", 1, "seed", 2, 1, "W", "lerp"), "Value 1 is less than minimum value 2"),
        (("seed", 1, "seed", 2, 5, "W", "cubic"), r"'cubic' .* is not in the list of choices: \['lerp', 'slerp'\]"),
    ]:
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name="/interpolate")


def test_mix_tab(served, client):
    names = served[2].layer_names()  # the input, 14 synthesis layers, the head
    assert len(names) == 16
    none = players(client.predict("seed", 5, "seed", 6, [], api_name="/mix"), 3)
    assert [c[3].split(" ·")[0] for c in none] == ["A: seed 5", "B: seed 6", "A with layers none from B"]
    assert np.array_equal(none[2][1], none[0][1]), "no layers from B: the mix is A"
    every = players(client.predict("seed", 5, "seed", 6, names, api_name="/mix"), 3)
    assert np.array_equal(every[2][1], every[1][1]), "every layer from B: the mix is B"
    fine = players(client.predict("seed", 5, "seed", 6, names[8:], api_name="/mix"), 3)
    assert not np.array_equal(fine[2][1], fine[0][1]) and not np.array_equal(fine[2][1], fine[1][1])
    with pytest.raises(AppError, match="'99 layer' .* is not in the list of choices"):
        client.predict("seed", 5, "seed", 6, ["99 layer"], api_name="/mix")


def test_project_tab_then_edit_mix_and_interpolate_with_the_projection(client, model_dir, tmp_path):
    with pytest.raises(AppError, match="no projected clip yet"):
        client.predict("two", "three", 1.0, api_name="/edit")
    clip = noise(tmp_path / "mine.wav", 0.8, seed=7, sr=22050)  # another rate: resampled
    result = client.predict(handle_file(str(clip)), "W+", 10, api_name="/project")
    assert "feature error" in result[0]
    original, reconstruction = players(result, 2)
    assert original[3].startswith("mine ·") and reconstruction[3].startswith("mine projected")
    assert original[1].shape == reconstruction[1].shape == (16000,)
    edited = players(client.predict("two", "three", 1.0, api_name="/edit"), 1)
    assert len(edited) == 1 and "+1 × (two → three)" in edited[0][3]
    cached = sorted(p.name for p in (model_dir / "model").iterdir())
    assert len(cached) == 3 and cached[0] == "ckpt.pt", cached  # + the mean-w and the direction caches
    assert any(".direction-" in n and n.endswith("two_to_three.pt") for n in cached)
    zero = players(client.predict("two", "three", 0.0, api_name="/edit"), 1)
    assert np.array_equal(zero[0][1], reconstruction[1]), "strength 0 is the reconstruction"
    mixed = players(client.predict("projected clip", 0, "seed", 6, [], api_name="/mix"), 3)
    assert np.array_equal(mixed[0][1], reconstruction[1])
    with pytest.raises(AppError, match="two seeds"):
        client.predict("projected clip", 0, "seed", 2, 3, "Z", "lerp", api_name="/interpolate")
    assert len(players(client.predict("projected clip", 0, "seed", 2, 3, "W", "slerp", api_name="/interpolate"), 12))
    with pytest.raises(AppError, match="different digits"):
        client.predict("two", "two", 1.0, api_name="/edit")
    (tmp_path / "notes.txt").write_text("not audio")
    too_short, too_long = noise(tmp_path / "short.wav", 0.05, seed=1), noise(tmp_path / "long.wav", 31, seed=1)
    for path, message in [
        (tmp_path / "notes.txt", "notes.txt: not an audio file the studio reads; use .wav, .flac, .ogg"),
        (too_short, "short.wav: 0.05 s long; give a clip of 0.1 to 30 s"),
        (too_long, "long.wav: 31.00 s long; give a clip of 0.1 to 30 s"),
    ]:
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(str(path)), "W", 10, api_name="/project")
    with pytest.raises(AppError, match="less than minimum value 10"):
        client.predict(handle_file(str(clip)), "W", 5, api_name="/project")


def test_nothing_leaves_the_machine_and_page_files_stay_in_the_temporary_folder(served, client, model_dir):
    client.predict(0, 2, 1.0, api_name="/generate")
    url, peers, _ = served
    assert url.startswith("http://127.0.0.1:")
    assert peers and all(p[0] in LOOPBACK for p in peers if isinstance(p, tuple)), peers
    assert list((model_dir / "page").rglob("*.wav")), "page audio goes to the temporary folder"


def test_command_errors(model_dir, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no outputs/demo here
    for argv, message in [
        ([], "no --checkpoint, and no demo model"),
        (["--checkpoint", str(tmp_path / "missing.pt")], "missing.pt: no such file"),
        (["--checkpoint", str(model_dir / "model" / "ckpt.pt"), "--port", "0"], "--port 0"),
    ]:
        with pytest.raises(SystemExit) as e:
            app.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_hubert_checkpoint_needs_its_vocoder_file_and_its_hubert_model_to_project(tmp_path):
    make_checkpoint(tmp_path / "hubert.pt")  # hubert_L6 features: no Griffin-Lim, and the studio downloads nothing
    with pytest.raises(StudioError, match="hubert_L6 checkpoint: give its vocoder file with --vocoder"):
        Studio(tmp_path / "hubert.pt")
    save_vocoder(tiny_vocoder(), tmp_path / "vocoder.pt")
    studio = Studio(tmp_path / "hubert.pt", vocoder=tmp_path / "vocoder.pt")
    (clip,) = studio.generate(seed=0, count=1, psi=1.0)
    assert clip.wav.shape == (16000,) and clip.caption == "seed 0 · 0"  # no classifier, no digit
    with pytest.raises(StudioError, match="--hubert"):
        studio.project(noise(tmp_path / "mine.wav", 1.0, seed=3), "w", 10)


def test_directions_need_a_csv_once_and_leave_a_foreign_file_alone(model_dir, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    shutil.copy(model_dir / "model" / "ckpt.pt", ckpt)
    studio = Studio(ckpt)
    clip = Projected("seed 1", studio.seed_source(1).ws, 0.0)
    with pytest.raises(StudioError, match="no two → three direction next to the checkpoint yet: start the studio with"):
        studio.edit(clip, "two", "three", 1.0)
    foreign = studio.direction_path("two", "three")
    foreign.write_bytes(b"not a direction")
    studio = Studio(ckpt, csv=model_dir / "train.csv", per_label=2)
    with pytest.warns(UserWarning, match="not a direction of this checkpoint; leaving it alone"):
        (edited,) = studio.edit(clip, "two", "three", 1.0)
    assert foreign.read_bytes() == b"not a direction" and edited.wav.shape == (16000,)


# ---------------------------------------------------------------- the page in headless Chromium


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe (fd 3 in, fd 4 out): JSON messages ending in NUL."""

    def __init__(self, browser, profile, width=1280, height=900):
        to_browser, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--autoplay-policy=no-user-gesture-required",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
        ]

        def pipes_as_fd_3_and_4():
            os.dup2(to_browser, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [browser, *flags, "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=pipes_as_fd_3_and_4,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser_w)
        self.buffer, self.next_id, self.events, self.session = b"", 0, [], None

    def _read_message(self, deadline):
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, timeout=60, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def evaluate(self, expression):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression, timeout=90, show=None):
        """Poll until `expression` is truthy -> its value; on timeout the error shows `show`'s value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"never true: {expression}" + (f"; {show} = {self.evaluate(show)!r}" if show else ""))

    def close(self):
        self.proc.kill()
        self.proc.wait()
        os.close(self.to_browser)
        os.close(self.from_browser)


DURATIONS = "[...document.querySelectorAll('time[id=duration]')].map(t => t.textContent.trim())"
PLAYED = "document.querySelector('time[id=time]').textContent.trim()"


def test_page_in_chromium_generates_and_plays(served, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium) - CI runs this test")
    url = served[0]
    tools = DevTools(browser, tmp_path / "profile")
    try:
        page = next(t for t in tools.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        tools.session = tools.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        tools.send("Network.enable")
        tools.send("Page.navigate", url=url)
        tools.wait_for("!!document.querySelector('#generate-button')")
        # the default count of players, each showing the length of its decoded clip; a click that comes before the
        # page has wired its buttons does nothing, so click again until it answers
        ready = f"(d => d.length == 4 && d.every(t => t == '0:01') && d)({DURATIONS})"
        for _ in range(12):
            tools.evaluate("document.querySelector('#generate-button').click()")
            try:
                tools.wait_for(ready, timeout=10)
                break
            except TimeoutError:
                continue
        assert tools.wait_for(ready, timeout=1, show=DURATIONS)
        text = tools.evaluate("document.body.innerText")
        assert "4 clips in" in text and text.count("heard as “") == 4
        tools.evaluate("document.querySelector('button[aria-label=\"Play\"]').click()")
        assert tools.wait_for(f"{PLAYED} == '0:01'", timeout=30, show=PLAYED), "the first clip did not play"
        shot = tools.send("Page.captureScreenshot", format="png")["data"]
        (tmp_path / "studio.png").write_bytes(base64.b64decode(shot))
    finally:
        tools.close()
    events = {}
    for e in tools.events:
        events.setdefault(e.get("method"), []).append(e["params"])
    wavs = [r["response"] for r in events["Network.responseReceived"] if r["response"]["mimeType"] == "audio/wav"]
    assert len(wavs) >= 4 and all(r["status"] in (200, 206) for r in wavs), wavs
    requested = [r["request"]["url"] for r in events["Network.requestWillBeSent"]]
    assert all(u.startswith(url.rstrip("/")) or u.startswith(("data:", "blob:")) for u in requested), [
        u for u in requested if not u.startswith(url.rstrip("/"))
    ]
