"""Speech for the voice and kiosk channels: audio decoding, VAD, recognisers, closed-set choices, TTS.

Core code: no web framework, no channel. Entry points:
- `engines.shared_recognizer(VoiceConfig.from_config(config))` → Recognizer | None
- `recognizer.DecodePool(rec).transcribe(audio, Expectation(...), timeout=…)` off the request thread
- `vad.EndpointDetector` for streamed frames (barge-in, end of utterance)
- `tts_select.build_tts(config, data_dir).speak(text)` → cached WAV or <Say> text
- `pipeline.run_voice_turn(...)` for a whole typed turn with coded errors
"""
