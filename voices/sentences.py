"""Streaming sentence splitter: LLM text deltas in, speakable sentences out.

A sentence ends at Chinese/Japanese terminators (。！？；…), at Western ones
(. ! ? ;) followed by whitespace or the end of the text, or at a newline.
A Western '.' inside a token (3.14, example.com) or after a common
abbreviation or an initial (Mr., e.g., J. K.) does not end a sentence.
Fragments shorter than ``min_chars`` are merged with what follows, and a
run of text longer than ``max_chars`` without any terminator is cut at the
last clause mark (，, 、 : ：) or space so that speech can start early.
"""

from __future__ import annotations

import re

_CJK_ENDS = "。！？；…"
_WESTERN_ENDS = ".!?;"
_ENDS = _CJK_ENDS + _WESTERN_ENDS
_CLOSERS = "\"'”’」』）)]】》"
_CLAUSE_MARKS = "，,、：:"
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "a.m",
        "p.m",
        "u.s",
        "no",
        "approx",
        "dept",
        "fig",
    }
)
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")
_NEWLINE_RUN = re.compile(r"\s*\n\s*")


def _is_cjk(ch: str) -> bool:
    return "\u2e80" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" or "\uff00" <= ch <= "\uffef"


def _is_abbreviation(text_before_dot: str) -> bool:
    match = _WORD_BEFORE.search(text_before_dot)
    if not match:
        return False
    word = match.group(1)
    return word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper())


class SentenceSplitter:
    def __init__(self, min_chars: int = 10, max_chars: int = 150) -> None:
        if min_chars < 0 or max_chars <= min_chars:
            raise ValueError(f"need 0 <= min_chars < max_chars, got {min_chars}, {max_chars}")
        self.min_chars, self.max_chars = min_chars, max_chars
        self._buf = ""
        self._scan = 0  # text before this index holds no undecided boundary

    def feed(self, delta: str) -> list[str]:
        """Add a text delta; return the sentences it completed."""
        self._buf += delta
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of text: return what is left (even if shorter than min_chars)."""
        out = self._drain(final=True)
        rest = self._clean(self._buf)
        self._buf, self._scan = "", 0
        return out + ([rest] if rest else [])

    def _drain(self, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            end = self._next_boundary(final)
            forced = end is None
            if end is None:
                end = self._forced_cut()
                if end is None:
                    return out
            sentence = self._clean(self._buf[:end])
            if forced or len(sentence) >= self.min_chars:
                if sentence:
                    out.append(sentence)
                self._buf, self._scan = self._buf[end:], 0
            else:
                self._scan = end  # too short: keep it, it merges with the next one

    def _next_boundary(self, final: bool) -> int | None:
        """End index of the next sentence boundary at or after ``_scan``;
        None if there is none yet (also when the next character decides)."""
        buf, i, n = self._buf, self._scan, len(self._buf)
        while i < n:
            ch = buf[i]
            if ch == "\n":
                return i + 1
            if ch not in _ENDS:
                i += 1
                continue
            j = i + 1
            while j < n and (buf[j] in _ENDS or buf[j] in _CLOSERS):
                j += 1
            if j == n and not final:
                self._scan = i  # more punctuation, a closer or a digit may follow
                return None
            run = buf[i:j]
            if any(c in _CJK_ENDS for c in run):
                return j
            follows = buf[j] if j < n else " "
            ends_here = follows.isspace() or _is_cjk(follows)
            if ends_here and not (run.rstrip(_CLOSERS) == "." and _is_abbreviation(buf[:i])):
                return j
            i = j
        self._scan = n
        return None

    def _forced_cut(self) -> int | None:
        if len(self._buf) <= self.max_chars:
            return None
        window = self._buf[: self.max_chars]
        for marks in (_CLAUSE_MARKS, " "):
            cut = max(window.rfind(m) for m in marks) + 1
            if cut > 0 and len(self._clean(window[:cut])) >= self.min_chars:
                return cut
        return self.max_chars

    @staticmethod
    def _clean(text: str) -> str:
        return _NEWLINE_RUN.sub(" ", text).strip()
