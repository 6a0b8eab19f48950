"""Audio in the form the recognisers want: mono float32 at 16 kHz.

Phone lines deliver 8 kHz G.711 μ-law (Twilio Media Streams: 20 ms frames of 160 bytes; recordings
as WAV format tag 7); kiosks deliver 16 kHz PCM. Everything here is numpy/scipy, no sox or ffmpeg,
and no `audioop` (removed in Python 3.13).
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

TARGET_RATE = 16_000
TELEPHONE_RATE = 8_000

_FMT_PCM, _FMT_FLOAT, _FMT_ALAW, _FMT_MULAW, _FMT_EXTENSIBLE = 1, 3, 6, 7, 0xFFFE


class AudioError(ValueError):
    """Audio that cannot be decoded (not RIFF/WAVE, unknown encoding, truncated)."""


@dataclass(frozen=True)
class Audio:
    """Mono samples in [-1, 1] at `rate` Hz. `telephone` marks narrow-band (≤8 kHz) origin."""

    samples: np.ndarray
    rate: int
    telephone: bool = False

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate if self.rate else 0.0

    def to_16k(self) -> Audio:
        if self.rate == TARGET_RATE:
            return self
        return Audio(resample(self.samples, self.rate, TARGET_RATE), TARGET_RATE, self.telephone)


# --- G.711 ---------------------------------------------------------------------------------------
def _mulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.uint8)
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    linear = np.where(sign != 0, 0x84 - magnitude, magnitude - 0x84)
    return (linear / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.uint8) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = (a & 0x0F).astype(np.int32)
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    linear = np.where(sign != 0, magnitude, -magnitude)
    return (linear / 32768.0).astype(np.float32)


_MULAW = _mulaw_table()
_ALAW = _alaw_table()


def mulaw_decode(data: bytes) -> np.ndarray:
    """G.711 μ-law bytes → float32 samples (one byte per sample)."""
    return _MULAW[np.frombuffer(data, dtype=np.uint8)]


def mulaw_encode(samples: np.ndarray) -> bytes:
    """float samples → G.711 μ-law bytes (what a phone line or Media Stream carries)."""
    # Sun's g711.c in the 14-bit domain (as audioop did): arithmetic shift, then bias 33.
    pcm = np.clip(np.floor(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int32) >> 2
    sign = np.where(pcm < 0, 0x80, 0)
    magnitude = np.minimum(np.where(pcm < 0, -pcm, pcm), 8158) + 0x21
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 5, 0, 7)
    mantissa = (magnitude >> (exponent + 1)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


# --- resampling ----------------------------------------------------------------------------------
def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased): 8 k → 16 k is an exact 2/1, 44.1 k → 16 k is 160/441."""
    if src_rate == dst_rate:
        return np.asarray(samples, dtype=np.float32)
    g = gcd(src_rate, dst_rate)
    out = resample_poly(np.asarray(samples, dtype=np.float32), dst_rate // g, src_rate // g)
    return out.astype(np.float32)


def telephone_copy(samples_16k: np.ndarray) -> bytes:
    """A 16 kHz signal as a phone line would deliver it: 8 kHz μ-law bytes (for tests and evaluation)."""
    return mulaw_encode(resample(samples_16k, TARGET_RATE, TELEPHONE_RATE))


# --- WAV -----------------------------------------------------------------------------------------
def read_wav(source: str | Path | bytes) -> Audio:
    """Decode a RIFF/WAVE file: PCM 8/16/24/32-bit, float32, μ-law, A-law (also WAVE_FORMAT_EXTENSIBLE).

    Multi-channel input is mixed down. The rate is kept; call `.to_16k()` for the recognisers.
    `telephone` is set for 8 kHz input and G.711 encodings.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError("not a RIFF/WAVE file")
    fmt: tuple[int, int, int, int] | None = None
    payload: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise AudioError("truncated fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == _FMT_EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack("<H", body[24:26])[0]  # first two bytes of the SubFormat GUID
            fmt = (tag, channels, rate, bits)
        elif cid == b"data":
            payload = body  # a streaming writer may leave size = 0xFFFFFFFF: slicing takes what is there
        pos += 8 + size + (size & 1)
    if fmt is None or payload is None:
        raise AudioError("WAV without fmt or data chunk")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate <= 0:
        raise AudioError("bad channel count or sample rate")
    samples = _decode_samples(payload, tag, bits)
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    telephone = rate <= TELEPHONE_RATE or tag in (_FMT_MULAW, _FMT_ALAW)
    return Audio(samples.astype(np.float32), rate, telephone)


def _decode_samples(payload: bytes, tag: int, bits: int) -> np.ndarray:
    if tag == _FMT_MULAW:
        return mulaw_decode(payload)
    if tag == _FMT_ALAW:
        return _ALAW[np.frombuffer(payload, dtype=np.uint8)]
    if tag == _FMT_FLOAT and bits == 32:
        return np.frombuffer(payload[: len(payload) // 4 * 4], dtype="<f4").astype(np.float32)
    if tag == _FMT_PCM:
        if bits == 8:
            return (np.frombuffer(payload, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
        if bits == 16:
            return np.frombuffer(payload[: len(payload) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
        if bits == 24:
            raw = np.frombuffer(payload[: len(payload) // 3 * 3], dtype=np.uint8).reshape(-1, 3).astype(np.int32)
            value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
            value = np.where(value & 0x800000, value - (1 << 24), value)
            return value.astype(np.float32) / float(1 << 23)
        if bits == 32:
            return np.frombuffer(payload[: len(payload) // 4 * 4], dtype="<i4").astype(np.float32) / float(1 << 31)
    raise AudioError(f"unsupported WAV encoding (format tag {tag}, {bits} bits)")


def write_wav(samples: np.ndarray, rate: int, *, mulaw: bool = False) -> bytes:
    """Mono WAV bytes: 16-bit PCM, or μ-law (format tag 7, 8 bits) as telephone recordings are."""
    if mulaw:
        payload, tag, bits, extra = mulaw_encode(samples), _FMT_MULAW, 8, b"\x00\x00"
    else:
        pcm = np.clip(np.asarray(samples, dtype=np.float64) * 32768.0, -32768, 32767).astype("<i2")
        payload, tag, bits, extra = pcm.tobytes(), _FMT_PCM, 16, b""
    block = bits // 8
    fmt = struct.pack("<HHIIHH", tag, 1, rate, rate * block, block, bits) + extra
    out = io.BytesIO()
    riff_size = 4 + (8 + len(fmt)) + (8 + len(payload)) + (len(payload) & 1)
    out.write(b"RIFF" + struct.pack("<I", riff_size) + b"WAVE")
    out.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
    out.write(b"data" + struct.pack("<I", len(payload)) + payload)
    if len(payload) & 1:
        out.write(b"\x00")
    return out.getvalue()


def load_for_asr(source: str | Path | bytes) -> Audio:
    """A WAV file or bytes, decoded and resampled to 16 kHz mono."""
    return read_wav(source).to_16k()


def rms_dbfs(samples: np.ndarray) -> float:
    if len(samples) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * np.log10(max(rms, 1e-6))


def normalise_level(samples: np.ndarray, target_dbfs: float = -20.0, max_gain_db: float = 30.0) -> np.ndarray:
    """Bring quiet phone audio up to a steady level (peak-limited); the model is level-sensitive."""
    gain_db = min(max_gain_db, target_dbfs - rms_dbfs(samples))
    gain = 10 ** (gain_db / 20.0)
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    if peak * gain > 0.99:
        gain = 0.99 / peak
    return (np.asarray(samples, dtype=np.float32) * gain).astype(np.float32)
