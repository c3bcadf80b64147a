"""Token folders with K grids per image (``dalle encode --augment K``): one drawn per sample and epoch.

The draw is seeded by the sampler's key like the caption line, so it changes from epoch to epoch, is the
same for the same key, and a resumed run reads exactly the crops of the uninterrupted one. A plain index
(validation) reads grid 0, the plain view. A folder of one grid per image reads as before: same grids,
same caption draws, nothing drawn for the crop.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict

import pytest
import torch
from safetensors.torch import save_file

from dalle_zero.data.tokens import TokenDataset, read_token_index, write_token_shards
from dalle_zero.errors import DataError
from dalle_zero.training.prior import PriorDataset
from dalle_zero.training.sampler import ResumableBatchSampler
from tests.factories.folders import sampler_batches
from tests.factories.pipelines import tiny_tokenizer

K, N, GRID, VOCAB = 4, 8, 2, 50
BATCH, SEED, EPOCHS = 2, 11, 8
PER_EPOCH = N // BATCH
CAPTIONS = [[f"thing {i}", f"a thing number {i}"] if i % 2 else [f"thing {i}"] for i in range(N)]


def crop_grids(i: int) -> torch.Tensor:
    """Image ``i``'s K grids ``[K, h, w]``; crop k of it holds the value ``10·k + i`` (so a grid names its crop)."""
    return torch.stack([torch.full((GRID, GRID), 10 * k + i) for k in range(K)])


def write_crops(folder, crops: int = K):
    items = [(f"s{i}", CAPTIONS[i], crop_grids(i)[:crops].squeeze(0)) for i in range(N)]
    return write_token_shards(folder, items, image_vocab_size=VOCAB, shard_size=3, crops=crops)


def crop_of(item) -> int:
    """The crop an item's grid came from, read off its values."""
    k = int(item["image_codes"][0]) // 10
    assert item["crop"] == k and torch.equal(item["image_codes"], crop_grids(int(item["stem"][1:]))[k].flatten())
    return k


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> TokenDataset:
    return TokenDataset(write_crops(tmp_path_factory.mktemp("crops") / "tok"))


def test_k_grids_are_stored_per_image_and_recorded_in_the_index(crops):
    index = read_token_index(crops.folder)
    assert index["crops"] == K and index["format_version"] == 3 and index["count"] == N
    assert crops.crops == K and crops.codes.shape == (N, K, GRID * GRID)
    for i in range(N):
        assert torch.equal(crops.codes[i], crop_grids(i).flatten(1))


def test_the_same_key_draws_the_same_crop_and_every_crop_can_be_drawn(crops):
    for i in range(N):
        assert {crop_of(crops[(i, seed)]) for seed in range(60)} == set(range(K))
        assert all(crop_of(crops[(i, 1234)]) == crop_of(crops[(i, 1234)]) for _ in range(3))
        assert crop_of(crops[i]) == 0  # a plain index reads the plain view
        assert crops[i]["caption"] == crops[(i, i)]["caption"]  # and is its own seed for the caption line


def test_held_out_items_read_the_plain_view_of_every_image(crops):
    """Validation indexes without a seed: it scores grid 0 of every image, never a crop drawn at random."""
    held_out = torch.utils.data.Subset(crops, list(range(N)))
    assert [crop_of(held_out[j]) for j in range(N)] == [0] * N


def test_a_sample_reads_other_crops_in_other_epochs(crops):
    drawn = defaultdict(list)  # stem -> the crop read in each epoch
    for batch in sampler_batches(N, BATCH, seed=SEED, count=EPOCHS * PER_EPOCH):
        for key in batch:
            item = crops[key]
            drawn[item["stem"]].append(crop_of(item))
    assert len(drawn) == N and all(len(c) == EPOCHS for c in drawn.values())
    assert all(len(set(c)) > 1 for c in drawn.values()), drawn


def test_the_crop_draw_is_apart_from_the_caption_draw(crops, tmp_path):
    """The caption line of a key is the one a folder of one grid per image draws; so are the prior's coins."""
    single = TokenDataset(write_crops(tmp_path / "one", crops=1))
    keys = list(itertools.chain.from_iterable(sampler_batches(N, BATCH, seed=SEED, count=3 * PER_EPOCH)))
    assert [crops[k]["caption"] for k in keys] == [single[k]["caption"] for k in keys]
    tok = tiny_tokenizer()
    a = PriorDataset(crops, tok, bpe_dropout=0.5, null_caption_prob=0.3)
    b = PriorDataset(single, tok, bpe_dropout=0.5, null_caption_prob=0.3)
    for key in keys:
        assert torch.equal(a[key]["text"], b[key]["text"])
        assert torch.equal(a[key]["image"], crops[key]["image_codes"])


@pytest.mark.parametrize("start", [1, PER_EPOCH, PER_EPOCH + 3])
def test_resuming_the_sampler_reads_the_crops_of_the_uninterrupted_run(crops, start):
    total = 3 * PER_EPOCH
    uninterrupted = [[(crops[k]["stem"], crop_of(crops[k])) for k in batch]
                     for batch in sampler_batches(N, BATCH, seed=SEED, count=total)]
    reopened = TokenDataset(crops.folder)  # a restarted process opens the folder again
    loader = torch.utils.data.DataLoader(
        reopened, batch_sampler=ResumableBatchSampler(N, BATCH, seed=SEED, start=start)
    )
    resumed = [list(zip(b["stem"], b["crop"].tolist())) for b in itertools.islice(loader, total - start)]
    assert resumed == uninterrupted[start:]


def test_one_grid_per_image_reads_as_before(tmp_path):
    folder = write_crops(tmp_path / "tok", crops=1)
    index = read_token_index(folder)
    assert "crops" not in index and index["format_version"] == 1  # the folder an older reader opens
    ds = TokenDataset(folder)
    for i in range(N):
        for seed in (0, 7, 2**40):
            item = ds[(i, seed)]
            g = torch.Generator().manual_seed(seed)  # the caption draw, as it always was
            line = int(torch.randint(len(CAPTIONS[i]), (1,), generator=g)) if len(CAPTIONS[i]) > 1 else 0
            assert item["caption"] == CAPTIONS[i][line] and item["crop"] == 0
            assert torch.equal(item["image_codes"], crop_grids(i)[0].flatten())


# ---- a folder with crops is checked like any other


def tampered(folder, codes: torch.Tensor, **index_changes):
    """A one-shard folder of N images whose shard holds ``codes`` (as a tampered folder would)."""
    folder.mkdir(parents=True)
    save_file({"codes": codes.contiguous()}, str(folder / "shard_00000.safetensors"))
    meta = {"captions": [["c"]] * N, "stems": [f"s{i}" for i in range(N)]}
    (folder / "shard_00000.json").write_text(json.dumps(meta))
    index = {
        "format": "dalle-zero-tokens", "format_version": 3, "grid": [GRID, GRID], "image_grid": GRID,
        "image_vocab_size": VOCAB, "count": N, "crops": K, "dtype": "int16",
        "shards": [{"name": "shard_00000", "count": N}], "dvae": None, "splits": None,
    }
    (folder / "index.json").write_text(json.dumps({**index, **index_changes}))
    return folder


GOOD = torch.stack([crop_grids(i) for i in range(N)]).to(torch.int16)  # (N, K, h, w)
SHAPE = (N, K, GRID, GRID)


@pytest.mark.parametrize(
    "codes, expected",
    [
        (GOOD[:, 0], f"codes must have shape {SHAPE} (count, crops, grid), got ({N}, {GRID}, {GRID})"),
        (GOOD[:, :3], f"codes must have shape {SHAPE} (count, crops, grid), got ({N}, 3,"),
        (GOOD.float(), "codes must be an integer tensor, got torch.float32"),
        (GOOD.clone().index_fill_(1, torch.tensor([3]), VOCAB), f"codes must be in [0, {VOCAB}) (image_vocab_size)"),
    ],
    ids=["one-grid", "fewer-crops", "float", "past-vocab-in-the-last-crop"],
)
def test_bad_crop_codes_are_an_error_naming_the_shard(tmp_path, codes, expected):
    folder = tampered(tmp_path / "tok", codes)
    with pytest.raises(DataError, match=re.escape(f"{folder / 'shard_00000.safetensors'}: {expected}")):
        TokenDataset(folder)


@pytest.mark.parametrize("crops", [0, "4", 2.5, True])
def test_a_bad_crops_field_is_an_error_naming_it(tmp_path, crops):
    folder = tampered(tmp_path / "tok", GOOD, crops=crops)
    with pytest.raises(DataError, match=re.escape(f"{folder / 'index.json'}: field 'crops' must be a positive")):
        TokenDataset(folder)


@pytest.mark.parametrize("version", [1, 2])
def test_crops_without_the_plain_view_first_are_refused(tmp_path, version):
    """Format 2 stored K random crops: its grid 0 is no plain view to validate on."""
    folder = tampered(tmp_path / "tok", GOOD, format_version=version)
    expected = f"{folder / 'index.json'}: format_version {version} with {K} crops per image has no plain view"
    with pytest.raises(DataError, match=re.escape(expected)):
        TokenDataset(folder)


def test_a_writer_given_one_grid_for_k_crops_refuses(tmp_path):
    with pytest.raises(ValueError, match=r"s0: codes must be 4 integer \[h, w\] grids"):
        write_token_shards(tmp_path / "tok", [("s0", "c", torch.zeros(GRID, GRID))], image_vocab_size=VOCAB, crops=K)
    with pytest.raises(ValueError, match="crops must be an integer >= 1, got 0"):
        write_token_shards(tmp_path / "tok", [("s0", "c", torch.zeros(GRID, GRID))], image_vocab_size=VOCAB, crops=0)
    assert not (tmp_path / "tok").exists()
