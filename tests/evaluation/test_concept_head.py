"""The evaluator's concept head: every concept of the dataset, taught by every real image."""

from __future__ import annotations

import json

import pytest
import torch

from dalle_zero.models.evaluator import EmojiEvaluator, EvaluatorConfig
from dalle_zero.training.evaluator import EvaluatorTask, EvaluatorTrainConfig, build_train_config
from dalle_zero.training.labelled_images import IGNORE
from dalle_zero.training.loop import LoopConfig
from tests.factories.shapes import make_shapes_dataset


@pytest.fixture(scope="module")
def held_out_bars(tmp_path_factory):
    """The shapes set with every bar image moved to ``unseen_concepts``."""
    root = make_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", per_combo=2, size=16)
    splits = json.loads((root / "splits.json").read_text())
    bars = [s for stems in splits.values() for s in stems if "_bar_" in s]
    splits = {k: [s for s in v if s not in bars] for k, v in splits.items()}
    splits["unseen_concepts"] = bars
    (root / "splits.json").write_text(json.dumps(splits))
    return root


def _config(root, **kw) -> EvaluatorTrainConfig:
    cfg = EvaluatorTrainConfig(
        data=str(root),
        model=EvaluatorConfig(image_size=16, widths=(8, 16), dropout=0.0),
        loop=LoopConfig(steps=10, batch_size=8, checkpoint_every=1000),
        **kw,
    )
    return build_train_config(cfg)


def test_the_concept_head_names_held_out_concepts_that_the_other_heads_never_see(held_out_bars):
    heads = {h.name: h.labels for h in _config(held_out_bars).model.heads}
    assert heads["concept"] == ("bar", "circle", "square")
    assert heads["category"] == ("circle", "square")  # from the training split only


def test_held_out_images_teach_the_concept_head_only(held_out_bars):
    cfg = _config(held_out_bars)
    task = EvaluatorTask.from_folder(cfg)
    names = cfg.model.head_names
    labels = task.train_data.labels
    splits = json.loads((held_out_bars / "splits.json").read_text())
    assert len(labels) == sum(len(v) for v in splits.values())  # every real image
    bar = cfg.model.head("concept").labels.index("bar")
    concept = labels[:, names.index("concept")]
    category = labels[:, names.index("category")]
    assert (concept == bar).sum() == len(splits["unseen_concepts"])
    assert (category[concept == bar] == IGNORE).all()  # a held-out image says nothing of category
    assert (category[: len(splits["train"])] != IGNORE).all()


def test_without_a_concept_field_there_is_no_concept_head(held_out_bars):
    cfg = _config(held_out_bars, concept_field=None)
    assert "concept" not in cfg.model.head_names
    task = EvaluatorTask.from_folder(cfg)
    assert len(task.train_data) == len(json.loads((held_out_bars / "splits.json").read_text())["train"])


@pytest.mark.parametrize("value", ["category", "", 3])
def test_a_concept_field_that_is_also_a_head_or_not_a_name_is_refused(value):
    with pytest.raises(ValueError, match="concept_field"):
        EvaluatorTrainConfig(concept_field=value)


def test_concept_top_k_counts_the_asked_concept_among_the_k_most_probable():
    from dalle_zero.evaluation.metrics import label_top_k
    from dalle_zero.models.evaluator import EvaluatorHead

    heads = (EvaluatorHead(name="concept", labels=tuple("abcdefg")),)
    model = EmojiEvaluator(EvaluatorConfig(image_size=8, widths=(4, 4), heads=heads))
    with torch.no_grad():  # every image: logits falling from "a" to "g"
        model.heads["concept"].weight.zero_()
        model.heads["concept"].bias.copy_(torch.arange(7, 0, -1).float())
    images = torch.rand(6, 3, 8, 8)
    asked = ["a", "b", "e", "f", None, "zebra"]  # ranks 0, 1, 4, 5; the last two are not counted
    acc, n = label_top_k(model, images, "concept", asked, ks=(1, 2, 5))
    assert n == 4
    assert acc == {1: 0.25, 2: 0.5, 5: 0.75}


def test_each_caption_kind_comes_from_its_metadata_field_and_rows_without_one_are_left_out():
    from dalle_zero.evaluation.caption_kinds import kind_captions

    unseen = ["pizza in noto style", "a picture of pizza, google style", "pizza as a noto emoji"]
    rows = [
        {"caption": "pizza, noto style (food)", "name": "pizza", "plain_caption": "pizza, noto style",
         "unseen_captions": unseen},
        {"caption": "rocket, noto style (travel)", "name": "rocket", "plain_caption": "rocket, noto style",
         "unseen_captions": ["rocket in noto style", "a picture of rocket", "rocket as a noto emoji"]},
        {"caption": "old, noto style"},  # a dataset from before several captions per image
        {"caption": "bad", "name": "", "unseen_captions": ["ok", 5]},  # malformed
    ]  # fmt: skip
    assert kind_captions(rows, "canonical") == ([0, 1, 2, 3], [r["caption"] for r in rows])
    assert kind_captions(rows, "name") == ([0, 1], ["pizza", "rocket"])
    assert kind_captions(rows, "name_attributes") == ([0, 1], ["pizza, noto style", "rocket, noto style"])
    # the templates are taken in turn, so each is read about as often
    assert kind_captions(rows, "unseen_phrasing") == ([0, 1], [unseen[0], "a picture of rocket"])


@pytest.mark.parametrize("kinds", [("name",), ("canonical", "emoji"), ()])
def test_caption_kinds_must_include_the_canonical_and_be_known(kinds):
    from dalle_zero.evaluation.evaluate import EvalConfig

    with pytest.raises(ValueError, match="caption_kinds"):
        EvalConfig(caption_kinds=kinds)
