"""`dalle generate --examples` lists a model's example captions; captions it cannot read well are
warned about on stderr; captions with no text are one-line errors."""

from __future__ import annotations

import pytest

from dalle_zero.cli.main import main
from dalle_zero.pipelines.text_to_image import EXAMPLES_NAME, TextToImagePipeline
from tests.factories.pipelines import tiny_pipeline

EXAMPLES = ["a red star", "a blue   heart", "a 빨간 square"]


@pytest.fixture(scope="module")
def plain():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, plain):
    out = tmp_path_factory.mktemp("models") / "with_examples"
    TextToImagePipeline(plain.tokenizer, plain.dvae, plain.transformer, examples=EXAMPLES).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def bare_model_dir(tmp_path_factory, plain):
    return plain.save_pretrained(tmp_path_factory.mktemp("models") / "bare")


def generate(argv: list[str], tmp_path) -> int:
    return main(["generate", *argv, "-n", "1", "--seed", "0", "--out", str(tmp_path / "out"), "--no-progress"])


def test_examples_prints_the_example_captions_one_per_line(model_dir, capsys):
    assert main(["generate", "--model", str(model_dir), "--examples"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["a red star", "a blue heart", "a 빨간 square"]


def test_examples_of_a_model_without_any_says_so(bare_model_dir, capsys):
    assert main(["generate", "--model", str(bare_model_dir), "--examples"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "has no example captions" in captured.err and EXAMPLES_NAME in captured.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--examples", "a cat"], "drop the captions"),
        ([], "give at least one caption"),
    ],
)
def test_examples_with_captions_and_no_captions_without_examples_are_one_line_errors(model_dir, capsys, argv, message):
    assert main(["generate", "--model", str(model_dir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dalle: error:") and message in err and "\n" not in err


def test_a_malformed_examples_file_is_a_one_line_error(plain, tmp_path, capsys):
    folder = plain.save_pretrained(tmp_path / "m")
    (folder / EXAMPLES_NAME).write_text('["a red star", 7]')
    assert main(["generate", "--model", str(folder), "--examples"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dalle: error:") and EXAMPLES_NAME in err and "found 7" in err and "\n" not in err


def test_a_caption_of_unseen_words_warns_on_stderr_and_is_still_drawn(model_dir, tmp_path, capsys):
    assert generate(["--model", str(model_dir), "a zebra unicorn"], tmp_path) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("dalle: warning:")]
    assert len(warnings) == 1 and '"zebra", "unicorn"' in warnings[0]
    assert "dalle generate --examples" in warnings[0]  # this model has examples to point to
    assert (tmp_path / "out" / "00_a-zebra-unicorn_00.png").is_file()


def test_a_caption_of_seen_words_draws_without_a_warning(model_dir, tmp_path, capsys):
    assert generate(["--model", str(model_dir), "a purple triangle"], tmp_path) == 0
    assert "warning" not in capsys.readouterr().err


def test_the_warning_points_to_examples_only_when_the_model_has_some(bare_model_dir, tmp_path, capsys):
    assert generate(["--model", str(bare_model_dir), "zebra"], tmp_path) == 0
    err = capsys.readouterr().err
    assert 'dalle: warning: most words of this caption never appeared in training: "zebra"' in err
    assert "--examples" not in err


@pytest.mark.parametrize("caption, message", [("", "is empty"), ("\x1b[31m\x07", "has no text to draw")])
def test_a_caption_with_no_text_is_a_one_line_error(model_dir, tmp_path, capsys, caption, message):
    assert generate(["--model", str(model_dir), caption], tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dalle: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()
