"""``dalle encode --augment K``: the plain resize and K - 1 Listing-2 crops of every real image file, seeded
by the seed and the image's stem alone; a prior resumes exactly on them and validates on the plain view."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_zero.cli.main import main
from dalle_zero.data.sources import open_image_text_dataset
from dalle_zero.data.tokens import TokenDataset, read_token_index, write_token_shards
from dalle_zero.data.transforms import ResizeTransform
from dalle_zero.models.dvae import DiscreteVAE
from dalle_zero.training.encode import ImageViews, encoded_items
from dalle_zero.training.prior import PriorTask, build_model
from tests.factories.folders import tiny_dvae
from tests.factories.prior import GRID, IMAGE_VOCAB, examples, make_tokenizer, prior_config, train_prior

K = 3


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Five noise photos larger than the dVAE's 16 px (one portrait, one JPEG) and one icon of exactly 16 px."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    sizes = {"p0": (40, 28), "p1": (28, 44), "p2": (36, 36), "p3": (48, 30), "p4": (30, 30), "icon": (16, 16)}
    for stem, (w, h) in sizes.items():
        pixels = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        pixels.save(root / (f"{stem}.jpg" if stem == "p3" else f"{stem}.png"))
        (root / f"{stem}.txt").write_text(f"a photo called {stem}\n")
    return root


@pytest.fixture(scope="module")
def dvae_run(tmp_path_factory) -> Path:
    return tiny_dvae(tmp_path_factory.mktemp("dvae"))


def encode(dvae_run: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["encode", "--dvae", str(dvae_run), "--data", str(data), "--out", str(out), "--no-progress", *extra])


def open_image(data: Path, stem: str) -> Image.Image:
    path = next(p for p in data.glob(f"{stem}.*") if p.suffix != ".txt")
    with Image.open(path) as im:
        return im.convert("RGB")


def test_k_views_of_every_image_are_the_plain_resize_and_the_papers_crops(dvae_run, images, tmp_path, capsys, caplog):
    assert encode(dvae_run, images, tmp_path / "tok", "--augment", str(K), "--batch-size", str(K)) == 0
    out = capsys.readouterr().out
    assert f"encoded 6 images ({K} crops each) into 8x8 tokens of 32 codes" in out
    ds = TokenDataset(tmp_path / "tok")
    assert ds.crops == K and ds.codes.shape == (6, K, 64)
    index = read_token_index(tmp_path / "tok")
    assert index["augment"] == {"transform": "prior (Listing 2)", "seed": 0, "crop_0": "resize"}
    assert index["format_version"] == 3
    dvae = DiscreteVAE.from_pretrained(dvae_run / "model").eval()
    views, resize = ImageViews(16, K, seed=0), ResizeTransform(resolution=16)
    for i, stem in enumerate(ds.stems):
        image = open_image(images, stem)
        pixels = views(image, stem)  # (K, 3, 16, 16): the plain resize, then K - 1 crops
        assert torch.equal(pixels[0], resize(image))
        with torch.inference_mode():
            assert torch.equal(ds.codes[i].long(), dvae.encode(pixels).flatten(1)), stem
    # Listing 2 draws from few crops at this size (t <= 18, offsets of a few pixels; t = 16 at the
    # centre is the plain resize): a crop may coincide with another view, and all of the icon's do
    same = [stem for stem, codes in zip(ds.stems, ds.codes) if bool((codes == codes[0]).all())]
    assert "icon" in same and len(same) <= 2, same
    assert f"{len(same)} of 6 images gave 3 identical token grids" in caplog.text


def test_crops_are_seeded_by_seed_and_stem(dvae_run, images, tmp_path):
    for name, seed, batch in (("a", "0", "5"), ("b", "0", "12"), ("c", "1", "5")):
        args = ("--augment", str(K), "--seed", seed, "--batch-size", batch)
        assert encode(dvae_run, images, tmp_path / name, *args) == 0
    a, b, c = (TokenDataset(tmp_path / name) for name in "abc")
    assert torch.equal(a.codes, b.codes)  # the same seed: the same tokens, whatever the batch size
    assert not torch.equal(a.codes, c.codes)


def test_crops_do_not_depend_on_the_caption_lines(dvae_run, images, tmp_path):
    """A second caption line draws the caption from the sample's generator; the crops have their own."""
    more = tmp_path / "more_lines"
    shutil.copytree(images, more)
    for stem in ("p0", "p2"):
        (more / f"{stem}.txt").write_text(f"a photo called {stem}\nanother line about {stem}\n")
    for name, data in (("one", images), ("two", more)):
        assert encode(dvae_run, data, tmp_path / name, "--augment", str(K)) == 0
    one, two = TokenDataset(tmp_path / "one"), TokenDataset(tmp_path / "two")
    assert two.captions[two.stems.index("p0")] == ["a photo called p0", "another line about p0"]
    assert one.stems == two.stems and torch.equal(one.codes, two.codes)


def test_an_image_unreadable_at_encode_time_is_left_out_and_its_neighbour_keeps_its_crops(dvae_run, images, tmp_path):
    """The reader replaces an image that no longer loads by the next one; that one is encoded once, with
    its own stem's crops and captions."""
    data = tmp_path / "photos"
    shutil.copytree(images, data)
    dvae = DiscreteVAE.from_pretrained(dvae_run / "model").eval()
    views = ImageViews(16, K, seed=0)
    clean = {stem: (lines, codes) for stem, lines, codes in encoded_items(dvae, open_image_text_dataset(data), views)}
    dataset = open_image_text_dataset(data)  # indexed while every image is readable
    stems = dataset.stems
    broken = stems[1]
    next(p for p in data.glob(f"{broken}.*") if p.suffix != ".txt").write_bytes(b"not an image any more")
    items = list(encoded_items(dvae, dataset, views, batch_size=2 * K))
    assert [stem for stem, _, _ in items] == [s for s in stems if s != broken]
    for stem, lines, codes in items:
        assert lines == clean[stem][0] and torch.equal(codes, clean[stem][1]), stem
    assert dataset.skipped["load error"] == 1


def test_augment_1_encodes_the_plain_resize_as_before(dvae_run, images, tmp_path):
    assert encode(dvae_run, images, tmp_path / "default") == 0
    assert encode(dvae_run, images, tmp_path / "one", "--augment", "1", "--seed", "5") == 0
    default, one = TokenDataset(tmp_path / "default"), TokenDataset(tmp_path / "one")
    assert torch.equal(default.codes, one.codes) and one.crops == 1
    assert read_token_index(tmp_path / "one").keys() == read_token_index(tmp_path / "default").keys()
    dvae = DiscreteVAE.from_pretrained(dvae_run / "model").eval()
    resize = ResizeTransform(resolution=16)
    with torch.inference_mode():
        expected = dvae.encode(torch.stack([resize(open_image(images, s)) for s in one.stems]))
    assert torch.equal(one.codes[:, 0].long(), expected.flatten(1))


@pytest.mark.parametrize("k", ["0", "-2"])
def test_augment_below_one_is_a_one_line_error(dvae_run, images, tmp_path, capsys, k):
    assert encode(dvae_run, images, tmp_path / "tok", "--augment", k) == 2
    err = capsys.readouterr().err
    expected = f"dalle: error: --augment must be an integer >= 1 (token grids per image; 1: no crops), got {k}"
    assert err.startswith(expected)
    assert err.count("\n") == 1 and not (tmp_path / "tok").exists()


def test_prior_training_on_crops_resumes_exactly(tmp_path):
    """Each image has K grids (the same codes shifted by the crop): the run reads one per sample and epoch."""
    items = []
    for split, copies in (("t", 2), ("v", 1)):
        for c in range(copies):
            for i, (caption, codes) in enumerate(examples()):
                grids = torch.stack([(codes + k) % IMAGE_VOCAB for k in range(K)]).view(K, GRID, GRID)
                items.append((f"{split}{c}_{i}", caption, grids))
    splits = {"train": [s for s, _, _ in items if s[0] == "t"], "validation": [s for s, _, _ in items if s[0] == "v"]}
    tokens = write_token_shards(tmp_path / "tokens", items, image_vocab_size=IMAGE_VOCAB, splits=splits, crops=K)
    cfg = prior_config((tokens, make_tokenizer(tmp_path / "tokenizer", text_seq_len=12)))
    full, _ = train_prior(cfg, tmp_path / "full")
    train_prior(cfg, tmp_path / "cut", stop_after=7)  # killed between checkpoints 5 and 10
    resumed, _ = train_prior(cfg, tmp_path / "cut", resume=True)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    one_crop = write_token_shards(
        tmp_path / "crop0", [(s, c, g[0]) for s, c, g in items], image_vocab_size=IMAGE_VOCAB, splits=splits
    )
    first_only, _ = train_prior(cfg.replace(tokens=str(one_crop)), tmp_path / "crop0_run")
    assert not all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), first_only.state_dict().values()))


def test_validation_scores_the_plain_view_of_every_held_out_image(tmp_path):
    """Grid 0 is the plain image: held-out losses with K views equal those of a folder of grid 0 alone."""
    items, splits = [], {"train": [], "validation": []}
    for i, (caption, codes) in enumerate(examples()):
        grids = torch.stack([(codes + k) % IMAGE_VOCAB for k in range(K)]).view(K, GRID, GRID)
        items.append((f"x{i}", caption, grids))
        splits["validation" if i % 3 == 0 else "train"].append(f"x{i}")
    with_views = write_token_shards(tmp_path / "views", items, image_vocab_size=IMAGE_VOCAB, splits=splits, crops=K)
    cfg = prior_config((with_views, make_tokenizer(tmp_path / "tokenizer", text_seq_len=12)), eval_samples=100)
    model = build_model(cfg).eval()
    with torch.no_grad():  # a fresh model's heads are zero: every grid would score log(vocab)
        for p in model.parameters():
            p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(p.numel()))

    def scores(tokens) -> dict[str, float]:
        return PriorTask(cfg.replace(tokens=str(tokens))).evaluate(model, 0, tmp_path)

    def one_view(k: int):
        grids = [(s, c, g[k]) for s, c, g in items]
        return write_token_shards(tmp_path / f"view{k}", grids, image_vocab_size=IMAGE_VOCAB, splits=splits)

    assert scores(with_views) == scores(one_view(0))
    assert all(scores(with_views) != scores(one_view(k)) for k in range(1, K))
