"""``dalle eval`` on a tiny model folder and the synthetic emoji dataset: figures, files, errors."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from dalle_zero.cli.main import main
from dalle_zero.data.metadata import read_metadata
from dalle_zero.evaluation.evaluate import EvalConfig, evaluate_model
from dalle_zero.evaluation.figures import figure_rows
from dalle_zero.evaluation.inception import sha256_file
from dalle_zero.evaluation.samples import draw_caption_lists, generate_for_captions, pick_evenly, sampling_options
from dalle_zero.models.clip import CLIPConfig, DalleCLIP
from dalle_zero.models.dvae import DiscreteVAE, DVAEConfig
from dalle_zero.models.evaluator import EmojiEvaluator, EvaluatorConfig
from dalle_zero.models.transformer import DalleTransformer, TransformerConfig
from dalle_zero.pipelines.text_to_image import TextToImagePipeline
from dalle_zero.sampling.rerank import rerank
from dalle_zero.tokenizers.bpe import BPETokenizer
from dalle_zero.training.labelled_images import label_heads
from tests.factories.emoji import make_emoji_dataset
from tests.factories.pipelines import randomize_


def _clip(vocab: int, seq: int, seed: int) -> DalleCLIP:
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_vocab_size=vocab,
        text_seq_len=seq,
        text_n_layer=1,
        text_n_head=2,
        text_n_embd=32,
        image_size=32,
        image_widths=(8, 16),
        embed_dim=32,
    )
    return DalleCLIP(cfg).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A dataset, a model folder (random weights), an evaluator folder and a second CLIP folder."""
    root = tmp_path_factory.mktemp("eval_cli")
    data = make_emoji_dataset(root)
    meta = read_metadata(data)
    tok = BPETokenizer.train([r["caption"] for r in meta.values()], vocab_size=300, text_seq_len=16, min_frequency=1)
    torch.manual_seed(0)
    dvae = DiscreteVAE(DVAEConfig(image_size=32, group_count=3, n_blk_per_group=1, n_hid=8, n_init=8, vocab_size=32))
    prior = randomize_(
        DalleTransformer(
            TransformerConfig(
                n_layer=2,
                n_head=2,
                n_embd=32,
                text_vocab_size=tok.vocab_size,
                text_seq_len=16,
                image_vocab_size=32,
                image_grid=8,
                conv_kernel_size=3,
            )
        ),
        seed=3,
        std=0.1,
    )
    TextToImagePipeline(tok, dvae.eval(), prior, _clip(tok.vocab_size, 16, 1)).save_pretrained(root / "model")
    rows = [meta[s] for s in json.loads((data / "splits.json").read_text())["train"]]
    torch.manual_seed(2)
    EmojiEvaluator(
        EvaluatorConfig(image_size=32, widths=(8, 16), heads=label_heads(rows, ("category", "tone", "style")))
    ).save_pretrained(root / "evaluator" / "model")
    _clip(tok.vocab_size, 16, 7).save_pretrained(root / "rclip")
    return {
        "root": root,
        "data": data,
        "model": root / "model",
        "evaluator": root / "evaluator",
        "clip": root / "rclip",
    }


class _FakeInception(nn.Module):
    """The interface of a TorchScript Inception-v3 (299 px, 0..255) with random weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 7, stride=8)
        self.proj = nn.Linear(16, 2048)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        f = torch.relu(self.proj(torch.relu(self.conv((img - 128.0) / 128.0)).mean(dim=(2, 3))))
        if return_features:
            return f
        return torch.softmax(self.fc(f), dim=1)


def _argv(tiny: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--model",
        str(tiny["model"]),
        "--data",
        str(tiny["data"]),
        "--evaluator",
        str(tiny["evaluator"]),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_eval_cli_writes_finite_figures_for_every_split_and_a_report(tiny, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(_argv(tiny, out, "--clip", str(tiny["clip"]), "--samples", "6", "--candidates", "2")) == 0
    printed = capsys.readouterr().out
    assert "in-house" in printed and "report:" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["splits"]) == {"train", "validation", "unseen_compositions", "unseen_concepts"}
    for split, f in results["splits"].items():
        for key in (
            "fid",
            "kid_mean",
            "is_mean",
            "r_precision",
            "bits_per_image_token",
            "bits_per_text_token",
            "reranker_score_mean",
        ):
            assert math.isfinite(f[key]), (split, key, f[key])
        assert f["fid"] >= 0 and 1.0 <= f["is_mean"] and 0.0 <= f["r_precision"] <= 1.0
        assert (out / "samples" / f"{split}_generated.png").is_file()
    comp = results["splits"]["unseen_compositions"]
    assert comp["heldout_attribute_n"] > 0 and 0.0 <= comp["heldout_attribute_accuracy"] <= 1.0
    for prefix in ("real_", "recon_"):  # the same read-out on the real images and their dVAE round trip
        assert 0.0 <= comp[f"{prefix}heldout_attribute_accuracy"] <= 1.0
        assert 0.0 <= comp[f"{prefix}style_accuracy"] <= 1.0
    d = results["dvae"]
    assert math.isfinite(d["psnr"]) and 0 < d["codebook_perplexity"] <= 32 and 0 < d["codebook_usage"] <= 1
    html = (out / "report.html").read_text()
    assert "not comparable to published FID" in html and "R-precision" in html
    assert (out / "samples" / "dvae_reconstructions.png").is_file()


def test_eval_cli_with_a_relative_out_folder_writes_its_report(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(_argv(tiny, Path("runs/eval"), "--samples", "4", "--split", "validation")) == 0
    html = (tmp_path / "runs" / "eval" / "report.html").read_text()
    assert 'src="samples/validation_generated.png"' in html
    assert (tmp_path / "runs" / "eval" / "samples" / "validation_generated.png").is_file()


def test_eval_cli_passes_guidance_nucleus_and_int8_settings_to_the_sampler(tiny, tmp_path):
    out = tmp_path / "eval"
    extra = ("--split", "validation", "--samples", "3", "--guidance-scale", "2.5", "--top-p", "0.9", "--int8")
    assert main(_argv(tiny, out, *extra)) == 0
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["guidance_scale"] == 2.5 and settings["top_p"] == 0.9 and settings["int8"] is True
    assert main(_argv(tiny, tmp_path / "bad", "--guidance-scale", "-1")) == 2  # a one-line error, no traceback


def test_eval_cli_takes_the_folders_guidance_but_keeps_its_own_candidate_count(tiny, tmp_path):
    import shutil

    from dalle_zero.pipelines.sampling_defaults import SAMPLING_NAME

    model = tmp_path / "model"
    shutil.copytree(tiny["model"], model)
    (model / SAMPLING_NAME).write_text(json.dumps({"guidance_scale": 2.0, "temperature": 0.9, "candidates": 4}))
    argv = _argv(tiny, tmp_path / "eval", "--split", "validation", "--samples", "3")
    argv[argv.index("--model") + 1] = str(model)
    assert main(argv) == 0
    settings = json.loads((tmp_path / "eval" / "results.json").read_text())["settings"]
    assert (settings["guidance_scale"], settings["temperature"], settings["candidates"]) == (2.0, 0.9, 1)


@pytest.mark.slow
def test_eval_cli_adds_standard_fid_and_is_with_a_torchscript_inception(tiny, tmp_path):
    torch.manual_seed(0)
    inception = tmp_path / "inception.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_FakeInception()).save(str(inception))
    out = tmp_path / "eval"
    argv = _argv(tiny, out, "--split", "unseen_concepts", "--samples", "4", "--inception", str(inception))
    argv += ["--inception-sha256", sha256_file(inception)]  # without it (or --trust-inception) it is not loaded
    assert main(argv) == 0
    f = json.loads((out / "results.json").read_text())["splits"]["unseen_concepts"]
    assert math.isfinite(f["standard_fid"]) and f["standard_fid"] >= 0
    assert 1.0 <= f["standard_is_mean"] <= 1008
    assert "Inception-v3" in (out / "report.html").read_text()


def test_evaluation_is_repeatable_with_the_same_seed(tiny):
    pipeline = TextToImagePipeline.from_pretrained(tiny["model"])
    evaluator = EmojiEvaluator.from_pretrained(tiny["evaluator"] / "model")
    config = EvalConfig(splits=("unseen_concepts",), samples=4, dvae_images=4, kid_subsets=3)
    a = evaluate_model(pipeline, tiny["data"], evaluator, config=config, progress=False)
    b = evaluate_model(pipeline, tiny["data"], evaluator, config=config, progress=False)
    assert a["splits"] == b["splits"]
    assert a["samples"]["unseen_concepts"] == b["samples"]["unseen_concepts"]
    assert any("FID" in r.name for r in figure_rows(a))


def test_each_unseen_phrasing_template_is_also_read_alone(tiny):
    pipeline = TextToImagePipeline.from_pretrained(tiny["model"])
    evaluator = EmojiEvaluator.from_pretrained(tiny["evaluator"] / "model")
    config = EvalConfig(
        splits=("unseen_compositions",), samples=12, dvae_images=4, kid_subsets=3,
        caption_kinds=("canonical", "unseen_phrasing"),
    )
    results = evaluate_model(pipeline, tiny["data"], evaluator, config=config, progress=False)
    unseen = results["splits"]["unseen_compositions"]["captions"]["unseen_phrasing"]
    templates = unseen["templates"]
    assert [t["template"] for t in templates] == [1, 2, 3]
    assert templates[1]["example_caption"].startswith("a picture of ")
    assert " as a " in templates[2]["example_caption"]
    assert sum(t["n_images"] for t in templates) == unseen["n_images"]
    # the templates' read-outs are the kind's, split up: their weighted mean is the kind's figure
    n = sum(t["heldout_attribute_n"] for t in templates)
    assert n == unseen["heldout_attribute_n"] > 0
    read = [(t["heldout_attribute_accuracy"], t["heldout_attribute_n"]) for t in templates]
    right = sum(acc * k for acc, k in read if k)
    assert right / n == pytest.approx(unseen["heldout_attribute_accuracy"])
    titles = [r.name for r in figure_rows(results)]
    assert "unseen compositions, unseen phrasing, template 2: held-out tone/style" in titles


def test_the_evaluation_keeps_the_rerankers_best_of_the_candidates_drawn_for_each_caption(tiny):
    pipeline = TextToImagePipeline.from_pretrained(tiny["model"])
    captions = ["a red apple, noto style", "a blue car, twemoji style"]
    config = EvalConfig(candidates=3, batch_size=4)  # a sampling batch holds candidates of both captions
    drawn = pipeline.generate_batch(
        captions, 3, candidates=3, generator=torch.Generator().manual_seed(5), **sampling_options(config)
    )  # every candidate, in the order drawn
    grid = pipeline.transformer.config.image_grid
    assert drawn.codes.shape == (2, 3, grid, grid) and drawn.images.shape == (2, 3, 3, 32, 32)
    torch.testing.assert_close(drawn.images.flatten(0, 1), pipeline.decode(drawn.codes.flatten(0, 1)))
    best, scores = generate_for_captions(pipeline, captions, config, generator=torch.Generator().manual_seed(5))
    for i, caption in enumerate(captions):
        s, order = rerank(pipeline.clip, pipeline.tokenizer, caption, drawn.images[i])
        torch.testing.assert_close(best[i], drawn.images[i, int(order[0])])
        assert scores[i] == s.max()


def test_a_caption_lists_images_depend_on_its_seed_not_on_the_lists_drawn_beside_it(tiny):
    pipeline = TextToImagePipeline.from_pretrained(tiny["model"])
    config = EvalConfig(candidates=2, batch_size=4)  # chunks of 2 captions
    red = ["a red apple, noto style", "a red car", "red heart"]
    alone = draw_caption_lists(pipeline, {"red": red}, config)
    beside = draw_caption_lists(pipeline, {"blue": ["a blue car", "blue heart"], "red": red}, config)
    assert alone["red"][0].shape == (3, 3, 32, 32) and alone["red"][1].shape == (3,)
    assert torch.equal(alone["red"][0], beside["red"][0]) and torch.equal(alone["red"][1], beside["red"][1])
    other = draw_caption_lists(pipeline, {"red": red}, EvalConfig(candidates=2, batch_size=4, seed=1))
    assert not torch.equal(alone["red"][0], other["red"][0])


def test_two_sampling_processes_draw_the_images_one_process_draws(tiny):
    pipeline = TextToImagePipeline.from_pretrained(tiny["model"])
    lists = {"a": ["a red apple, noto style", "a red car", "red heart"], "b": ["a blue car", "blue heart"]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes runs on 2 cores: the same arithmetic
    try:
        one = draw_caption_lists(pipeline, lists, EvalConfig(candidates=2, batch_size=2))
        two = draw_caption_lists(pipeline, lists, EvalConfig(candidates=2, batch_size=2, workers=2))
    finally:
        torch.set_num_threads(threads)
    for name in lists:
        assert torch.equal(one[name][0], two[name][0]) and torch.equal(one[name][1], two[name][1])


class _DiesInASamplingProcess(TextToImagePipeline):
    """A pipeline whose copy in a sampling process ends that process as it arrives (out of memory, say)."""

    def __setstate__(self, state: dict) -> None:
        if os.environ.get("DIES_IN_A_CHILD_OF") not in (None, str(os.getpid())):
            os._exit(1)
        self.__dict__.update(state)


def test_a_sampling_process_that_dies_is_a_one_line_error_not_a_hang(tiny, monkeypatch):
    monkeypatch.setenv("DIES_IN_A_CHILD_OF", str(os.getpid()))  # the sampling processes inherit it
    pipeline = TextToImagePipeline.from_pretrained(tiny["model"])
    dying = _DiesInASamplingProcess(pipeline.tokenizer, pipeline.dvae, pipeline.transformer, pipeline.clip)
    lists = {"a": ["a red apple, noto style", "a red car", "red heart"]}
    with pytest.raises(RuntimeError, match="a sampling process stopped unexpectedly"):
        draw_caption_lists(dying, lists, EvalConfig(candidates=2, batch_size=2, workers=2))


def test_the_reranker_is_refused_as_the_r_precision_model(tiny):
    pipeline = TextToImagePipeline.from_pretrained(tiny["model"])
    evaluator = EmojiEvaluator.from_pretrained(tiny["evaluator"] / "model")
    with pytest.raises(ValueError, match="reranker"):
        evaluate_model(pipeline, tiny["data"], evaluator, r_precision_clip=pipeline.clip, progress=False)


def test_pick_evenly_is_deterministic_and_spread():
    items = [f"s{i}" for i in range(10)]
    assert pick_evenly(items, 3) == ["s0", "s4", "s9"]
    assert pick_evenly(items, 20) == items


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--model", "--model: model folder not found"),
        ("--data", "--data: data folder not found"),
        ("--evaluator", "--evaluator: folder not found"),
    ],
)
def test_missing_folders_are_one_line_errors(tiny, tmp_path, capsys, flag, message):
    args = {"--model": tiny["model"], "--data": tiny["data"], "--evaluator": tiny["evaluator"]}
    args[flag] = tmp_path / "missing"
    argv = ["eval", *[x for k, v in args.items() for x in (k, str(v))], "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dalle: error: {message}") and err.count("\n") == 1
