"""/metrics in the Prometheus text exposition format (version 0.0.4), written by hand."""
from __future__ import annotations

from collections.abc import Iterable

from server.registry import LiveSession

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name, type, help, value of a session (None: not known yet, the sample is left out)
_PER_SESSION = (
    ("avatar_session_fps", "gauge", "Output video frames per second over the last seconds.", lambda s: s.fps),
    ("avatar_session_latency_ms", "gauge", "First speech sample in to its frame out, latest utterance.",
     lambda s: s.session.stats.last_latency_ms),
    ("avatar_session_frames_total", "counter", "Output frames sent.", lambda s: s.session.stats.ticks),
    ("avatar_session_dropped_frames_total", "counter", "Rendered frames that arrived after their tick was played.",
     lambda s: s.session.stats.dropped_frames),
    ("avatar_session_repeated_frames_total", "counter", "Frames shown again because the next was not rendered in time.",
     lambda s: s.session.stats.repeated_frames),
    ("avatar_session_late_ticks_total", "counter", "Ticks sent late (then caught up) because the event loop was busy.",
     lambda s: s.session.stats.late_ticks),
    ("avatar_session_skipped_ticks_total", "counter", "Ticks never sent because the event loop stalled too long.",
     lambda s: s.session.stats.skipped_ticks),
    ("avatar_session_rendered_frames_total", "counter", "Faces rendered by the engine.",
     lambda s: s.session.stats.rendered_frames),
    ("avatar_session_inference_seconds_total", "counter", "Time spent in engine render calls.",
     lambda s: s.session.stats.render_seconds),
    ("avatar_session_inference_fps", "gauge", "Frames rendered per second of render time.",
     lambda s: s.session.stats.inference_fps),
    ("avatar_session_speaking", "gauge", "1 while the avatar speaks.", lambda s: int(s.session.speaking)),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def render(sessions: Iterable[LiveSession], max_sessions: int, engine: str) -> str:
    sessions = list(sessions)
    lines = [
        "# HELP avatar_sessions Sessions open now.", "# TYPE avatar_sessions gauge", f"avatar_sessions {len(sessions)}",
        "# HELP avatar_max_sessions Session limit (--max_session).", "# TYPE avatar_max_sessions gauge",
        f"avatar_max_sessions {max_sessions}",
        "# HELP avatar_engine_info The lip-sync engine in use.", "# TYPE avatar_engine_info gauge",
        f'avatar_engine_info{{engine="{_escape(engine)}"}} 1',
    ]
    for name, kind, help_text, value in _PER_SESSION:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for s in sessions:
            v = value(s)
            if v is not None:
                lines.append(f'{name}{{session="{_escape(s.id)}",avatar="{_escape(s.session.avatar.avatar_id)}"}} '
                             f"{_number(v)}")
    return "\n".join(lines) + "\n"
