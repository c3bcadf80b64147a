"""End to end: `dalle assemble` then `dalle generate` on a tiny model; user errors are one line."""

from __future__ import annotations

import json

import pytest
import torch

from dalle_zero.cli.main import main
from dalle_zero.pipelines.text_to_image import to_pil
from tests.factories.pipelines import tiny_clip, tiny_dvae, tiny_tokenizer, tiny_transformer


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Components saved the way training leaves them: a tokenizer folder, run folders with model/ inside."""
    root = tmp_path_factory.mktemp("parts")
    tok = tiny_tokenizer()
    tok.save_pretrained(root / "tokenizer")
    tiny_dvae().save_pretrained(root / "dvae_run" / "model")
    tiny_transformer(tok.vocab_size).save_pretrained(root / "prior_run" / "model")
    tiny_clip(tok.vocab_size).save_pretrained(root / "clip_model")
    return root


@pytest.fixture(scope="module")
def model_dir(parts):
    out = parts / "model"
    rc = main(
        f"assemble --tokenizer {parts}/tokenizer --dvae {parts}/dvae_run --prior {parts}/prior_run "
        f"--clip {parts}/clip_model --out {out}".split()
    )
    assert rc == 0
    return out


def test_assemble_writes_a_pipeline_folder(model_dir):
    meta = json.loads((model_dir / "pipeline.json").read_text())
    assert meta["model_type"] == "pipeline"
    for name in ("tokenizer", "dvae", "transformer", "clip"):
        assert (model_dir / name / "config.json").is_file()


def test_generate_writes_pngs_a_grid_and_json_per_caption(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = f"generate --model {model_dir} -n 2 --candidates 3 --seed 7 --top-k 10 --out {out} --no-progress".split()
    rc = main([*argv, "A red star!", "a blue heart"])
    assert rc == 0
    assert "seed 7" in capsys.readouterr().out
    for stem in ("00_a-red-star", "01_a-blue-heart"):
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["seed"] == 7 and record["settings"]["top_k"] == 10 and record["settings"]["candidates"] == 3
        files = [im["file"] for im in record["images"]]
        assert files == [f"{stem}_00.png", f"{stem}_01.png"]
        scores = [im["score"] for im in record["images"]]
        assert scores[0] >= scores[1]
        assert all((out / f).is_file() for f in files) and (out / f"{stem}_grid.png").is_file()
    from PIL import Image

    assert Image.open(out / "00_a-red-star_00.png").size == (16, 16)  # originals are not resized
    assert Image.open(out / "00_a-red-star_grid.png").size[1] >= 128  # the grid is upscaled for viewing


def test_generate_is_reproducible_with_a_seed_and_primes_from_an_image(model_dir, tmp_path):
    image = tmp_path / "cat.png"
    to_pil(torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0)))[0].save(image)
    args = f"generate --model {model_dir} -n 2 --seed 3 --prime-image {image} --prime-rows 1 --no-progress".split()
    args.append("a green circle")
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    png = "00_a-green-circle_01.png"
    assert (tmp_path / "a" / png).read_bytes() == (tmp_path / "b" / png).read_bytes()


def test_generate_samples_with_int8_weights_when_asked(model_dir, tmp_path):
    out = tmp_path / "q"
    assert main(f"generate --model {model_dir} -n 1 --seed 1 --int8 --out {out} --no-progress a-cat".split()) == 0
    record = json.loads((out / "00_a-cat.json").read_text())
    assert record["settings"]["int8"] is True and (out / "00_a-cat_00.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "{tmp}/absent", "a cat"], "model folder not found"),
        (["--model", "{model}", "  "], "empty"),
        (["--model", "{model}", "a cat", "--prime-image", "{tmp}/missing.png"], "missing.png"),
        (["--model", "{model}", "a cat", "--temperature", "0"], "temperature"),
        (["--model", "{model}", "a cat", "-n", "4", "--candidates", "2"], "candidates"),
        (["--model", "{model}", "a cat", "--int8", "--device", "cuda"], "--int8"),
    ],
)
def test_user_errors_are_one_line(model_dir, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, model=model_dir) for a in argv]
    assert main(["generate", *argv, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dalle: error:") and message in err and "\n" not in err


def test_assemble_refuses_mismatched_components(parts, tmp_path, capsys):
    other = tiny_tokenizer(text_seq_len=12)
    other.save_pretrained(tmp_path / "tok12")
    rc = main(
        f"assemble --tokenizer {tmp_path}/tok12 --dvae {parts}/dvae_run --prior {parts}/prior_run "
        f"--out {tmp_path}/m".split()
    )
    assert rc == 2
    assert "text_seq_len is 12 but transformer text_seq_len is 8" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_assemble_refuses_a_component_of_the_wrong_kind(parts, tmp_path, capsys):
    rc = main(
        f"assemble --tokenizer {parts}/tokenizer --dvae {parts}/prior_run --prior {parts}/prior_run "
        f"--out {tmp_path}/m".split()
    )
    assert rc == 2
    assert "expected a 'dvae'" in capsys.readouterr().err


def test_assemble_reports_a_corrupt_component_config_in_one_line(parts, tmp_path, capsys):
    broken = tmp_path / "dvae"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    rc = main(
        f"assemble --tokenizer {parts}/tokenizer --dvae {broken} --prior {parts}/prior_run --out {tmp_path}/m".split()
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not valid JSON" in err and "\n" not in err
    assert not (tmp_path / "m").exists()


def test_assemble_takes_a_prior_runs_best_model_unless_last_and_stores_examples(parts, tmp_path, capsys):
    import shutil

    from dalle_zero.models.transformer import DalleTransformer
    from dalle_zero.pipelines.text_to_image import TextToImagePipeline

    run = tmp_path / "prior_run"
    shutil.copytree(parts / "prior_run", run)
    best = tiny_transformer(tiny_tokenizer().vocab_size, seed=1)  # other weights than model/
    best.save_pretrained(run / "best_model")
    (run / "best.json").write_text(json.dumps({"step": 40, "figure": "loss", "value": 3.25}))
    examples = tmp_path / "examples.txt"
    examples.write_text("red heart\n\npizza, noto style\n", encoding="utf-8")
    common = f"assemble --tokenizer {parts}/tokenizer --dvae {parts}/dvae_run --prior {run}"
    assert main(f"{common} --out {tmp_path / 'best'} --examples {examples}".split()) == 0
    assert "best model of the run (loss 3.25 at step 40)" in capsys.readouterr().out
    assert main(f"{common} --out {tmp_path / 'last'} --last".split()) == 0
    chosen = TextToImagePipeline.from_pretrained(tmp_path / "best")
    last = TextToImagePipeline.from_pretrained(tmp_path / "last")
    assert chosen.examples == ["red heart", "pizza, noto style"] and last.examples == []
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))  # noqa: E731
    assert same(chosen.transformer, best)
    assert same(last.transformer, DalleTransformer.from_pretrained(run / "model"))
    assert not same(chosen.transformer, last.transformer)


def test_assemble_with_a_missing_examples_file_is_a_one_line_error(parts, tmp_path, capsys):
    rc = main(
        f"assemble --tokenizer {parts}/tokenizer --dvae {parts}/dvae_run --prior {parts}/prior_run "
        f"--out {tmp_path / 'm'} --examples {tmp_path / 'nope.txt'}".split()
    )
    err = capsys.readouterr().err
    assert rc != 0 and "--examples: file not found" in err and len(err.strip().splitlines()) == 1
