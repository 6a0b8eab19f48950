"""Speech for the voice and kiosk channels: audio decoding, VAD, recognisers, closed-set choices, TTS.

Core code: no web framework, no channel. Entry points:
- `engines.shared_recognizer(VoiceConfig.from_config(config))` → Recognizer | None
- `recognizer.DecodePool(rec).transcribe(audio, Expectation(...), timeout=…)` off the request thread
- `vad.EndpointDetector` for streamed frames (barge-in, end of utterance)
- `tts_select.build_tts(config, data_dir).speak(text)` → cached WAV or <Say> text
- `phrases.heard_answer(transcript, …)` → the text a channel hands to the core, and how sure it is

A voice turn is assembled by its channel (kiosk, Twilio voice, Media Streams): recognise with the pool,
hand the text to `Assistant.turn`, speak the reply; each channel words its own recovery prompts in
domain.yml / ivr_flows.
"""
