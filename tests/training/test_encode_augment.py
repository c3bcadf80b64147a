"""``dalle encode --augment K``: K Listing-2 crops of every real image file; a prior resumes exactly on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dalle_zero.cli.main import main
from dalle_zero.data.tokens import TokenDataset, read_token_index, write_token_shards
from dalle_zero.data.transforms import PriorTransform, ResizeTransform
from dalle_zero.models.dvae import DiscreteVAE
from dalle_zero.training.encode import crop_seed
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


def test_k_crops_of_every_image_are_the_papers_crops_and_differ(dvae_run, images, tmp_path, capsys, caplog):
    assert encode(dvae_run, images, tmp_path / "tok", "--augment", str(K), "--batch-size", str(K)) == 0
    out = capsys.readouterr().out
    assert f"encoded 6 images ({K} crops each) into 8x8 tokens of 32 codes" in out
    assert "1 of 6 images gave 3 identical token grids" in caplog.text  # the icon has nothing to crop
    ds = TokenDataset(tmp_path / "tok")
    assert ds.crops == K and ds.codes.shape == (6, K, 64)
    assert read_token_index(tmp_path / "tok")["augment"] == {"transform": "prior (Listing 2)", "seed": 0}
    dvae = DiscreteVAE.from_pretrained(dvae_run / "model").eval()
    transform = PriorTransform(resolution=16)
    for i, stem in enumerate(ds.stems):
        image, g = open_image(images, stem), torch.Generator().manual_seed(crop_seed(0, stem))
        pixels = torch.stack([transform(image, g) for _ in range(K)])  # (K, 3, 16, 16), as encode drew them
        with torch.inference_mode():
            assert torch.equal(ds.codes[i].long(), dvae.encode(pixels).flatten(1)), stem
        different = len({tuple(c.tolist()) for c in ds.codes[i]})
        # Listing 2 draws from few crops at this size (t <= 18, offsets of a few pixels): two may coincide
        assert different == 1 if stem == "icon" else different >= 2, (stem, different)


def test_crops_are_seeded_by_seed_and_stem(dvae_run, images, tmp_path):
    for name, seed, batch in (("a", "0", "5"), ("b", "0", "12"), ("c", "1", "5")):
        args = ("--augment", str(K), "--seed", seed, "--batch-size", batch)
        assert encode(dvae_run, images, tmp_path / name, *args) == 0
    a, b, c = (TokenDataset(tmp_path / name) for name in "abc")
    assert torch.equal(a.codes, b.codes)  # the same seed: the same tokens, whatever the batch size
    assert not torch.equal(a.codes, c.codes)


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
