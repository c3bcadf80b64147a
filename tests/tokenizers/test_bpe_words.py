"""Specification of the tokenizer's word list: which words its training captions contained."""

from __future__ import annotations

import json

import pytest

from dalle_zero.tokenizers.bpe import WORDS_FILE, BPETokenizer, caption_words

CAPTIONS = ["A Red STAR!", "a blue heart, noto style", "빨간 하트 (emoji)", "smiley_face 2"]


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return BPETokenizer.train(CAPTIONS * 2, vocab_size=300, text_seq_len=16)


def test_training_records_the_lower_cased_words_of_its_captions(tok):
    assert tok.known_words == {
        "a", "red", "star", "blue", "heart", "noto", "style", "빨간", "하트", "emoji", "smiley_face", "2"
    }  # fmt: skip


def test_caption_words_are_normalised_and_split_on_what_is_not_a_letter_or_digit():
    assert caption_words("  A Zebra-UNICORN, 3 하트!! 😀 ") == ["a", "zebra", "unicorn", "3", "하트"]
    assert caption_words("😀 !!") == []


def test_unknown_words_are_the_unseen_words_once_in_caption_order(tok):
    assert tok.unknown_words("a zebra, a RED unicorn and a zebra") == ["zebra", "unicorn", "and"]
    assert tok.unknown_words("A red star") == []


def test_the_word_list_round_trips_through_the_folder_as_a_sorted_json_list(tok, tmp_path):
    tok.save_pretrained(tmp_path / "tok")
    saved = json.loads((tmp_path / "tok" / WORDS_FILE).read_text())
    assert saved == sorted(tok.known_words)
    assert BPETokenizer.from_pretrained(tmp_path / "tok").known_words == tok.known_words


def test_a_folder_without_a_word_list_flags_no_words(tok, tmp_path):
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / WORDS_FILE).unlink()
    loaded = BPETokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.known_words is None and loaded.unknown_words("a zebra unicorn") == []
    loaded.save_pretrained(tmp_path / "again")
    assert not (tmp_path / "again" / WORDS_FILE).exists()


@pytest.mark.parametrize(
    "content, message", [('{"a": 1}', "got a dict"), ('["a", 3]', "found 3"), ("[not json", "not valid JSON")]
)
def test_a_malformed_word_list_is_a_one_line_error_naming_the_file(tok, tmp_path, content, message):
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / WORDS_FILE).write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        BPETokenizer.from_pretrained(tmp_path / "tok")
    assert WORDS_FILE in str(info.value) and "\n" not in str(info.value)


def test_a_copy_with_another_length_keeps_the_word_list(tok):
    assert tok.with_text_seq_len(8).known_words == tok.known_words


def test_copies_with_another_length_or_dropout_keep_the_word_list(tok):
    assert tok.with_text_seq_len(24).known_words == tok.known_words
    dropping = tok.with_dropout(0.3)
    assert dropping.config.dropout_p == 0.3 and tok.config.dropout_p != 0.3
    assert dropping.known_words == tok.known_words and dropping.unknown_words("a zebra") == ["zebra"]
    assert tok.with_dropout(tok.config.dropout_p) is tok
