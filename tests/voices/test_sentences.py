import pytest

from voices.sentences import SentenceSplitter


def split(text: str, step: int = 1, **kwargs) -> list[str]:
    """Feed ``text`` in deltas of ``step`` characters, then flush."""
    s = SentenceSplitter(**kwargs)
    out = []
    for i in range(0, len(text), step):
        out += s.feed(text[i : i + step])
    return out + s.flush()


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_english_sentences_any_delta_size(step):
    text = "Hello there, my friend. How are you today? I am fine! Thanks; see you."
    assert split(text, step, min_chars=5) == [
        "Hello there, my friend.",
        "How are you today?",
        "I am fine!",
        "Thanks;",
        "see you.",
    ]


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_chinese_sentences(step):
    text = "你好，我是你的数字人助手。今天天气很好！我们去公园散步吧？好的；走吧…"
    assert split(text, step, min_chars=3) == [
        "你好，我是你的数字人助手。",
        "今天天气很好！",
        "我们去公园散步吧？",
        "好的；",
        "走吧…",
    ]


def test_decimals_and_dotted_tokens_do_not_split():
    assert split("Pi is 3.14159 roughly. Visit example.com for more.", 2, min_chars=3) == [
        "Pi is 3.14159 roughly.",
        "Visit example.com for more.",
    ]


def test_decimal_split_across_deltas_waits_for_the_next_character():
    s = SentenceSplitter(min_chars=3)
    assert s.feed("It costs 3.") == []  # "3." could be "3.5"
    assert s.feed("5 dollars. Ok") == ["It costs 3.5 dollars."]
    assert s.flush() == ["Ok"]


def test_abbreviations_and_initials():
    text = "Mr. Smith met Dr. Brown, e.g. at noon. J. K. Rowling wrote it. The end."
    assert split(text, 3, min_chars=3) == [
        "Mr. Smith met Dr. Brown, e.g. at noon.",
        "J. K. Rowling wrote it.",
        "The end.",
    ]


def test_short_fragments_merge_with_the_next_sentence():
    assert split("Hi. Ok. This is a longer sentence. Bye.", 1, min_chars=10) == [
        "Hi. Ok. This is a longer sentence.",
        "Bye.",
    ]  # flush returns the short tail


def test_min_chars_zero_emits_every_sentence():
    assert split("Yes. No! Why?", 1, min_chars=0) == ["Yes.", "No!", "Why?"]


def test_newlines_split_and_are_not_spoken():
    assert split("First line of text\n\nSecond line here\nthird", 5, min_chars=3) == [
        "First line of text",
        "Second line here",
        "third",
    ]


def test_short_line_merges_across_newline_as_a_space():
    assert split("Title\nThe body sentence is here.", 1, min_chars=10) == ["Title The body sentence is here."]


def test_punctuation_runs_and_closing_quotes_stay_with_the_sentence():
    assert split('He said "Stop!" Then left?! 「你好。」然后呢', 1, min_chars=3) == [
        'He said "Stop!"',
        "Then left?!",
        "「你好。」",
        "然后呢",
    ]


def test_mixed_chinese_and_english():
    assert split("我喜欢Python.它很好用。OK!", 1, min_chars=3) == ["我喜欢Python.", "它很好用。", "OK!"]


def test_sentence_is_emitted_as_soon_as_the_next_character_arrives():
    s = SentenceSplitter(min_chars=3)
    assert s.feed("The first sentence.") == []
    assert s.feed(" ") == ["The first sentence."]
    assert s.feed("你好。") == []
    assert s.feed("再") == ["你好。"]


def test_long_text_without_terminators_is_cut_at_a_clause_mark():
    text = ("word " * 10 + "then a comma, " + "and more words " * 20).strip()
    out = split(text, 4, min_chars=5, max_chars=80)
    assert out[0] == ("word " * 10 + "then a comma,").strip()
    assert all(len(s) <= 80 for s in out)
    assert " ".join(out) == text


def test_long_text_without_spaces_is_cut_at_max_chars():
    text = "字" * 250
    out = split(text, 10, min_chars=5, max_chars=100)
    assert [len(s) for s in out] == [100, 100, 50]


def test_whitespace_only_and_empty():
    assert split("   \n  ", 1) == []
    assert SentenceSplitter().flush() == []


def test_flush_resets_for_reuse():
    s = SentenceSplitter(min_chars=3)
    s.feed("Half a sent")
    assert s.flush() == ["Half a sent"]
    assert s.feed("New one. ") == ["New one."]


def test_bad_limits_are_rejected():
    with pytest.raises(ValueError, match="max_chars"):
        SentenceSplitter(min_chars=10, max_chars=5)
