"""The in-house evaluator model: shapes, label vocabularies in the config, save/load, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from dalle_zero.models.evaluator import EmojiEvaluator, EvaluatorConfig, EvaluatorHead

HEADS = (
    EvaluatorHead(name="category", labels=("animals", "faces", "flags")),
    EvaluatorHead(name="tone", labels=("none", "light", "medium", "dark")),
    EvaluatorHead(name="style", labels=("google", "twitter")),
)


def tiny(**kw) -> EmojiEvaluator:
    torch.manual_seed(0)
    return EmojiEvaluator(EvaluatorConfig(image_size=16, widths=(8, 16, 32), heads=HEADS, **kw))


def test_forward_gives_logits_per_head_and_features_of_width_d():
    model = tiny().eval()
    x = torch.rand(5, 3, 16, 16)
    out = model(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "category": (5, 3),
        "tone": (5, 4),
        "style": (5, 2),
    }
    assert model.features(x).shape == (5, model.num_features) == (5, 32)


def test_other_image_sizes_are_resized_to_the_model_input():
    model = tiny().eval()
    big = torch.rand(2, 3, 32, 32)
    small = torch.nn.functional.interpolate(big, size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(model.features(big), model.features(small))


def test_save_load_round_trip_keeps_weights_outputs_and_label_vocabularies(tmp_path):
    model = tiny().eval()
    model.save_pretrained(tmp_path / "ev")
    cfg = json.loads((tmp_path / "ev" / "config.json").read_text())
    assert cfg["model_type"] == "evaluator"
    assert cfg["heads"][1] == {"name": "tone", "labels": ["none", "light", "medium", "dark"]}
    loaded = EmojiEvaluator.from_pretrained(tmp_path / "ev")
    assert loaded.config == model.config
    assert loaded.labels("style") == ("google", "twitter")
    x = torch.rand(3, 3, 16, 16)
    for k, v in model(x).items():
        torch.testing.assert_close(loaded(x)[k], v)


def test_predict_returns_label_strings_and_restores_training_mode():
    model = tiny()
    model.train()
    preds = model.predict(torch.rand(4, 3, 16, 16), "tone")
    assert len(preds) == 4 and set(preds) <= set(HEADS[1].labels)
    assert model.training


def test_head_logits_in_batches_match_one_forward_read_uint8_as_float_and_restore_the_mode():
    model = tiny(dropout=0.5).train()
    u8 = torch.randint(0, 256, (7, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batched = model.head_logits(u8, batch_size=3)
    assert model.training
    with torch.no_grad():
        whole = model.eval()(u8.float() / 255.0)
    for name in ("category", "tone", "style"):
        torch.testing.assert_close(batched[name], whole[name])


def test_score_head_defaults_to_the_head_with_most_labels():
    assert tiny().config.resolved_score_head == "tone"
    assert tiny(score_head="style").config.resolved_score_head == "style"


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"image_size": 18}, "divisible"),
        ({"widths": ()}, "widths"),
        ({"score_head": "colour"}, "score_head"),
        ({"heads": (HEADS[0], HEADS[0])}, "distinct"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_config_values_raise_clear_errors(kw, match):
    base = {"image_size": 16, "widths": (8, 16, 32), "heads": HEADS, **kw}
    with pytest.raises(ValueError, match=match):
        EvaluatorConfig(**base)


def test_a_head_needs_two_distinct_labels():
    with pytest.raises(ValueError, match=">= 2"):
        EvaluatorHead(name="style", labels=("google",))
    with pytest.raises(ValueError, match="distinct"):
        EvaluatorHead(name="tone", labels=("light", "light"))


def test_a_model_without_heads_is_refused():
    with pytest.raises(ValueError, match="heads is empty"):
        EmojiEvaluator(EvaluatorConfig(image_size=16, widths=(8, 16)))


def test_integer_pixels_are_refused():
    with pytest.raises(ValueError, match="floats"):
        tiny().features(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
