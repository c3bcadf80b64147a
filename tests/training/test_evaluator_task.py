"""Training the evaluator on real labelled images with the shared loop, and its command line."""

from __future__ import annotations

import json

import pytest
import torch

from dalle_zero.cli.main import main
from dalle_zero.data.metadata import field_label
from dalle_zero.models.evaluator import EmojiEvaluator, EvaluatorConfig
from dalle_zero.training.evaluator import (
    EvaluatorTask,
    EvaluatorTrainConfig,
    build_train_config,
    head_accuracy,
    heads_loss,
)
from dalle_zero.training.labelled_images import IGNORE, LabelledImages, label_heads
from dalle_zero.training.loop import LoopConfig, train
from tests.factories.shapes import make_shapes_dataset


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", per_combo=6, size=16)


def _config(data, steps: int = 150) -> EvaluatorTrainConfig:
    cfg = EvaluatorTrainConfig(
        data=str(data),
        model=EvaluatorConfig(image_size=16, widths=(16, 32, 64), dropout=0.0),
        loop=LoopConfig(steps=steps, batch_size=32, log_every=50, checkpoint_every=1000, seed=0),
        lr=3e-3,
        warmup_steps=10,
        concept_field=None,  # the label heads alone, trained on the training split (test_concept_head.py)
    )
    return build_train_config(cfg)


def test_heads_and_vocabularies_come_from_the_training_split(shapes):
    cfg = _config(shapes)
    heads = {h.name: h.labels for h in cfg.model.heads}
    assert heads["category"] == ("bar", "circle", "square")
    assert heads["tone"] == ("none", "light", "dark")  # skin order; the two-tone pair has no label
    assert heads["style"] == ("google", "twitter")


def test_a_field_with_one_label_gets_no_head():
    rows = [
        {"category": "a", "style": "google", "tone": None},
        {"category": "b", "style": "google", "tone": "light"},
    ]
    names = [h.name for h in label_heads(rows, ("category", "style", "tone"))]
    assert names == ["category", "tone"]


def test_tone_labels():
    assert field_label({"tone": None}, "tone") == "none"
    assert field_label({"tone": "medium-dark"}, "tone") == "medium-dark"
    assert field_label({"tone": "light/dark"}, "tone") is None


def test_the_loss_skips_unlabelled_rows_and_heads_without_labels():
    logits = {"a": torch.zeros(3, 2, requires_grad=True), "b": torch.zeros(3, 4)}
    labels = torch.tensor([[0, IGNORE], [1, IGNORE], [IGNORE, IGNORE]])
    loss, parts = heads_loss(logits, labels, ("a", "b"))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert "b_loss" not in parts and torch.isfinite(loss)


def test_augmentation_is_reproducible_from_the_sample_seed(shapes):
    task = EvaluatorTask.from_folder(_config(shapes))
    data = task.train_dataset()
    a, b, c = data[(3, 11)], data[(3, 11)], data[(3, 12)]
    assert torch.equal(a["pixels"], b["pixels"]) and a["pixels"].shape == (3, 16, 16)
    assert torch.equal(a["labels"], c["labels"])
    assert data[3]["pixels"].shape == (3, 16, 16)


def test_blur_augmentation_softens_some_images_and_keeps_range_and_seed_reproducibility(shapes):
    images = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    images[0, :, 4:12, 4:12] = 255  # a sharp white square on black
    labels = torch.zeros(1, 1, dtype=torch.long)
    sharp = LabelledImages(images, labels, augment=True, max_shift=0, hflip=False)
    always = LabelledImages(images, labels, augment=True, max_shift=0, hflip=False, blur_prob=1.0, max_blur=1.5)
    half = LabelledImages(images, labels, augment=True, max_shift=0, hflip=False, blur_prob=0.5, max_blur=1.5)
    original = images[0].float() / 255
    assert all(torch.equal(sharp[(0, seed)]["pixels"], original) for seed in range(20))
    blurred = [always[(0, seed)]["pixels"] for seed in range(20)]
    for x in blurred:
        assert x.shape == (3, 16, 16) and 0.0 <= x.min() and x.max() <= 1.0
        assert 0.0 < x[0, 4, 4] < 1.0 and x[0, 0, 0] < 0.01  # the edge is soft, the far corner stays black
    assert len({round(float(x[0, 3, 8]), 6) for x in blurred}) > 5  # the radius varies with the seed
    assert torch.equal(always[(0, 7)]["pixels"], blurred[7])
    n_blurred = sum(not torch.equal(half[(0, seed)]["pixels"], original) for seed in range(200))
    assert 70 < n_blurred < 130


@pytest.mark.parametrize(("field", "value"), [("blur_prob", 1.5), ("blur_prob", -0.1), ("max_blur", -1.0)])
def test_bad_blur_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        EvaluatorTrainConfig(**{field: value})


def test_evaluator_trains_to_high_accuracy_on_coloured_shapes_in_seconds(shapes, tmp_path):
    cfg = _config(shapes)
    task = EvaluatorTask.from_folder(cfg)
    assert set(task.eval_data) == {"validation", "unseen_compositions"}  # unseen_concepts is empty here
    torch.manual_seed(0)
    model = EmojiEvaluator(cfg.model)
    model_dir = train(model, task, cfg.loop, tmp_path / "run", train_config=cfg, progress=False)
    loaded = EmojiEvaluator.from_pretrained(model_dir)
    acc = head_accuracy(loaded, task.eval_data["validation"])
    assert acc["category_acc"] >= 0.9 and acc["tone_acc"] >= 0.9 and acc["style_acc"] >= 0.9, acc
    # held-out two-tone bars: only category and style are labelled
    unseen = head_accuracy(loaded, task.eval_data["unseen_compositions"])
    assert "tone_acc" not in unseen and unseen["style_acc"] >= 0.9
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val/validation/tone_acc"] == pytest.approx(acc["tone_acc"])


def test_train_evaluator_command_writes_a_model_and_prints_held_out_accuracy(
    shapes, tmp_path, capsys
):
    config = tmp_path / "evaluator.json"
    config.write_text(json.dumps({"model": {"widths": [8, 16]}, "loop": {"log_every": 5}}))
    run = tmp_path / "run"
    argv = ["train", "evaluator", "--data", str(shapes), "--out", str(run), "--config", str(config)]
    code = main([*argv, "--steps", "10", "--batch-size", "16", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "evaluator heads: category (3), subcategory (3), tone (3), style (2), concept (3); input 16 px" in out
    assert "validation: category_acc" in out
    model = EmojiEvaluator.from_pretrained(run / "model")
    assert model.config.image_size == 16 and model.config.widths == (8, 16)
    acc = json.loads((run / "evaluator_accuracy.json").read_text())
    assert 0.0 <= acc["validation/style_acc"] <= 1.0


def test_train_evaluator_on_a_folder_without_metadata_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    code = main(["train", "evaluator", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "splits.json not found" in capsys.readouterr().err
