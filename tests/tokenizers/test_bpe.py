"""Specification of the byte-level BPE caption tokenizer (paper §2.2)."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch

from dalle_zero.tokenizers.bpe import PAD_ID, BPETokenizer, TokenizerConfig, normalize_caption

COLOURS = ["red", "green", "blue", "yellow", "purple"]
SHAPES = ["square", "circle", "triangle", "star"]
CAPTIONS = [f"a {c} {s} on a {b} background" for c in COLOURS for s in SHAPES for b in ["white", "black"]]
ODD = [
    "",
    "   ",
    "😀🎉 grinning face",
    "中文字符 テスト 한국어",
    "control\x00chars\x07and\x1bescapes\u200b",
    "Zürich Café NAÏVE",
    "<pad> is just text",
    "&amp; html entities",
    "x" * 5000,
    "👩‍👩‍👧‍👦 family: woman, woman, girl, boy 🏳️‍🌈",
]


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return BPETokenizer.train(CAPTIONS * 2, vocab_size=400, text_seq_len=24)


def test_train_reserves_pad_id_zero_and_counts_it_in_vocab_size(tok):
    assert tok.pad_id == PAD_ID == 0
    assert 257 < tok.vocab_size <= 400
    ids = tok.encode(CAPTIONS + ODD)
    assert ids.max() < tok.vocab_size


def test_train_stops_at_requested_vocab_size():
    small = BPETokenizer.train(CAPTIONS * 2, vocab_size=270, text_seq_len=8)
    assert small.vocab_size == 270


def test_encode_returns_fixed_length_zero_padded_long_tensor(tok):
    ids = tok.encode(["a red square", "a blue circle on a white background"])
    assert ids.dtype == torch.long and ids.shape == (2, 24)
    n = (ids != 0).sum(1)
    assert (n > 0).all()
    for row, k in zip(ids, n):
        assert (row[:k] != 0).all() and (row[k:] == 0).all()  # pads only after the caption
    assert tok.encode("a red square").shape == (1, 24)


def test_no_text_ever_encodes_to_the_pad_id(tok):
    for text in ODD + ["<pad>", "<PAD><pad>"]:
        ids = tok.tokenize([text])[0]
        assert PAD_ID not in ids, text


def test_encode_decode_round_trips_normalized_text(tok):
    for text in CAPTIONS + ["a Red Square", "Zürich café", "😀 中文", "<pad> is just text"]:
        assert tok.decode(tok.encode(text)[0]) == normalize_caption(text)


def test_encoding_is_case_insensitive(tok):
    assert torch.equal(tok.encode("A RED Square"), tok.encode("a red square"))
    assert tok.decode(tok.encode("A RED Square")[0]) == "a red square"


def test_normalization_applies_ftfy_and_nfc():
    assert normalize_caption("caf\u0065\u0301") == "caf\u00e9"  # NFC composes e + combining acute
    assert normalize_caption("&amp; Ã©") == "& é"  # ftfy: html entity, mojibake
    assert normalize_caption("  A\tRed\n\n square ") == "a red square"


def test_decode_skips_pads_and_accepts_batches(tok):
    ids = tok.encode(["a red square", "a green star"])
    assert tok.decode(ids) == ["a red square", "a green star"]
    assert tok.decode([0, 0] + tok.tokenize(["red"])[0] + [0]) == "red"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_empty_emoji_cjk_control_and_long_captions_encode_without_crashing(tok):
    ids = tok.encode(ODD)
    assert ids.shape == (len(ODD), tok.text_seq_len)
    assert (ids[0] == 0).all() and (ids[1] == 0).all()  # empty and blank captions are all pads
    longer = tok.with_text_seq_len(80)  # unmerged emoji and CJK take several byte tokens each
    for text in (ODD[2], ODD[3], ODD[-1]):
        assert longer.decode(longer.encode(text)[0]) == normalize_caption(text)


def test_truncation_warns_once_with_the_count_so_far(caplog):
    tok = BPETokenizer.train(CAPTIONS, vocab_size=300, text_seq_len=4)
    with caplog.at_level(logging.WARNING, logger="dalle_zero.tokenizers.bpe"):
        ids = tok.encode(["a red square on a white background", "red", "a green star on a black background"])
        tok.encode(["a blue circle on a white background"])
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1
    assert "2 caption(s)" in warnings[0].getMessage()
    assert tok.truncated_count == 3
    assert ids.shape == (3, 4) and (ids[0] != 0).all()
    assert torch.equal(ids[0], torch.tensor(tok.tokenize(["a red square on a white background"])[0][:4]))


def test_dropout_changes_tokens_sometimes_but_decodes_to_the_same_text(tok):
    plain = tok.encode(CAPTIONS)
    g = torch.Generator().manual_seed(0)
    changed = 0
    for _ in range(5):
        dropped = tok.encode(CAPTIONS, dropout=True, generator=g)
        changed += int((dropped != plain).any(1).sum())
        lengths = (dropped != 0).sum(1)
        assert (lengths >= (plain != 0).sum(1)).all()  # dropout only splits, never merges more
        assert tok.decode(dropped) == [normalize_caption(c) for c in CAPTIONS]
    assert changed > 0


def test_dropout_leaves_the_keep_whole_words_as_plain_bpe_spells_them(tok):
    def pieces(caption: str, **kw) -> list[str]:
        return [tok.decode([int(i)]) for i in tok.encode(caption, **kw)[0] if int(i)]

    caption = "a purple triangle on a white background"
    plain = pieces(caption)
    split_words = set()
    for seed in range(40):
        dropped = pieces(caption, dropout=True, seed=seed, keep_whole=["purple", "triangle"])
        assert "".join(dropped) == "".join(plain)  # the same text, in pieces or not
        i = plain.index("purple")
        assert dropped[dropped.index("purple") : dropped.index("purple") + 2] == plain[i : i + 2]
        split_words |= {w for w in ("white", "background") if w not in dropped}
    assert split_words == {"white", "background"}  # the other words do come in pieces


def test_keep_whole_matches_words_outside_ascii():
    # the pre-tokenizer writes "zürich" as byte-letters; the kept word is matched in that form
    tok = BPETokenizer.train(CAPTIONS + ["zürich café"] * 6, vocab_size=400, text_seq_len=24)
    first = [tok.encode("zürich café", dropout=True, seed=s)[0][:1] for s in range(20)]
    kept = [tok.encode("zürich café", dropout=True, seed=s, keep_whole=["Zürich"])[0][:1] for s in range(20)]
    whole = tok.encode("zürich")[0][:1]
    assert any(not torch.equal(f, whole) for f in first)
    assert all(torch.equal(k, whole) for k in kept)


def test_what_dropout_remembers_between_captions_never_changes_an_encoding(tok, monkeypatch):
    # A fresh tokenizer per caption remembers nothing; the shared one remembers pre-tokens and whole
    # words, and with a memo of two entries it also forgets them again, many times over.
    import dalle_zero.tokenizers.bpe as bpe

    monkeypatch.setattr(bpe, "_MEMO_SIZE", 2)
    shared = tok.with_dropout(0.3)
    keeps = [(), ("purple",), ("purple", "triangle"), ("white", "on", "a")]
    for seed in range(3):
        for i, caption in enumerate(CAPTIONS + ODD):
            keep = keeps[i % len(keeps)]
            fresh = BPETokenizer(tok._tok, dataclasses.replace(tok.config, dropout_p=0.3))
            want = fresh.tokenize([caption], dropout=True, seed=seed * 1000 + i, keep_whole=keep)
            assert shared.tokenize([caption], dropout=True, seed=seed * 1000 + i, keep_whole=keep) == want
    assert len(shared._pre_token_memo) <= 2 and len(shared._word_ids_memo) <= 2


def test_dropout_is_reproducible_from_a_seed_and_leaves_plain_encoding_unchanged(tok):
    before = tok.encode(CAPTIONS)
    a = tok.encode(CAPTIONS, dropout=True, seed=7)
    b = tok.encode(CAPTIONS, dropout=True, seed=7)
    c = tok.encode(CAPTIONS, dropout=True, generator=torch.Generator().manual_seed(7))
    d = tok.encode(CAPTIONS, dropout=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(c, d)
    assert not torch.equal(a, tok.encode(CAPTIONS, dropout=True, seed=8))
    assert torch.equal(tok.encode(CAPTIONS), before)


def test_python_bpe_without_dropout_matches_the_library(tok):
    # The seeded dropout path reimplements BPE merges; at (almost) zero dropout it must agree exactly.
    no_drop = BPETokenizer(tok._tok, dataclasses.replace(tok.config, dropout_p=1e-300))
    texts = CAPTIONS + ODD + ["aaaa aaa redred squaresquare", "a  red\tsquare\n"]
    assert no_drop.tokenize(texts, dropout=True, seed=0) == tok.tokenize(texts)


def test_save_load_gives_identical_encodings(tok, tmp_path):
    tok.save_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert config["model_type"] == "tokenizer" and config["format_version"] == 1
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    loaded = BPETokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.vocab_size == tok.vocab_size and loaded.text_seq_len == tok.text_seq_len
    texts = CAPTIONS + ODD
    assert torch.equal(loaded.encode(texts), tok.encode(texts))
    assert torch.equal(loaded.encode(texts, dropout=True, seed=3), tok.encode(texts, dropout=True, seed=3))


def test_save_replaces_an_existing_folder_atomically(tok, tmp_path):
    tok.save_pretrained(tmp_path / "tok")
    other = BPETokenizer.train(CAPTIONS, vocab_size=280, text_seq_len=8)
    other.save_pretrained(tmp_path / "tok")
    assert BPETokenizer.from_pretrained(tmp_path / "tok").vocab_size == 280
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_too_small_vocab_size_is_a_clear_error():
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 257"):
        BPETokenizer.train(CAPTIONS, vocab_size=100, text_seq_len=8)


def test_bad_inputs_are_clear_errors(tok, tmp_path):
    with pytest.raises(ValueError, match="zero captions"):
        BPETokenizer.train([], vocab_size=300)
    with pytest.raises(ValueError, match="text_seq_len"):
        BPETokenizer.train(CAPTIONS, vocab_size=300, text_seq_len=0)
    with pytest.raises(ValueError, match="list of strings"):
        tok.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="either generator or seed"):
        tok.encode("x", dropout=True, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="dropout_p"):
        TokenizerConfig(vocab_size=300, dropout_p=1.0)


def test_loading_a_missing_or_wrong_folder_is_a_clear_error(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        BPETokenizer.from_pretrained(tmp_path / "nope")
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        BPETokenizer.from_pretrained(tmp_path / "tok")
    tok.save_pretrained(tmp_path / "tok2")
    cfg = json.loads((tmp_path / "tok2" / "config.json").read_text())
    (tmp_path / "tok2" / "config.json").write_text(json.dumps({**cfg, "model_type": "clip"}))
    with pytest.raises(ValueError, match="model_type is 'clip', expected 'tokenizer'"):
        BPETokenizer.from_pretrained(tmp_path / "tok2")
    (tmp_path / "tok2" / "config.json").write_text(json.dumps({**cfg, "vocab_size": cfg["vocab_size"] + 1}))
    with pytest.raises(ValueError, match="config says vocab_size"):
        BPETokenizer.from_pretrained(tmp_path / "tok2")
