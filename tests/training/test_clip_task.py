"""Specification of the CLIP training stage: data wrapping, schedule, loss, retrieval evaluation."""

from __future__ import annotations

import pytest
import torch

from dalle_zero.models.clip import CLIPConfig, DalleCLIP
from dalle_zero.tokenizers.bpe import BPETokenizer
from dalle_zero.training.clip import (
    CLIPPairs,
    CLIPTask,
    CLIPTrainConfig,
    ReconstructedImages,
    WithSiblings,
    build_model,
    collate_pairs,
    retrieval_accuracy,
    shift_augment,
)
from tests.factories.clip import COLOURS, TINY_MODEL, ShapePairs, clip_config, draw_shape, shapes_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    return shapes_tokenizer()





def test_clip_pairs_tokenize_captions_and_resize_pixels(tokenizer):
    pairs = CLIPPairs(ShapePairs(size=24), tokenizer, image_size=16)
    item = pairs[(3, 0)]
    assert item["ids"].shape == (8,) and item["ids"].dtype == torch.long
    assert item["pixels"].shape == (3, 16, 16)
    assert tokenizer.decode(item["ids"]) == "a green square"


def test_augmentation_is_a_small_shift_reproducible_from_the_sample_seed(tokenizer):
    img = draw_shape("circle", COLOURS["red"])
    a = shift_augment(img, 2, torch.Generator().manual_seed(5))
    b = shift_augment(img, 2, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == img.shape
    assert torch.equal(shift_augment(img, 0, torch.Generator()), img)
    pairs = CLIPPairs(ShapePairs(), tokenizer, image_size=16, augment_shift=2)
    assert torch.equal(pairs[(0, 11)]["pixels"], pairs[(0, 11)]["pixels"])
    shifted = [not torch.equal(pairs[(1, s)]["pixels"], ShapePairs()[1]["pixels"]) for s in range(10)]
    assert any(shifted)


def test_blur_softens_a_share_of_images_reproducibly_from_the_sample_seed(tokenizer):
    sharp = CLIPPairs(ShapePairs(), tokenizer, image_size=16)
    always = CLIPPairs(ShapePairs(), tokenizer, image_size=16, blur_prob=1.0, max_blur=1.5)
    half = CLIPPairs(ShapePairs(), tokenizer, image_size=16, blur_prob=0.5, max_blur=1.5)
    edges = lambda x: (x[:, :, 1:] - x[:, :, :-1]).abs().sum()  # noqa: E731
    assert all(edges(always[(i, 3)]["pixels"]) < edges(sharp[(i, 3)]["pixels"]) for i in range(12))
    assert torch.equal(always[(4, 9)]["pixels"], always[(4, 9)]["pixels"])
    blurred = [not torch.equal(half[(0, s)]["pixels"], sharp[(0, s)]["pixels"]) for s in range(40)]
    assert 8 <= sum(blurred) <= 32


def _shape_siblings(tokenizer, k: int) -> WithSiblings:
    """Shape pairs grouped by shape: a red square's siblings are the squares of other colours."""
    data = ShapePairs()
    groups = [it["stem"].split("_")[1] for it in data.items]
    return WithSiblings(CLIPPairs(data, tokenizer, image_size=16), groups, k)


def test_siblings_are_other_images_of_the_same_concept_drawn_from_the_sample_seed(tokenizer):
    siblings = _shape_siblings(tokenizer, k=2)
    items = siblings[(0, 7)]  # item 0: "a red square"
    assert [it["caption"] for it in items][0] == "a red square" and len(items) == 3
    assert all(c.endswith("square") for c in (it["caption"] for it in items))
    assert len({it["caption"] for it in items}) == 3  # never the item itself again
    assert [it["caption"] for it in siblings[(0, 7)]] == [it["caption"] for it in items]
    assert len({tuple(it["caption"] for it in siblings[(0, s)]) for s in range(20)}) > 1
    assert len(_shape_siblings(tokenizer, k=10)[(0, 1)]) == 4  # as many as the concept has
    lonely = WithSiblings(CLIPPairs(ShapePairs(), tokenizer, image_size=16), [None] * 12, 3)
    assert len(lonely[(5, 0)]) == 1
    with pytest.raises(ValueError, match="11 group keys for 12 items"):
        WithSiblings(CLIPPairs(ShapePairs(), tokenizer, image_size=16), [None] * 11, 3)


def test_collate_keeps_one_pair_per_caption(tokenizer):
    siblings = _shape_siblings(tokenizer, k=3)
    batch = collate_pairs([siblings[(0, 1)], siblings[(3, 2)], siblings[(1, 3)]])  # two groups of squares
    captions = [tokenizer.decode(ids) for ids in batch["ids"]]
    assert len(captions) == len(set(captions)) and batch["pixels"].shape == (len(captions), 3, 16, 16)
    assert sorted(captions) == sorted({f"a {c} {s}" for c in COLOURS for s in ("square", "circle")})


def test_siblings_need_the_group_of_every_item(tokenizer, tmp_path):
    task = CLIPTask(clip_config(tokenizer, siblings=2), tokenizer, train_data=ShapePairs())
    with pytest.raises(ValueError, match="pass the group of every training item"):
        task.train_dataset()
    with pytest.raises(ValueError, match="siblings must be"):
        clip_config(tokenizer, siblings=-1)


def test_reconstructed_images_show_a_share_of_items_as_the_dvae_decodes_them():
    from dalle_zero.models.dvae import DiscreteVAE, DVAEConfig, round_trip

    torch.manual_seed(0)
    dvae = DiscreteVAE(DVAEConfig(image_size=16, group_count=2, n_blk_per_group=1, n_hid=8, n_init=8, vocab_size=16))
    data = ShapePairs()
    always = ReconstructedImages(data, dvae.eval(), 1.0, batch_size=5)  # batches that do not divide the 12 items
    _, expected = round_trip(dvae, torch.stack([it["pixels"] for it in data.items]))
    for i in range(12):
        item = always[(i, 3)]
        assert item["caption"] == data.items[i]["caption"]
        assert (item["pixels"] - expected[i]).abs().max() <= 0.5 / 255 + 1e-6  # stored as uint8
    never = ReconstructedImages(data, dvae, 0.0)
    assert all(torch.equal(never[(i, 1)]["pixels"], data.items[i]["pixels"]) for i in range(12))
    half = ReconstructedImages(data, dvae, 0.5)
    shown = [not torch.equal(half[(0, s)]["pixels"], data.items[0]["pixels"]) for s in range(40)]
    assert 8 <= sum(shown) <= 32 and shown == [not torch.equal(half[(0, s)]["pixels"], data.items[0]["pixels"])
                                              for s in range(40)]  # fmt: skip
    assert data.items[0]["pixels"].min() >= 0  # the base dataset is left as it was
    with pytest.raises(ValueError, match="recon_prob > 0 needs a dvae"):
        CLIPTrainConfig(model=CLIPConfig(text_vocab_size=300, text_seq_len=8, **TINY_MODEL), recon_prob=0.5)


def test_bpe_dropout_is_off_unless_configured(tokenizer):
    plain = CLIPPairs(ShapePairs(), tokenizer, image_size=16)
    assert all(torch.equal(plain[(i, s)]["ids"], tokenizer.encode(plain.base[i]["caption"])[0])
               for i in range(12) for s in range(5))  # fmt: skip


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor(tokenizer):
    task = CLIPTask(clip_config(tokenizer, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1), tokenizer)
    assert task.lr_at(0) == pytest.approx(1e-4)
    assert task.lr_at(9) == pytest.approx(1e-3)
    assert task.lr_at(10) == pytest.approx(1e-3)
    assert task.lr_at(55) == pytest.approx(0.55e-3)
    assert task.lr_at(100) == pytest.approx(1e-4)
    lrs = [task.lr_at(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_optimizer_decays_matrices_only(tokenizer):
    task = CLIPTask(clip_config(tokenizer), tokenizer)
    model = build_model(task.config)
    opt = task.make_optimizer(model)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.logit_scale) not in decayed and id(model.text.tok_emb.weight) not in decayed
    assert id(model.text_proj.weight) in decayed


def test_retrieval_accuracy_is_perfect_for_an_oracle_and_counts_duplicate_captions_as_hits(tokenizer):
    class Oracle(DalleCLIP):  # embeds each image and caption as the one-hot of its pair index
        def encode_image(self, pixels):
            return torch.nn.functional.one_hot(self._image_index(pixels), 12).float()

        def encode_text(self, ids):
            return torch.nn.functional.one_hot(self._text_index(ids), 12).float()

        def _image_index(self, pixels):
            refs = torch.stack([it["pixels"] for it in ShapePairs().items])
            return torch.cdist(pixels.flatten(1), refs.flatten(1)).argmin(1)

        def _text_index(self, ids):
            refs = tokenizer.encode([it["caption"] for it in ShapePairs().items])
            return torch.cdist(ids.float(), refs.float()).argmin(1)

    oracle = Oracle(clip_config(tokenizer).model)
    metrics = retrieval_accuracy(oracle, tokenizer, ShapePairs())
    assert metrics == {"pairs": 12.0, "i2t_top1": 1.0, "t2i_top1": 1.0, "i2t_top5": 1.0, "t2i_top5": 1.0}
    random = retrieval_accuracy(build_model(clip_config(tokenizer)), tokenizer, ShapePairs())
    assert set(random) == set(metrics) and 0.0 <= random["i2t_top1"] <= 1.0


def test_train_config_round_trips_through_json_and_rejects_bad_values(tokenizer, tmp_path):
    config = clip_config(tokenizer, eval_splits=("validation", "unseen_concepts"))
    path = tmp_path / "c.json"
    path.write_text(config.to_json())
    assert CLIPTrainConfig.from_json_file(path) == config
    with pytest.raises(ValueError, match="lr"):
        clip_config(tokenizer, lr=0.0)
    with pytest.raises(ValueError, match="betas"):
        clip_config(tokenizer, betas=(0.9, 1.0))


def test_different_seeds_build_independent_models(tokenizer):
    a = build_model(clip_config(tokenizer))
    c = clip_config(tokenizer)
    b = build_model(c.replace(loop=c.loop.replace(seed=1)))
    assert not torch.equal(a.image_proj.weight, b.image_proj.weight)
    assert torch.equal(a.image_proj.weight, build_model(clip_config(tokenizer)).image_proj.weight)


def test_task_refuses_a_tokenizer_larger_than_the_model_vocabulary(tokenizer):
    config = clip_config(tokenizer)
    small = config.replace(model=config.model.replace(text_vocab_size=100))
    with pytest.raises(ValueError, match="exceeds the CLIP's text_vocab_size"):
        CLIPTask(small, tokenizer)


@pytest.fixture(scope="module")
def emoji_data(tmp_path_factory):
    from tests.factories.emoji import make_emoji_dataset

    return make_emoji_dataset(tmp_path_factory.mktemp("clip_emoji"))


def test_naming_captions_show_each_image_only_with_captions_that_tell_it_from_its_siblings(
    tokenizer, emoji_data, tmp_path
):
    from dalle_zero.data.emoji_captions import names_attributes
    from dalle_zero.data.metadata import read_metadata

    meta = read_metadata(emoji_data)
    shown = {}
    for mode in ("all", "naming"):
        config = clip_config(tokenizer, data=str(emoji_data), siblings=2, sibling_captions=mode)
        siblings = CLIPTask(config, tokenizer).train_dataset()
        items = [it for i in range(len(siblings)) for seed in range(6) for it in siblings[(i, seed)]]
        shown[mode] = [(it["stem"], it["caption"]) for it in items]
    naming = [names_attributes(c, meta[s]["style"], meta[s]["tone"]) for s, c in shown["naming"]]
    assert all(naming) and len(shown["naming"]) == len(shown["all"])
    assert not all(names_attributes(c, meta[s]["style"], meta[s]["tone"]) for s, c in shown["all"])
    assert {s for s, _ in shown["naming"]} == {s for s, _ in shown["all"]}  # the same images and siblings
    with pytest.raises(ValueError, match=r"sibling_captions must be one of \['all', 'naming'\], got 'some'"):
        clip_config(tokenizer, siblings=2, sibling_captions="some")
    with pytest.raises(ValueError, match="is for hard negatives: set siblings > 0"):
        clip_config(tokenizer, sibling_captions="naming")
    no_metadata = clip_config(tokenizer, data=str(tmp_path), siblings=2, sibling_captions="naming")
    with pytest.raises(FileNotFoundError, match="sibling_captions 'naming' needs each image's style and tone"):
        CLIPTask(no_metadata, tokenizer, train_data=ShapePairs()).train_dataset()
