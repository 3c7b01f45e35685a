"""/metrics in the Prometheus text exposition format (version 0.0.4), written by hand."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from operator import attrgetter

from server.registry import LiveSession

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _stat(counter: str) -> Callable[[LiveSession], float | None]:
    return attrgetter(f"session.stats.{counter}")


# name, type, help, value of a session (None: not known yet, the sample is left out)
_PER_SESSION = (
    ("avatar_session_fps", "gauge", "Output video frames per second over the last seconds.", lambda s: s.fps),
    ("avatar_session_latency_ms", "gauge", "First speech sample in to its frame out, latest utterance.",
     _stat("last_latency_ms")),
    ("avatar_session_frames_total", "counter", "Output frames sent.", _stat("ticks")),
    ("avatar_session_dropped_frames_total", "counter", "Rendered frames that arrived after their tick was played.",
     _stat("dropped_frames")),
    ("avatar_session_repeated_frames_total", "counter", "Frames shown again because the next was not rendered in time.",
     _stat("repeated_frames")),
    ("avatar_session_late_ticks_total", "counter", "Ticks sent late (then caught up) because the event loop was busy.",
     _stat("late_ticks")),
    ("avatar_session_skipped_ticks_total", "counter", "Ticks never sent because the event loop stalled too long.",
     _stat("skipped_ticks")),
    ("avatar_session_rendered_frames_total", "counter", "Faces rendered by the engine.",
     _stat("rendered_frames")),
    ("avatar_session_inference_seconds_total", "counter", "Time spent in engine render calls.",
     _stat("render_seconds")),
    ("avatar_session_inference_fps", "gauge", "Frames rendered per second of render time.",
     _stat("inference_fps")),
    ("avatar_session_speaking", "gauge", "1 while the avatar speaks.", lambda s: int(s.session.speaking)),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float | None]]) -> list[str]:
    """One metric: its HELP and TYPE lines and a line per (labels, value) sample; None values are left out."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
            *(f"{name}{labels} {_number(v)}" for labels, v in samples if v is not None)]


def render(sessions: Iterable[LiveSession], max_sessions: int, engine: str) -> str:
    sessions = list(sessions)
    lines = [
        *_family("avatar_sessions", "gauge", "Sessions open now.", [("", len(sessions))]),
        *_family("avatar_max_sessions", "gauge", "Session limit (--max_session).", [("", max_sessions)]),
        *_family("avatar_engine_info", "gauge", "The lip-sync engine in use.",
                 [(f'{{engine="{_escape(engine)}"}}', 1)]),
    ]
    labels = [(s, f'{{session="{s.tag}",avatar="{_escape(s.session.avatar.avatar_id)}"}}') for s in sessions]
    for name, kind, help_text, value in _PER_SESSION:
        lines += _family(name, kind, help_text, [(label, value(s)) for s, label in labels])
    return "\n".join(lines) + "\n"
