"""The output stage: every 40 ms one video frame and its two 20 ms audio frames, produced together.

Audio is scheduled to ticks at input time and never waits for video, so the output keeps real time even
when rendering falls behind: a speech tick whose frame is not ready shows the last frame again (counted),
and a frame that arrives after its tick is dropped (counted). Video frame k is always shown with exactly
the audio of tick k. Switches between the avatar's own frames and an action clip or the idle clip are crossfaded;
the mouth starting or stopping to speak on the avatar's own frames is not.
"""

from __future__ import annotations

import collections
import enum
import time
from collections.abc import Callable

import cv2
import numpy as np

from core.arrays import Image
from core.events import Event
from core.items import Kind, OutputTick, Source, TickAudio, VideoResult
from core.units import TICK_SAMPLES
from musetalk.avatar import Avatar
from pipeline.actions import ActionClip
from pipeline.stats import SessionStats
from pipeline.worker import TickQueue

SILENCE = np.zeros(TICK_SAMPLES, np.float32)


class Picture(enum.Enum):
    AVATAR = "the avatar's own frames"
    ACTION = "an action clip"
    IDLE_CLIP = "the idle clip"


# A repeated frame belongs to speech: the mouth is still speaking.
SOURCE_CATEGORY = {
    Source.SPEECH: Source.SPEECH,
    Source.REPEAT: Source.SPEECH,
    Source.IDLE: Source.IDLE,
    Source.ACTION: Source.ACTION,
}
# Speech and idle frames are the same picture (the avatar's own frames, the mouth moving or not); an action clip is
# another. Only a switch of picture is crossfaded: a fade when the mouth starts would damp its first opening
# frames and make the lips lag the sound.
CATEGORY_PICTURE = {Source.SPEECH: Picture.AVATAR, Source.IDLE: Picture.AVATAR, Source.ACTION: Picture.ACTION}


class Output:
    def __init__(
        self,
        avatar: Avatar,
        video_in: TickQueue[VideoResult],
        stats: SessionStats,
        tick_time: Callable[[int], float],
        crossfade_ticks: int = 2,
    ) -> None:
        self.avatar = avatar
        self.video_in = video_in
        self.stats = stats
        self.tick_time = tick_time
        self.crossfade_ticks = crossfade_ticks
        self.turn = 0
        self._audio: collections.deque[TickAudio] = collections.deque()
        self._action: tuple[ActionClip, int, int] | None = None  # clip, audiotype, first tick
        self._last_frame: Image | None = None
        self._last_category = Source.IDLE
        self._last_picture = Picture.AVATAR
        self.idle_clip: ActionClip | None = None  # a custom idle video (LiveTalking's audiotype 1), looped
        self._fade_from: Image | None = None
        self._fade_left = 0

    # -- control (event loop) ------------------------------------------------------------------------------
    def schedule(self, tick_audio: TickAudio) -> None:
        self._audio.append(tick_audio)

    def interrupt(self, turn: int) -> int:
        """Drop everything of older turns; the next tick shows the idle frame (or the action clip playing)."""
        self.turn = turn
        dropped = len(self._audio) + self.video_in.purge_turns_before(turn)
        self._audio.clear()
        return dropped

    def start_action(self, clip: ActionClip, audiotype: int, tick: int) -> None:
        self._action = (clip, audiotype, tick)

    def switch_avatar(self, avatar: Avatar, video_in: TickQueue[VideoResult]) -> None:
        """Idle and speech frames come from `avatar` (rendered into `video_in`) from the next tick on; the
        picture crossfades from the last frame shown (scaled to the new size if it differs)."""
        self.avatar, self.video_in, self._action, self.idle_clip = avatar, video_in, None, None
        last = self._last_frame
        if last is not None:
            h, w = avatar.frames.shape[1:3]
            if last.shape[:2] != (h, w):
                last = np.asarray(cv2.resize(np.asarray(last), (w, h), interpolation=cv2.INTER_AREA), np.uint8)
            self._fade_from, self._fade_left = last, self.crossfade_ticks

    @property
    def action(self) -> int | None:
        return self._action[1] if self._action else None

    @property
    def scheduled_ticks(self) -> int:
        return len(self._audio)

    @property
    def speaking(self) -> bool:
        return any(not t.silent for t in self._audio) or self._last_category is Source.SPEECH

    # -- the tick ------------------------------------------------------------------------------------------
    def tick(self, k: int, wait_for_video: float = 0.0) -> OutputTick:
        if self._action is not None and k - self._action[2] >= self._action[0].n_ticks:
            self._action = None  # its ticks were skipped (the clock stalled past its end): it is over
        tick_audio = self._take_audio(k)
        video = self._take_video(k, wait_for_video if tick_audio is not None and not tick_audio.silent else 0.0)
        events: list[Event] = []
        if tick_audio is not None:
            self._action = None  # speech (or its pauses) takes over from an action clip
            audio, kind = tick_audio.pcm, (Kind.SILENCE if tick_audio.silent else Kind.SPEECH)
            events = [e for f in tick_audio.frames for e in f.events]
            if video is not None:
                frame, source = video.frame, Source.SPEECH
                if tick_audio.seg_pos == 0 or self._last_category is not Source.SPEECH:
                    self.stats.record_latency(self.tick_time(k) - tick_audio.t_in)
            elif tick_audio.silent:
                frame, source = self._own(k), Source.IDLE
            else:
                self.stats.add(repeated_frames=1)
                last = self._last_frame  # set whenever the last category is speech
                frame, source = (
                    (last, Source.REPEAT)
                    if last is not None and self._last_category is Source.SPEECH
                    else (self._own(k), Source.IDLE)
                )
        elif self._action is not None and k >= self._action[2]:
            clip, _, start = self._action
            i = k - start
            frame, audio, kind, source = clip.frame(i), clip.tick_audio(i), Kind.ACTION, Source.ACTION
            if i + 1 >= clip.n_ticks:
                self._action = None
        else:
            frame, audio, kind, source = self._idle(k), SILENCE, Kind.SILENCE, Source.IDLE
        category = SOURCE_CATEGORY[source]
        frame = self._crossfade(frame, category, self._picture(category, tick_audio is not None))
        self._count(source)
        self._last_frame = frame
        return OutputTick(tick=k, frame=frame, audio=audio, kind=kind, source=source, events=events, turn=self.turn)

    def _own(self, k: int) -> Image:
        frame: Image = self.avatar.frames[self.avatar.cycle_index(k)]  # (numpy types an element as Any)
        return frame

    def _idle(self, k: int) -> Image:
        """What a tick shows when nothing is spoken or played: the idle clip, looped, or the avatar's own frame."""
        clip = self.idle_clip
        return clip.frame(k % clip.n_ticks) if clip is not None else self._own(k)

    def _picture(self, category: Source, in_speech: bool) -> Picture:
        """The picture a tick shows (crossfaded when it changes): the avatar's frames (also in the pauses of
        speech), an action clip, or the idle clip."""
        if category is Source.IDLE and self.idle_clip is not None and not in_speech:
            return Picture.IDLE_CLIP
        return CATEGORY_PICTURE[category]

    def _take_audio(self, k: int) -> TickAudio | None:
        q = self._audio
        while q and (q[0].tick < k or q[0].turn != self.turn):
            q.popleft()
            self.stats.add(dropped_stale=1)
        return q.popleft() if q and q[0].tick == k else None

    def _take_video(self, k: int, wait: float) -> VideoResult | None:
        q = self.video_in
        deadline = time.monotonic() + wait
        with q.cond:
            while True:
                head = q.peek()
                while head is not None and (head.tick < k or head.turn != self.turn):
                    q.popleft()
                    if head.turn != self.turn:
                        self.stats.add(dropped_stale=1)
                    else:
                        self.stats.add(dropped_frames=1)
                    head = q.peek()
                if head is not None and head.tick == k:
                    q.popleft()
                    q.cond.notify_all()
                    return head
                remaining = deadline - time.monotonic()
                if head is not None or remaining <= 0:
                    return None
                # Only in stepped (test / offline) mode: block until the worker delivers tick k.
                q.cond.wait(remaining)

    def _crossfade(self, frame: Image, category: Source, picture: Picture) -> Image:
        if picture != self._last_picture and self._last_frame is not None:
            self._fade_from, self._fade_left = self._last_frame, self.crossfade_ticks
        self._last_category, self._last_picture = category, picture
        if self._fade_left <= 0 or self._fade_from is None or self._fade_from.shape != frame.shape:
            return frame
        n = self.crossfade_ticks
        alpha = (n - self._fade_left + 1) / (n + 1)  # weight of the new frame
        self._fade_left -= 1
        return np.asarray(
            cv2.addWeighted(np.asarray(self._fade_from), 1.0 - alpha, np.asarray(frame), alpha, 0.0), np.uint8
        )  # uint8 in, uint8 out: only the type changes

    def _count(self, source: Source) -> None:
        self.stats.add(ticks=1)
        if source is Source.SPEECH:
            self.stats.add(speech_frames=1)
        elif source is Source.ACTION:
            self.stats.add(action_frames=1)
        elif source is Source.IDLE:
            self.stats.add(idle_frames=1)
