"""Held-out copies of the speech_dev clips in harder conditions, built with sox (+ numpy) at bench time.

    python bench/asr_conditions.py --out /tmp/asr-conditions   # build every condition, print the files

Conditions (all deterministic: fixed seed, sox -R):
  clean        the file as it is (16 kHz)
  telephone    band 300–3400 Hz, 8 kHz G.711 μ-law (sox sinc + -r 8000 -e u-law)
  pink_N       pink noise (sox synth) at N dB SNR, N = 20, 10, 5
  babble_N     four other clips of the clip's own half mixed together, at N dB SNR
  reverb       far field: level drop of 15 dB, then sox reverb (large room, 30 ms pre-delay)
  dialling     a caller pressing keys: DTMF key tones (real frequency pairs) before, during and after the
               speech, brown handset noise at 15 dB SNR, then the telephone band and μ-law

SNR = active speech level (RMS over 20 ms frames within 40 dB of the loudest frame, a light form of
ITU-T P.56) over noise RMS; the gain for the exact SNR comes from those two RMS values.

Probes (no speech at all, for the "never a confident answer on noise" check): silence with a faint
line hiss, pink noise, DTMF keys over line noise (telephone), babble.

Generated audio lives in a cache directory (default: the system temp dir), never in the repository.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from assistant.voice.audio import read_wav, write_wav  # noqa: E402

SEED = 16  # issue 16
RATE = 16_000
RECIPE = "v1"  # bump when a recipe changes: the cache key includes it
CONDITIONS = ("clean", "telephone", "pink_20", "pink_10", "pink_5", "babble_20", "babble_10", "babble_5",
              "reverb", "dialling")
PROBES = ("silence", "pink", "dtmf", "babble")
# DTMF: row (low) and column (high) frequencies of each key, as on every phone keypad (ITU-T Q.23).
DTMF_LOW = {"1": 697, "2": 697, "3": 697, "4": 770, "5": 770, "6": 770, "7": 852, "8": 852, "9": 852,
            "*": 941, "0": 941, "#": 941}
DTMF_HIGH = {"1": 1209, "2": 1336, "3": 1477, "4": 1209, "5": 1336, "6": 1477, "7": 1209, "8": 1336, "9": 1477,
             "*": 1209, "0": 1336, "#": 1477}
NOISE_SECONDS = 90


def sox(*args: str | Path) -> None:
    subprocess.run(["sox", "-R", "-V1", *map(str, args)], check=True)


def rng_for(*parts: str) -> np.random.Generator:
    """One generator per (condition, clip): the same audio whatever order things are built in."""
    digest = hashlib.sha256("|".join((str(SEED), *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def load16(path: Path) -> np.ndarray:
    return read_wav(path).to_16k().samples.astype(np.float64)


def save16(samples: np.ndarray, path: Path) -> Path:
    path.write_bytes(write_wav(np.asarray(samples, dtype=np.float32), RATE))
    return path


# --- levels ------------------------------------------------------------------------------------
def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0


def active_rms(x: np.ndarray, frame: int = 320, floor_db: float = 40.0) -> float:
    """RMS of the frames within `floor_db` of the loudest (speech level without its pauses)."""
    n = len(x) // frame
    if n == 0:
        return rms(x)
    power = np.mean(np.square(x[: n * frame].reshape(n, frame)), axis=1)
    keep = power >= power.max() * 10 ** (-floor_db / 10)
    return float(np.sqrt(power[keep].mean()))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that active_rms(speech) / rms(noise) is exactly `snr_db`; a peak
    over full scale scales the sum (both parts alike, so the SNR stays)."""
    noise = noise[: len(speech)]
    gain = active_rms(speech) / (rms(noise) * 10 ** (snr_db / 20))
    out = speech + gain * noise
    peak = float(np.max(np.abs(out)))
    return out * (0.95 / peak) if peak > 0.95 else out


# --- noise sources -----------------------------------------------------------------------------
def synth_noise(kind: str, cache: Path) -> np.ndarray:
    """NOISE_SECONDS of sox `synth` noise (pinknoise / brownnoise), made once per cache."""
    path = cache / f"_{kind}.wav"
    if not path.exists():
        tmp = path.with_suffix(".tmp.wav")
        sox("-n", "-r", RATE, "-c", 1, "-b", 16, tmp, "synth", NOISE_SECONDS, kind, "gain", "-n", "-6")
        tmp.rename(path)
    return load16(path)


def noise_slice(source: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    start = int(rng.integers(0, len(source) - length)) if len(source) > length else 0
    return np.resize(source[start:], length)


def babble(length: int, others: Sequence[Path], rng: np.random.Generator, talkers: int = 4) -> np.ndarray:
    """`talkers` other clips, each at the same active level and a random start, looped to length."""
    chosen = rng.choice(len(others), size=min(talkers, len(others)), replace=False)
    out = np.zeros(length)
    for index in chosen:
        voice = load16(others[int(index)])
        voice = voice / max(active_rms(voice), 1e-9)
        out += np.roll(np.resize(voice, length), int(rng.integers(0, length)))
    return out


def dtmf(keys: str, rng: np.random.Generator, level: float) -> np.ndarray:
    """Key presses: each tone pair 90–200 ms (as long as a finger holds the key), gaps 70–160 ms."""
    parts = []
    for key in keys:
        n = int(RATE * rng.uniform(0.09, 0.2))
        t = np.arange(n) / RATE
        tone = np.sin(2 * np.pi * DTMF_LOW[key] * t) + 0.8 * np.sin(2 * np.pi * DTMF_HIGH[key] * t)  # twist
        ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.005 * RATE))  # 5 ms edges
        parts += [tone * ramp * level / rms(tone), np.zeros(int(RATE * rng.uniform(0.07, 0.16)))]
    return np.concatenate(parts)


def random_keys(rng: np.random.Generator, low: int, high: int) -> str:
    return "".join(rng.choice(list("0123456789*#"), size=int(rng.integers(low, high + 1))))


def add_at(base: np.ndarray, part: np.ndarray, start: int) -> None:
    end = min(len(base), start + len(part))
    base[start:end] += part[: end - start]


# --- conditions --------------------------------------------------------------------------------
def to_telephone(src: Path, dst: Path) -> Path:
    sox(src, "-r", 8000, "-e", "u-law", "-b", 8, dst, "sinc", "300-3400")
    return dst


def dialling(speech: np.ndarray, brown: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    level = active_rms(speech)
    before, after = random_keys(rng, 3, 6), random_keys(rng, 2, 4)
    lead = dtmf(before, rng, level)
    tail = dtmf(after, rng, level)
    gap = lambda lo, hi: int(RATE * rng.uniform(lo, hi))  # noqa: E731
    head = gap(0.3, 0.8)
    out = np.zeros(head + len(lead) + gap(0.3, 0.6) + len(speech) + gap(0.2, 0.5) + len(tail) + gap(0.3, 0.6))
    add_at(out, lead, head)
    at = head + len(lead) + gap(0.3, 0.6)
    add_at(out, speech, at)
    for _ in range(int(rng.integers(1, 3))):  # a key pressed while talking (half the level: a thumb on the pad)
        add_at(out, dtmf(random_keys(rng, 1, 1), rng, level * 0.5), at + int(rng.integers(0, len(speech))))
    add_at(out, tail, at + len(speech) + gap(0.2, 0.5))
    noise = noise_slice(brown, len(out), rng)
    noise *= level / (rms(noise) * 10 ** (15 / 20))  # handset noise 15 dB under the speech
    out += noise
    peak = float(np.max(np.abs(out)))
    return out * (0.95 / peak) if peak > 0.95 else out


def build(condition: str, clip: Path, others: Sequence[Path], cache: Path) -> Path:
    """The clip in `condition` as a WAV file in `cache` (built once; the name holds the recipe)."""
    cache.mkdir(parents=True, exist_ok=True)
    if condition == "clean":
        return clip
    out = cache / f"{RECIPE}-{condition}-{clip.stem}.wav"
    if out.exists():
        return out
    tmp = out.with_name(out.stem + ".tmp.wav")
    rng = rng_for(condition, clip.name)
    if condition == "telephone":
        to_telephone(clip, tmp)
    elif condition.startswith(("pink_", "babble_")):
        kind, snr = condition.split("_")
        speech = load16(clip)
        if kind == "pink":
            noise = noise_slice(synth_noise("pinknoise", cache), len(speech), rng)
        else:
            noise = babble(len(speech), [o for o in others if o != clip], rng)
        save16(mix_at_snr(speech, noise, float(snr)), tmp)
    elif condition == "reverb":
        sox(clip, tmp, "gain", -15, "pad", 0, 0.3, "reverb", 80, 50, 100, 100, 30)
    elif condition == "dialling":
        wide = cache / f"{out.stem}.16k.wav"
        save16(dialling(load16(clip), synth_noise("brownnoise", cache), rng), wide)
        to_telephone(wide, tmp)
        wide.unlink()
    else:
        raise ValueError(f"unknown condition {condition}")
    tmp.rename(out)
    return out


def probe(kind: str, index: int, pool: Sequence[Path], cache: Path, seconds: float = 3.0) -> Path:
    """No speech at all: silence (faint hiss), pink noise, DTMF keys over line noise, babble."""
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{RECIPE}-probe-{kind}-{index}.wav"
    if out.exists():
        return out
    rng = rng_for("probe", kind, str(index))
    n = int(seconds * RATE)
    level = 10 ** (rng.uniform(-32, -18) / 20)  # a speech-like level, different for each probe
    if kind == "silence":
        samples = noise_slice(synth_noise("pinknoise", cache), n, rng)
        samples *= 10 ** (-62 / 20) / rms(samples)
    elif kind == "pink":
        samples = noise_slice(synth_noise("pinknoise", cache), n, rng)
        samples *= level / rms(samples)
    elif kind == "babble":
        samples = babble(n, pool, rng)
        samples *= level / rms(samples)
    elif kind == "dtmf":
        samples = np.zeros(n)
        keys = dtmf(random_keys(rng, 4, 8), rng, level)
        add_at(samples, keys, int(rng.integers(0, max(1, n - len(keys)))))
        hiss = noise_slice(synth_noise("brownnoise", cache), n, rng)
        samples += hiss * level / (rms(hiss) * 10 ** (25 / 20))
    else:
        raise ValueError(f"unknown probe {kind}")
    tmp = out.with_name(out.stem + ".tmp.wav")
    save16(samples, tmp)
    if kind == "dtmf":  # key tones come down a phone line
        wide = tmp.with_name(tmp.stem + ".16k.wav")
        tmp.rename(wide)
        to_telephone(wide, tmp)
        wide.unlink()
    tmp.rename(out)
    return out


# --- the split ---------------------------------------------------------------------------------
def source_of(name: str) -> str:
    return name.split("_")[0]  # aishell1, aishell1sample, aishell3, fleurs, funasrnano, qwen3asr


def split(names: Sequence[str]) -> dict[str, list[str]]:
    """Sort by (source, sha256 of the file name) and deal alternately: tuning, confirmation, tuning …
    Sorting by source first spreads each source (speaker) over both halves."""
    key = lambda name: (source_of(name), hashlib.sha256(name.encode()).hexdigest())  # noqa: E731
    ordered = sorted(names, key=key)
    return {"tuning": sorted(ordered[0::2]), "confirmation": sorted(ordered[1::2])}


def load_split(path: Path, names: Sequence[str]) -> dict[str, list[str]]:
    """The committed split, checked against the rule (a changed set must be re-split on purpose)."""
    import yaml

    recorded = yaml.safe_load(path.read_text(encoding="utf-8"))
    halves = {half: sorted(recorded[half]) for half in ("tuning", "confirmation")}
    if halves != split(names):
        raise SystemExit(f"{path} does not follow its rule for these {len(names)} files: regenerate it")
    return halves


def default_cache() -> Path:
    return Path(tempfile.gettempdir()) / "asr-conditions"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/work/shared/speech_dev/mandarin"))
    parser.add_argument("--out", type=Path, default=default_cache())
    parser.add_argument("--fresh", action="store_true", help="delete the cache first")
    args = parser.parse_args()
    if args.fresh:
        shutil.rmtree(args.out, ignore_errors=True)
    clips = sorted(args.dir.glob("*.wav"))
    halves = load_split(ROOT / "bench" / "asr_split.yml", [c.name for c in clips])
    for names in halves.values():
        half = [args.dir / name for name in names]
        for condition in CONDITIONS:
            for clip in half:
                print(build(condition, clip, half, args.out))
    for kind in PROBES:
        for index in range(3):
            print(probe(kind, index, clips, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
