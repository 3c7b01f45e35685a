"""Voices and brains: streaming TTS backends, LLM chat with sentence splitting,
the OpenAI Realtime API client and voice input (VAD + ASR).

Everything that produces audio yields float32 mono numpy arrays at 16 kHz
(``core.audio.SAMPLE_RATE``) as soon as they are available. Submodules are
imported explicitly (``from voices.tts import PiperTTS``) so that using one
backend never imports the heavy dependencies of another. ``voices.options``
holds each backend's typed options and builds the backend from them.
"""
