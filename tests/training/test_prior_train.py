"""Training the prior on token shards: it learns, resumes exactly, checks shapes, runs from the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dalle_zero.cli.main import main
from dalle_zero.data.tokens import TokenDataset, write_token_shards
from dalle_zero.errors import DataError
from dalle_zero.models.transformer import DalleTransformer
from dalle_zero.tokenizers.bpe import BPETokenizer
from dalle_zero.training import checkpoint as ckpt
from dalle_zero.training.prior import PriorDataset, PriorTask, PriorTrainConfig, build_model
from tests.factories.prior import (
    GRID,
    IMAGE_VOCAB,
    TEXT_SEQ_LEN,
    examples,
    prior_config,
    train_prior,
    train_prior_argv,
)
from tests.factories.processes import torchrun


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_prior_learns_the_image_tokens_of_its_captions(data, tmp_path):
    cfg = prior_config(
        data,
        loop={"steps": 100, "ema_decay": None, "log_every": 5},
        lr=1e-2,
        lr_schedule="cosine",
        bpe_dropout=0.1,
        null_caption_prob=0.0,
        warmup_steps=5,
    )
    train_prior(cfg, tmp_path)
    rows = [r for r in _rows(tmp_path) if "loss" in r]
    first, last = rows[0], rows[-1]
    assert last["loss_image"] < 0.6 * first["loss_image"]  # image codes follow from the caption
    assert last["loss_text"] < first["loss_text"]
    val = [r for r in _rows(tmp_path) if "val/loss" in r][-1]
    assert val["val/bits_per_image_token"] == pytest.approx(
        val["val/loss_image"] / torch.log(torch.tensor(2.0)).item()
    )
    assert {"loss", "loss_text", "loss_image", "lr", "grad_norm"} <= set(first)


def test_resume_matches_uninterrupted_run_with_bpe_dropout_and_plateau_state(data, tmp_path):
    cfg = prior_config(data)
    full, full_task = train_prior(cfg, tmp_path / "full")
    assert full_task.schedule.halved_at  # the plateau rule fired during the run
    train_prior(cfg, tmp_path / "cut", stop_after=7)  # killed between checkpoints 5 and 10
    resumed, resumed_task = train_prior(cfg, tmp_path / "cut", resume=True)
    assert resumed_task.schedule.state_dict() == full_task.schedule.state_dict()
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    ema_a = DalleTransformer.from_pretrained(tmp_path / "full" / "model")
    ema_b = DalleTransformer.from_pretrained(tmp_path / "cut" / "model")
    assert all(torch.equal(a, b) for a, b in zip(ema_a.state_dict().values(), ema_b.state_dict().values()))
    state = ckpt.load_checkpoint(ckpt.latest_step_dir(tmp_path / "cut")).state
    assert state["task"]["plateau"]["halved_at"] == full_task.schedule.halved_at


def test_lr_is_halved_after_a_plateau_and_logged(data, tmp_path):
    train_prior(prior_config(data), tmp_path)
    rows = [r for r in _rows(tmp_path) if "lr" in r]  # one row per update (log_every 1)
    assert rows[-1]["lr_halvings"] >= 1
    for before, after in zip(rows[2:], rows[3:]):  # after warm-up: lr = peak / 2^(halvings so far)
        assert after["lr"] == pytest.approx(3e-3 * 0.5 ** before["lr_halvings"])


def _validation_plateau_config(data, **loop):
    # patience 4 updates = 2 evaluations of every 2; a 20 % threshold makes the tiny run plateau
    return prior_config(
        data, plateau_on="validation", plateau_patience=4, loop={"steps": 20, "eval_every": 2, **loop}
    )


def test_validation_plateau_halves_at_evaluations_where_the_held_out_loss_stalls(data, tmp_path):
    _, task = train_prior(_validation_plateau_config(data), tmp_path)
    rows = _rows(tmp_path)
    assert task.schedule.halved_at  # the held-out loss stalled within 20 updates
    assert all(s % 2 == 0 for s in task.schedule.halved_at)  # decided at evaluations only
    val = {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}
    best = val[min(val)]
    for step in sorted(val)[1:]:  # replay the rule on the logged held-out losses
        if step in task.schedule.halved_at:
            assert all(val[s] >= best * 0.8 for s in (step - 2, step) if s in val)  # no 20 % gain in 2 evals
            best = val[step]
        elif val[step] < best * 0.8:
            best = val[step]
    # an update's row: the rate it trained at, and the halvings decided before it (at earlier evaluations)
    for r in [r for r in rows if "lr" in r][2:]:
        assert r["lr"] == pytest.approx(3e-3 * 0.5 ** r["lr_halvings"])


def test_validation_plateau_state_resumes_exactly(data, tmp_path):
    cfg = _validation_plateau_config(data)
    _, full_task = train_prior(cfg, tmp_path / "full")
    train_prior(cfg, tmp_path / "cut", stop_after=9)
    _, resumed_task = train_prior(cfg, tmp_path / "cut", resume=True)
    assert resumed_task.schedule.state_dict() == full_task.schedule.state_dict()


@pytest.mark.slow
def test_validation_plateau_halves_on_every_rank_together(data, tmp_path):
    # rank 0 evaluates; were its held-out loss not shared, rank 1 would keep the peak rate and the
    # logged rate (the mean over ranks) would fall to 3/4 of it instead of a half
    config = tmp_path / "prior.json"
    config.write_text(_validation_plateau_config(data, batch_size=4).to_json())
    torchrun("prior", str(config), str(tmp_path / "run"))
    rows = [r for r in _rows(tmp_path / "run") if "lr" in r]
    assert rows[-1]["lr_halvings"] >= 1
    for r in rows[2:]:
        assert r["lr"] == pytest.approx(3e-3 * 0.5 ** r["lr_halvings"])


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"loop": {"eval_every": 0}}, "plateau_on 'validation' needs loop.eval_every > 0"),
        ({"val_split": "missing"}, "plateau_on 'validation' needs held-out items"),
        ({"eval_samples": 0}, "plateau_on 'validation' needs held-out items"),
        ({"plateau_on": "test"}, "plateau_on must be one of"),
    ],
)
def test_validation_plateau_without_a_held_out_loss_is_a_clear_error(data, kw, match):
    kw = {"plateau_on": "validation", "loop": {"eval_every": 2}, **kw}
    with pytest.raises(ValueError, match=match):
        PriorTask(prior_config(data, **kw))


def test_bpe_dropout_and_null_captions_are_a_pure_function_of_the_sample_seed(data):
    cfg = prior_config(data, bpe_dropout=0.5, null_caption_prob=0.5)
    ds = PriorTask(cfg).train_dataset()
    assert isinstance(ds, PriorDataset)
    a = [ds[(i, 1000 + s)]["text"] for i in range(4) for s in range(8)]
    b = [ds[(i, 1000 + s)]["text"] for i in range(4) for s in range(8)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len({tuple(t.tolist()) for t in a}) > 4  # seeds change tokenisation / null captions
    assert any((t == 0).all() for t in a)  # some captions were dropped to the empty caption
    assert all(ds[(i, 7)]["image"].shape == (GRID * GRID,) for i in range(3))


@pytest.fixture
def named(data, tmp_path):
    """The tiny shards with a metadata.jsonl naming each item's shape (the words dropout spares)."""
    tokens, tok_dir = data
    copy = tmp_path / "tokens"
    shutil.copytree(tokens, copy)
    stems = TokenDataset(copy).stems
    rows = [{"stem": s, "name": caption.split()[-1]} for s, caption in zip(stems, _captions(copy))]
    (copy / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return copy, tok_dir


def _captions(tokens: Path) -> list[str]:
    ds = TokenDataset(tokens)
    return [ds[i]["caption"] for i in range(len(ds))]


def test_bpe_dropout_spares_the_words_of_the_metadata_field(named):
    tokenizer = BPETokenizer.from_pretrained(named[1])

    def plain(text: str) -> list[int]:
        return [i for i in tokenizer.encode(text)[0].tolist() if i]

    captions = _captions(named[0])
    for spares, expect_whole_name in (("name", True), (None, False)):
        cfg = prior_config(named, bpe_dropout=0.5, null_caption_prob=0.0, bpe_dropout_spares=spares)
        ds = PriorTask(cfg).train_dataset()
        name_whole, caption_whole = [], []
        for i in range(len(ds)):
            caption = captions[ds.indices[i]]
            name = plain(caption.split()[-1])  # "a red circle": the name is the last word
            for seed in range(10):
                ids = [t for t in ds[(i, seed)]["text"].tolist() if t]
                name_whole.append(ids[-len(name) :] == name)
                caption_whole.append(ids == plain(caption))
        assert all(name_whole) is expect_whole_name
        assert not all(caption_whole)  # the other words do come in pieces


def test_bpe_dropout_spared_words_are_always_whole(data):
    tokenizer = BPETokenizer.from_pretrained(data[1])
    colours = ("red", "green", "blue", "yellow")
    cfg = prior_config(data, bpe_dropout=0.5, null_caption_prob=0.0, bpe_dropout_spared_words=colours)
    ds = PriorTask(cfg).train_dataset()
    whole = {c: [i for i in tokenizer.encode(f"a {c}")[0].tolist() if i][1:] for c in colours}
    seen_split = False
    for i in range(len(ds)):
        caption = _captions(data[0])[ds.indices[i]]
        colour = caption.split()[1]
        plain = [t for t in tokenizer.encode(caption)[0].tolist() if t]
        for seed in range(10):
            ids = [t for t in ds[(i, seed)]["text"].tolist() if t]
            start = ids.index(whole[colour][0])
            assert ids[start : start + len(whole[colour])] == whole[colour]
            seen_split |= ids != plain
    assert seen_split  # the shape words still come in pieces


@pytest.mark.parametrize("words", [("red", ""), ("red", 3), "red"])
def test_bpe_dropout_spared_words_must_be_words(data, words):
    with pytest.raises(ValueError, match="bpe_dropout_spared_words must be a list of words"):
        prior_config(data, bpe_dropout_spared_words=words)


def test_bpe_dropout_spares_needs_the_field_in_the_metadata(data, named):
    with pytest.raises(DataError, match="bpe_dropout_spares 'name' needs the metadata"):
        PriorTask(prior_config(data, bpe_dropout_spares="name"))
    with pytest.raises(DataError, match="no item has the field 'concept'"):
        PriorTask(prior_config(named, bpe_dropout_spares="concept"))


def test_without_null_captions_every_example_has_text(data):
    ds = PriorTask(prior_config(data, null_caption_prob=0.0)).train_dataset()
    assert all((ds[(i, s)]["text"] != 0).any() for i in range(len(ds)) for s in range(3))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("text_vocab_size", 999, "text_vocab_size 999 in the transformer config but"),
        ("text_seq_len", 16, "text_seq_len 16 in the transformer config but 12"),
        ("image_grid", 8, f"image_grid 8 in the transformer config but {GRID}"),
        ("image_vocab_size", 64, f"image_vocab_size 64 in the transformer config but {IMAGE_VOCAB}"),
    ],
)
def test_model_that_does_not_fit_the_tokenizer_or_shards_is_a_clear_error(data, field, value, message):
    cfg = prior_config(data)
    bad = cfg.replace(model=cfg.model.replace(**{field: value}))
    with pytest.raises(ValueError, match=message):
        PriorTask(bad)


def test_train_config_round_trips_through_json(data, tmp_path):
    cfg = prior_config(data, lr_schedule="cosine")
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert PriorTrainConfig.from_json_file(path) == cfg


@pytest.mark.parametrize(
    "bad",
    [
        {"lr_schedule": "step"},
        {"betas": (0.9, 1.0)},
        {"null_caption_prob": 1.0},
        {"plateau_patience": 0},
        {"bpe_dropout": -0.1},
    ],
)
def test_bad_train_config_values_raise(data, bad):
    with pytest.raises(ValueError):
        prior_config(data, **bad)


def test_cli_trains_resumes_and_saves_a_loadable_model(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*train_prior_argv(data, out, "tiny"), "--no-progress", "--batch-size", "4"]
    assert main([*args, "--steps", "6"]) == 0
    assert main([*args, "--steps", "8", "--resume", "--grad-accum", "2"]) == 0
    printed = capsys.readouterr().out
    assert "validation loss" in printed and "bits per image token" in printed
    model = DalleTransformer.from_pretrained(out / "model")
    assert (model.config.image_grid, model.config.image_vocab_size, model.config.text_seq_len) == (
        GRID,
        IMAGE_VOCAB,
        TEXT_SEQ_LEN,
    )
    assert BPETokenizer.from_pretrained(out / "tokenizer").vocab_size == model.config.text_vocab_size
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["loop"]["steps"] == 8 and saved["loop"]["grad_accum"] == 2
    assert ckpt.list_steps(out)[-1] == 8


def test_cli_config_that_disagrees_with_the_data_is_a_one_line_error(data, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"n_layer": 1, "n_head": 1, "n_embd": 8, "image_grid": GRID + 1}}))
    code = main(train_prior_argv(data, tmp_path / "run", str(cfg)))
    err = capsys.readouterr().err
    assert code == 2
    assert f"model.image_grid is {GRID + 1} but token shards" in err and f"has {GRID}" in err


def test_cli_plateau_on_validation_is_saved_and_bad_without_evaluations(data, tmp_path, capsys):
    def args(out: str) -> list[str]:
        flags = ["--no-progress", "--batch-size", "4", "--steps", "4", "--plateau-on", "validation"]
        return [*train_prior_argv(data, tmp_path / out, "tiny"), *flags]

    assert main([*args("run"), "--eval-every", "2"]) == 0
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["plateau_on"] == "validation"
    code = main([*args("run2"), "--eval-every", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "needs loop.eval_every > 0" in err


def test_cli_unknown_preset_names_the_presets(data, tmp_path, capsys):
    code = main(train_prior_argv(data, tmp_path / "run", "nonexistent"))
    assert code == 2
    assert "tiny" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tiny", "emoji"])
def test_presets_are_valid_train_configs(name):
    from dalle_zero.config import load_config_source

    data, _ = load_config_source(name, prefix="prior_")
    data["model"].update(text_vocab_size=300, text_seq_len=48, image_vocab_size=512, image_grid=8)
    cfg = PriorTrainConfig.from_dict(data)
    assert cfg.loop.clip_grad_norm == 4.0 and cfg.betas == (0.9, 0.96)


def test_token_folder_without_splits_trains_on_everything_without_validation(data, tmp_path):
    items = [(f"s{i}", c, x.view(GRID, GRID)) for i, (c, x) in enumerate(examples())]
    folder = write_token_shards(tmp_path / "tokens", items, image_grid=GRID, image_vocab_size=IMAGE_VOCAB)
    task = PriorTask(prior_config(data, tokens=str(folder)))
    assert len(task.train_dataset()) == len(items)
    assert task.evaluate(build_model(task.cfg), 0, tmp_path) == {}


def test_missing_training_split_is_a_clear_error(data, tmp_path):
    with pytest.raises(ValueError, match="no split 'everything'"):
        PriorTask(prior_config(data, train_split="everything"))
