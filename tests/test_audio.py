"""Audio around the recogniser on real recordings: G.711, WAV, resampling, VAD, end-of-utterance."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from assistant.voice.audio import (
    Audio,
    AudioError,
    load_for_asr,
    mulaw_decode,
    mulaw_encode,
    read_wav,
    resample,
    telephone_copy,
    write_wav,
)
from assistant.voice.closed_set import Hypothesis, rank, similarity
from assistant.voice.postprocess import core_form, int_to_chinese, spoken_form
from assistant.voice.vad import EndpointDetector, NoInput, SpeechStarted, UtteranceEnded, speech_span

AUDIO = Path(__file__).parent / "audio"
SENTENCE = AUDIO / "aishell1_BAC009S0002W0123.wav"  # 3.9 s, 也成为地方政府的眼中钉
SENTENCE_8K = AUDIO / "aishell1_BAC009S0002W0123_8k_ulaw.wav"  # the same through sox as 8 kHz μ-law
FRAME = 160  # Twilio Media Streams: 20 ms of 8 kHz μ-law


# --- G.711 ----------------------------------------------------------------------------------------
def test_mulaw_reference_points():
    # ITU-T G.711: 0xFF and 0x7F are the two zeros, 0x00 / 0x80 the extremes (±32124).
    assert mulaw_decode(b"\xff\x7f").tolist() == [0.0, 0.0]
    assert mulaw_decode(b"\x00\x80").tolist() == pytest.approx([-32124 / 32768, 32124 / 32768])


def test_mulaw_encode_inverts_decode_for_every_code():
    codes = bytes(c for c in range(256) if c != 0x7F)  # 0x7F (-0) encodes as 0xFF (+0)
    assert mulaw_encode(mulaw_decode(codes)) == codes


def test_mulaw_round_trip_error_is_within_g711_steps():
    x = np.sin(np.linspace(0, 200 * np.pi, 8000)) * 0.5
    y = mulaw_decode(mulaw_encode(x))
    assert np.max(np.abs(x - y)) < 0.5 * 0.04  # log steps: < 4 % of the amplitude


# --- WAV ------------------------------------------------------------------------------------------
def test_reads_real_16k_pcm():
    audio = read_wav(SENTENCE)
    assert audio.rate == 16000 and not audio.telephone
    assert audio.seconds == pytest.approx(3.865, abs=0.01)
    assert 0.01 < np.abs(audio.samples).max() <= 1.0


def test_reads_sox_made_8k_mulaw_like_a_phone_line_delivers():
    phone = read_wav(SENTENCE_8K)
    assert phone.rate == 8000 and phone.telephone
    assert phone.seconds == pytest.approx(3.865, abs=0.01)
    wide = read_wav(SENTENCE)
    narrow = phone.to_16k().samples
    n = min(len(narrow), len(wide.samples))
    # Same recording: strongly correlated once both are band-limited the same way.
    reference = resample(resample(wide.samples, 16000, 8000), 8000, 16000)[:n]
    corr = np.corrcoef(narrow[:n], reference)[0, 1]
    assert corr > 0.95


def test_write_and_read_back_pcm_and_mulaw():
    wide = read_wav(SENTENCE)
    back = read_wav(write_wav(wide.samples, 16000))
    assert np.max(np.abs(back.samples - wide.samples)) < 1e-4
    phone = read_wav(write_wav(resample(wide.samples, 16000, 8000), 8000, mulaw=True))
    assert phone.rate == 8000 and phone.telephone
    assert phone.seconds == pytest.approx(wide.seconds, abs=0.01)


def test_telephone_copy_is_bytes_of_8k_mulaw():
    wide = read_wav(SENTENCE)
    data = telephone_copy(wide.samples)
    assert len(data) == pytest.approx(wide.seconds * 8000, abs=2)


def test_stereo_and_extensible_24bit_are_mixed_down():
    t = np.arange(1600) / 16000
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), np.zeros_like(t)
    pcm = (np.stack([left, right], 1) * (1 << 23)).astype(np.int32).reshape(-1)
    raw = b"".join(struct.pack("<i", int(v))[:3] for v in pcm)
    guid = struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    fmt = struct.pack("<HHIIHH", 0xFFFE, 2, 16000, 16000 * 6, 6, 24) + struct.pack("<HHI", 22, 24, 3) + guid
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(raw)) + raw
    audio = read_wav(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert audio.rate == 16000 and len(audio.samples) == 1600
    assert np.max(np.abs(audio.samples - left / 2)) < 1e-3


@pytest.mark.parametrize("data", [b"", b"not a wav file at all", b"RIFF\x04\x00\x00\x00WAVE"])
def test_garbage_is_refused_with_audio_error(data):
    with pytest.raises(AudioError):
        read_wav(data)


def test_resample_keeps_pitch_and_length():
    t = np.arange(8000) / 8000
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    up = resample(tone, 8000, 16000)
    assert len(up) == 16000
    peak_hz = np.argmax(np.abs(np.fft.rfft(up))) * 16000 / len(up)
    assert peak_hz == pytest.approx(1000, abs=2)


# --- VAD ------------------------------------------------------------------------------------------
def test_speech_span_finds_the_sentence_and_nothing_in_silence():
    audio = load_for_asr(SENTENCE)
    span = speech_span(audio)
    assert span.found and 0.2 < span.start < 1.0 and 3.0 < span.end <= audio.seconds
    quiet = Audio(np.random.default_rng(0).normal(0, 0.002, 32000).astype(np.float32), 16000)
    assert not speech_span(quiet).found


def _frames(samples_16k: np.ndarray) -> list[bytes]:
    data = telephone_copy(samples_16k)
    return [data[i : i + FRAME] for i in range(0, len(data), FRAME)]


def _run(detector: EndpointDetector, frames: list[bytes]) -> list:
    return [event for frame in frames for event in detector.feed_mulaw(frame)]


def test_endpoint_detector_on_twilio_frames_finds_two_utterances():
    speech = load_for_asr(SENTENCE).samples
    silence = np.zeros(16000, dtype=np.float32)
    stream = np.concatenate([silence, speech, silence, speech, silence, silence])
    events = _run(EndpointDetector(8000, min_silence_ms=700), _frames(stream))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SpeechStarted", "UtteranceEnded", "SpeechStarted", "UtteranceEnded"]
    first, second = events[1], events[3]
    assert first.reason == "silence" and first.audio.rate == 8000 and first.audio.telephone
    # The utterance holds the speech (≈2.8 s by VAD) plus lead-in, not the seconds of silence around it.
    assert 2.5 < first.audio.seconds < 4.2
    assert events[0].at == pytest.approx(1.0 + 0.63, abs=0.25)  # barge-in as soon as speech starts
    assert second.at > first.at + 3


def test_endpoint_detector_reports_no_input_on_a_silent_line():
    noise = np.random.default_rng(1).normal(0, 0.003, 16000 * 4).astype(np.float32)
    events = _run(EndpointDetector(8000, no_input_seconds=3.0), _frames(noise))
    assert len(events) == 1 and isinstance(events[0], NoInput)
    assert events[0].at == pytest.approx(3.0, abs=0.1)


def test_no_input_is_counted_from_the_end_of_the_prompt():
    """While a 5 s prompt plays the line is quiet too; the senior's 3 s start when it ends."""
    quiet = _frames(np.random.default_rng(1).normal(0, 0.003, 16000 * 10).astype(np.float32))
    detector = EndpointDetector(8000, no_input_seconds=6.0)
    assert _run(detector, quiet[:150]) == []  # 3 s into the prompt
    detector.restart_no_input_clock()  # the prompt's mark came back
    assert _run(detector, quiet[150:400]) == []  # 5 s after the prompt: still waiting
    events = _run(detector, quiet[400:])  # 5 … 7 s after it
    assert len(events) == 1 and isinstance(events[0], NoInput)
    assert events[0].at == pytest.approx(3.0 + 6.0, abs=0.1)


def test_a_click_is_not_barge_in():
    click = np.zeros(16000 * 2, dtype=np.float32)
    click[8000:8000 + 480] = np.random.default_rng(2).normal(0, 0.5, 480)  # 30 ms burst
    events = _run(EndpointDetector(8000, no_input_seconds=10), _frames(click))
    assert not any(isinstance(e, SpeechStarted) for e in events)


def test_long_speech_is_cut_at_max_length():
    speech = load_for_asr(SENTENCE).samples
    stream = np.concatenate([speech, speech, speech])  # no pause long enough to end it
    detector = EndpointDetector(16000, max_seconds=4.0, min_silence_ms=2000)
    events = [e for i in range(0, len(stream), 320) for e in detector.feed(stream[i : i + 320])]
    ended = [e for e in events if isinstance(e, UtteranceEnded)]
    assert ended and ended[0].reason == "max_length"
    assert ended[0].audio.seconds == pytest.approx(4.0 + 0.3, abs=0.3)


# --- text around the recogniser ------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "spoken"), [
    ("設定29度", "设定二十九度"),
    ("橋下垂直淨空15米，該項目於2011年8月完工", "桥下垂直净空十五米该项目于二零一一年八月完工"),
    ("3.5公里", "三点五公里"),
    ("50%的人", "百分之五十的人"),
    ("302室", "三零二室"),
    ("电话13800138000", "电话一三八零零一三八零零零"),
])
def test_spoken_form(raw, spoken):
    assert spoken_form(raw) == spoken


@pytest.mark.parametrize(("raw", "core"), [
    ("幺三八 零零幺三 八零零零", "13800138000"),
    ("我的電話是138-0013-8000。", "我的电话是13800138000。"),
    ("设定二十九度", "设定二十九度"),  # a quantity stays for the NLU's number parser
])
def test_core_form(raw, core):
    assert core_form(raw) == core


def test_int_to_chinese():
    assert [int_to_chinese(n) for n in (10, 15, 105, 1010, 12000, 100000)] == \
        ["十", "十五", "一百零五", "一千零一十", "一万二千", "十万"]


def test_closed_set_text_matching_respects_negation_and_homophones():
    assert rank([Hypothesis("对的对的", -0.2, 4)], ["对", "不对"])[0].phrase == "对"
    assert rank([Hypothesis("不对", -0.2, 2)], ["对", "不对"])[0].phrase == "不对"
    assert rank([Hypothesis("我要办老年正", -0.3, 6)], ["老年证", "居住证明", "高龄津贴"])[0].phrase == "老年证"
    assert rank([Hypothesis("5", -0.1, 1)], list("0123456789"))[0].phrase == "5"
    assert rank([Hypothesis("幺", -0.1, 1)], list("0123456789"))[0].phrase == "1"
    off = rank([Hypothesis("今天天气很好", -0.2, 6)], ["是", "不是"])[0]
    assert off.confidence < 0.3
    assert similarity("事", "是") == 1.0
