"""Where sentences end: one rule for speech, generation and answers."""

from __future__ import annotations

import pytest

from assistant.speech.sentences import ends_sentence, join_sentences, split_sentences, whole_sentences


def test_sentences_split_after_their_end_and_at_line_breaks() -> None:
    assert split_sentences("Turned on the light. It is 21.5 degrees!\nAnything else?") == [
        "Turned on the light.", "It is 21.5 degrees!", "Anything else?"]


@pytest.mark.parametrize("text", ["Dr. Smith is in.", "Come at 5 p.m. sharp.",
                                  "J. R. R. Tolkien wrote it."])
def test_an_abbreviation_or_an_initial_does_not_end_a_sentence(text: str) -> None:
    assert split_sentences(text) == [text]


def test_runs_of_marks_and_closing_quotes_end_one_sentence() -> None:
    assert split_sentences('Really?! She said "yes." Then') == ["Really?!", 'She said "yes."',
                                                                "Then"]


def test_pieces_with_nothing_to_say_are_dropped() -> None:
    assert split_sentences("Hello. ... !  \n  \n") == ["Hello."]


def test_whole_sentences_cut_what_runs_on() -> None:
    assert whole_sentences("It is warm. Wear a light") == "It is warm."
    assert whole_sentences("Meet Dr. Who at noon. And") == "Meet Dr. Who at noon."
    assert whole_sentences("Line one.\nLine two is cut") == "Line one."
    assert whole_sentences("no end at all") == ""


def test_a_text_ends_a_sentence_by_its_last_mark() -> None:
    assert ends_sentence("Done.") and ends_sentence('He said "go!"  ')
    assert not ends_sentence("It is 21.5") and not ends_sentence("")


def test_joined_pieces_each_end_a_sentence() -> None:
    assert join_sentences(["It is sunny", " ", "Wear a hat!", "Enjoy"]) == \
        "It is sunny. Wear a hat! Enjoy"
