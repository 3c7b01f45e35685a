"""One session's real-time pipeline: audio framing, tick scheduling, inference worker, output clock.

Engine-agnostic: it knows engines only through `engines.base.Engine`, and nothing of HTTP or WebRTC.
"""
