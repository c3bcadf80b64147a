"""Every reader draws one of an image's captions per sample: seeded by the key, new each epoch, resumable.

The image folder, WebDataset shards, a JSONL manifest and token shards hold the same pairs; a run of
:class:`~dalle_zero.training.sampler.ResumableBatchSampler` must read the same captions from each, and
a run resumed at micro-batch ``m`` must read exactly what the uninterrupted run read from ``m`` on.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
import torch
from PIL import Image

from dalle_zero.data.transforms import DVAETransform, to_rgb
from dalle_zero.training.sampler import ResumableBatchSampler
from tests.factories.folders import READERS, caption_folder, drawn_captions, noise_folder, open_reader, sampler_batches

# Eight images: six with several captions, two with one (the layout before several captions per image).
CAPTIONS = {
    **{f"img{i}": [f"thing {i}", f"a thing number {i}", f"thing {i}, noto style", f"thing {i}!"] for i in range(4)},
    "img4": ["red square", "square in red"],
    "img5": ["blue ring", "ring, blue", "a ring"],
    "single0": ["only one caption"],
    "single1": ["just this"],
}
BATCH, SEED, EPOCHS = 2, 11, 8
PER_EPOCH = len(CAPTIONS) // BATCH


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return caption_folder(tmp_path_factory.mktemp("pairs"), CAPTIONS)


@pytest.fixture(scope="module", params=READERS)
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def reader(kind, folder, tmp_path_factory):
    return open_reader(kind, folder, tmp_path_factory.mktemp(kind))


def test_the_same_key_draws_the_same_caption_from_a_line_of_that_image(reader):
    for key in itertools.chain.from_iterable(sampler_batches(len(reader), BATCH, seed=SEED, count=2 * PER_EPOCH)):
        item = reader[key]
        assert item["caption"] in CAPTIONS[item["stem"]]
        assert all(reader[key]["caption"] == item["caption"] for _ in range(3))


def test_every_caption_line_can_be_drawn(reader):
    for index in range(len(reader)):
        stem = reader[index]["stem"]
        drawn = {reader[(index, seed)]["caption"] for seed in range(60)}
        assert drawn == set(CAPTIONS[stem]), stem  # the first and the last line too


def test_a_sample_draws_other_captions_in_other_epochs(reader):
    drawn = defaultdict(list)  # stem -> the caption drawn in each epoch
    for batch in drawn_captions(reader, sampler_batches(len(reader), BATCH, seed=SEED, count=EPOCHS * PER_EPOCH)):
        for stem, caption in batch:
            drawn[stem].append(caption)
    assert sorted(drawn) == sorted(CAPTIONS) and all(len(c) == EPOCHS for c in drawn.values())
    for stem, captions in drawn.items():
        if len(CAPTIONS[stem]) > 1:
            assert len(set(captions)) > 1, (stem, captions)
        else:
            assert captions == CAPTIONS[stem] * EPOCHS


@pytest.mark.parametrize("start", [1, PER_EPOCH, PER_EPOCH + 3])
def test_resuming_the_sampler_draws_the_captions_of_the_uninterrupted_run(kind, reader, folder, tmp_path, start):
    total = 3 * PER_EPOCH
    uninterrupted = drawn_captions(reader, sampler_batches(len(reader), BATCH, seed=SEED, count=total))
    # a restarted process opens the data again and reads through a DataLoader from micro-batch `start`
    reopened = open_reader(kind, folder, tmp_path / "reopened")
    sampler = ResumableBatchSampler(len(reopened), BATCH, seed=SEED, start=start)
    loader = torch.utils.data.DataLoader(reopened, batch_sampler=sampler)
    resumed = [list(zip(b["stem"], b["caption"])) for b in itertools.islice(loader, total - start)]
    assert resumed == uninterrupted[start:]


@pytest.mark.parametrize("pixel_reader", ["folder", "shards", "manifest"])
def test_an_image_with_one_caption_reads_as_before(pixel_reader, tmp_path):
    # one caption: the key's generator goes to the transform untouched, as before captions were drawn
    root = noise_folder(tmp_path / "noise")
    transform = DVAETransform(resolution=16)
    pairs = open_reader(pixel_reader, root, tmp_path / "work", transform=transform)
    single = [(i, stem) for i, stem in enumerate(pairs.stems) if len(pairs.captions(i)) == 1]
    assert len(single) == 3
    for i, stem in single:
        path = next(p for p in root.glob(f"{stem}.*") if p.suffix != ".txt")
        with Image.open(path) as im:
            image = to_rgb(im)
            image.load()
        for seed in (0, 5, 2**40):
            item = pairs[(i, seed)]
            assert item["caption"] == pairs.captions(i)[0]
            assert torch.equal(item["pixels"], transform(image, torch.Generator().manual_seed(seed)))


def test_every_reader_draws_the_same_caption_for_the_same_key(folder, tmp_path):
    readers = [open_reader(kind, folder, tmp_path / kind) for kind in READERS]
    batches = sampler_batches(len(CAPTIONS), BATCH, seed=SEED, count=2 * PER_EPOCH)
    first, *others = (drawn_captions(r, batches) for r in readers)
    assert all(other == first for other in others)


@pytest.mark.parametrize("pixel_reader", ["folder", "shards", "manifest"])
def test_a_reader_can_be_cut_to_some_of_each_images_captions(pixel_reader, folder, tmp_path):
    pairs = open_reader(pixel_reader, folder, tmp_path)
    noto = pairs.with_captions(lambda stem, lines: [c for c in lines if "noto" in c])
    assert noto.stems == pairs.stems
    for index, stem in enumerate(noto.stems):
        drawn = {noto[(index, seed)]["caption"] for seed in range(40)}
        # an image none of whose captions is chosen keeps them all
        chosen = [c for c in CAPTIONS[stem] if "noto" in c]
        assert drawn == set(chosen or CAPTIONS[stem])
    assert {pairs[(0, seed)]["caption"] for seed in range(40)} == set(CAPTIONS[pairs.stems[0]])  # left as it was
