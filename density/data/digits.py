"""Built-in spoken-digits corpus: an offline stand-in for SC09, synthesised with espeak-ng.

    python -m density.digits --out data/digits [--seed 0] [--speakers 100] [--per_word 2]

Each "speaker" is one espeak-ng voice (an English accent plus a voice variant such as f3, m5, klatt or
whisper) with its own base pitch, pitch range and speaking rate; every repetition k of a word jitters rate,
pitch and loudness. Clips are 16 kHz mono 16-bit wavs of exactly 1 s with the word centred, in the Speech
Commands layout `<word>/<speaker>_nohash_<k>.wav` plus `validation_list.txt` and `testing_list.txt`, so
`split_data.py` runs on it unchanged. Splits are by voice variant: a variant (hence a speaker id) never
appears in two splits. `speakers.csv` records each speaker's voice, settings and split.

The corpus is a pure function of its arguments (and of the espeakng-loader version): all random choices come
from `random.Random(seed)`, and espeak-ng is reloaded for every clip (dlopen/dlclose) with fixed libc and espeak
random seeds, because the library keeps glottal phase, flutter and echo state across utterances that no API call
resets (this needs the library not to be loaded by anything else in the process; Linux/macOS only).
espeak-ng (library and voice data) comes from the `espeakng-loader` wheel; no system install is needed.
"""

import _ctypes
import argparse
import csv
import ctypes
import hashlib
import io
import multiprocessing
import os
import random
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import espeakng_loader
import numpy as np
import torch
from tqdm import tqdm

from density.audio.signal import CLIP_SAMPLES, SAMPLE_RATE, fit_length, resample_audio, save_wav
from density.data.splits import SC09_CLASSES
from density.runtime import cli
from density.runtime.fileio import write_text

ACCENTS = ("en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-gb-x-rp", "en-us-nyc")
ESPEAK_SR = 22050  # espeak-ng's native output rate
MAX_SPEECH = int(0.9 * SAMPLE_RATE)  # longer words are re-synthesised faster so the clip keeps a margin
MAX_TRIES = 5  # re-synthesis attempts at a higher rate before giving up
TRIM_THRESHOLD = 0.02  # leading/trailing samples below 2% of the peak count as silence
RATE_RANGE = (100, 170)  # speaker base rate, words per minute (espeak default 175; isolated words are slow)
PITCH_RANGE = (20, 80)  # speaker base pitch, espeak 0..100 (default 50)
INTONATION_RANGE = (20, 90)  # speaker pitch range, espeak 0..100 (default 50)
RATE_JITTER = 0.15  # per-utterance rate factor in [1 - j, 1 + j]
PITCH_JITTER = 8  # per-utterance pitch offset in [-j, j]
PEAK_RANGE = (0.25, 0.9)  # per-utterance peak amplitude

# espeak-ng C API constants (speak_lib.h)
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000
CHARS_UTF8 = 1
POS_CHARACTER = 1
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_LIBC = ctypes.CDLL(None)


def variants():
    """Names of the voice variants shipped in the wheel's espeak-ng-data/voices/!v (sorted)."""
    return sorted(os.listdir(Path(espeakng_loader.get_data_path()) / "voices" / "!v"))


def synthesize(text, voice, rate, pitch, pitch_range, seed):
    """One utterance with a freshly loaded espeak-ng -> int16 (T,) at 22050 Hz."""
    chunks = []

    def collect(wav, n, events):
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    callback = _SYNTH_CALLBACK(collect)
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    data = espeakng_loader.get_data_path().encode()
    sr = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, INITIALIZE_DONT_EXIT)
    try:
        if sr != ESPEAK_SR:
            raise RuntimeError(
                f"espeak-ng failed to initialise from {data.decode()} (returned {sr}); "
                "reinstall the espeakng-loader wheel"
            )
        lib.espeak_SetSynthCallback(callback)
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice '{voice}'")
        for param, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch), (PARAM_RANGE, pitch_range)):
            lib.espeak_SetParameter(param, int(value), 0)
        lib.espeak_ng_SetRandSeed(seed)
        _LIBC.srand(ctypes.c_uint(seed))  # espeak-ng also draws noise from libc rand()
        buf = text.encode()
        err = lib.espeak_Synth(buf, len(buf) + 1, 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak-ng could not synthesise '{text}' with voice '{voice}' (error {err})")
    finally:
        if sr == ESPEAK_SR:
            lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)  # unload so the next call starts from espeak-ng's initial state
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


def _trim(wav):
    """Drop leading/trailing samples below TRIM_THRESHOLD of the peak."""
    loud = np.nonzero(np.abs(wav) > TRIM_THRESHOLD * np.abs(wav).max())[0]
    return wav[loud[0] : loud[-1] + 1]


def render(word, voice, rate, pitch, pitch_range, peak, seed):
    """-> float32 (16000,) clip: synthesised, resampled to 16 kHz, trimmed, centred and peak-normalised."""
    for _ in range(MAX_TRIES):
        raw = synthesize(word, voice, rate, pitch, pitch_range, seed)
        if raw.size == 0 or not raw.any():
            raise RuntimeError(f"espeak-ng returned silence for '{word}' with voice '{voice}'")
        speech = _trim(resample_audio(raw.astype(np.float64) / 32768.0, ESPEAK_SR))
        if len(speech) <= MAX_SPEECH:
            break
        rate = int(rate * len(speech) / MAX_SPEECH) + 5  # speak faster until the word fits
    else:
        raise RuntimeError(f"'{word}' with voice '{voice}' stays longer than {MAX_SPEECH} samples even at rate {rate}")
    return fit_length(torch.from_numpy(speech * (peak / np.abs(speech).max())).float(), CLIP_SAMPLES).numpy()


def _speaker_id(voice):
    return hashlib.sha1(voice.encode()).hexdigest()[:8]


def plan_corpus(seed=0, n_speakers=100, per_word=2, valid_frac=0.1, test_frac=0.1):
    """-> (speakers, clips): the random choices of the corpus, no audio.

    speakers: list of dicts (id, voice, variant, pitch, range, rate, split); clips: list of dicts (rel, word,
    voice, split, rate, pitch, range, peak, seed). Speakers are distinct accent+variant voices; variants are split
    into test / valid / train with the given fractions (at least one variant each when the fraction is > 0).
    """
    rng = random.Random(seed)
    pairs = [(a, v) for a in ACCENTS for v in [""] + variants()]
    if not 3 <= n_speakers <= len(pairs):
        raise ValueError(f"n_speakers must be in 3..{len(pairs)} (accent x variant voices), got {n_speakers}")
    if per_word < 1:
        raise ValueError(f"per_word must be >= 1, got {per_word}")
    chosen = sorted(rng.sample(pairs, n_speakers))
    used = sorted({v for _, v in chosen})
    rng.shuffle(used)
    n_test = max(1, round(test_frac * len(used))) if test_frac > 0 else 0
    n_valid = max(1, round(valid_frac * len(used))) if valid_frac > 0 else 0
    if n_test + n_valid >= len(used):
        raise ValueError(
            f"{n_speakers} speakers use only {len(used)} voice variants: too few to split "
            f"{valid_frac}/{test_frac} by variant with training data left; use more speakers"
        )
    split_of = {v: "test" for v in used[:n_test]} | {v: "valid" for v in used[n_test : n_test + n_valid]}
    speakers = []
    for accent, variant in chosen:
        voice = f"{accent}+{variant}" if variant else accent
        speakers.append(
            dict(
                id=_speaker_id(voice),
                voice=voice,
                variant=variant or "default",
                pitch=rng.randint(*PITCH_RANGE),
                range=rng.randint(*INTONATION_RANGE),
                rate=rng.randint(*RATE_RANGE),
                split=split_of.get(variant, "train"),
            )
        )
    assert len({s["id"] for s in speakers}) == len(speakers), "speaker id collision"
    clips = []
    for s in speakers:
        for word in SC09_CLASSES:
            for k in range(per_word):
                clips.append(
                    dict(
                        rel=f"{word}/{s['id']}_nohash_{k}.wav",
                        word=word,
                        voice=s["voice"],
                        split=s["split"],
                        rate=round(s["rate"] * rng.uniform(1 - RATE_JITTER, 1 + RATE_JITTER)),
                        pitch=min(100, max(0, s["pitch"] + rng.randint(-PITCH_JITTER, PITCH_JITTER))),
                        range=s["range"],
                        peak=rng.uniform(*PEAK_RANGE),
                        seed=rng.getrandbits(31),
                    )
                )
    return speakers, clips


def _write_clip(out, clip):
    save_wav(
        out / clip["rel"],
        render(clip["word"], clip["voice"], clip["rate"], clip["pitch"], clip["range"], clip["peak"], clip["seed"]),
    )


def make_digits_corpus(
    out_dir,
    seed=0,
    n_speakers=100,
    per_word=2,
    valid_frac=0.1,
    test_frac=0.1,
    overwrite=False,
    progress=True,
    workers=None,
):
    """Write the corpus to out_dir (see module doc) -> number of clips written.

    workers: processes synthesising clips (default: one per CPU). Every clip depends only on its own planned
    settings and seed, so the corpus is the same for any number of workers.
    """
    out = Path(out_dir)
    existing = [out / w for w in SC09_CLASSES if (out / w).exists()] + [
        p for p in (out / "validation_list.txt", out / "testing_list.txt") if p.exists()
    ]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} already holds a corpus ({existing[0]}); choose an empty folder or pass "
            "--overwrite (removes the .wav files of the ten word folders first)"
        )
    speakers, clips = plan_corpus(seed, n_speakers, per_word, valid_frac, test_frac)
    for w in SC09_CLASSES:
        (out / w).mkdir(parents=True, exist_ok=True)
        for old in (out / w).glob("*.wav"):
            old.unlink()
    # fork: the workers inherit the loaded modules; espeak-ng itself is loaded per clip inside each worker
    with ProcessPoolExecutor(workers or os.cpu_count(), mp_context=multiprocessing.get_context("fork")) as pool:
        done = pool.map(partial(_write_clip, out), clips, chunksize=8)
        for _ in tqdm(done, total=len(clips), desc=f"synthesising digits -> {out}", unit="clip", disable=not progress):
            pass
    for split, name in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        write_text(
            out / name, "".join(f"{c['rel']}\n" for c in sorted(clips, key=lambda c: c["rel"]) if c["split"] == split)
        )
    table = io.StringIO()
    w = csv.DictWriter(table, fieldnames=list(speakers[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(speakers)
    write_text(out / "speakers.csv", table.getvalue())
    return len(clips)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Synthesise the built-in spoken-digits corpus (SC09 layout).")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (the corpus is a function of the arguments)")
    ap.add_argument("--speakers", type=int, default=100, help="number of distinct voices (3..840)")
    ap.add_argument("--per_word", type=int, default=2, help="repetitions of each word per speaker")
    ap.add_argument("--valid_frac", type=float, default=0.1, help="fraction of voice variants for validation")
    ap.add_argument("--test_frac", type=float, default=0.1, help="fraction of voice variants for testing")
    ap.add_argument("--overwrite", action="store_true", help="replace a corpus already in --out")
    ap.add_argument("--workers", type=int, default=None, help="synthesis processes (default: one per CPU)")
    args = ap.parse_args(argv)
    try:
        n = make_digits_corpus(
            args.out,
            args.seed,
            args.speakers,
            args.per_word,
            args.valid_frac,
            args.test_frac,
            args.overwrite,
            workers=args.workers,
        )
    except (FileExistsError, ValueError) as e:
        raise SystemExit(f"density.digits: {e}") from None
    print(f"wrote {n} clips to {args.out}; next: python split_data.py --root_path {args.out} --sc09_only true")


if __name__ == "__main__":
    cli.command(main)
