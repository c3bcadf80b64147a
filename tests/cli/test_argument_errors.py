"""Bad command-line arguments are one line, ``dalle: error: ...``, found before any work starts.

Each of these used to end in a traceback: ``--device bogus`` (RuntimeError), ``--device cuda`` on a
CPU-only build (AssertionError), ``--grid-scale 100000`` (MemoryError, after sampling), ``--out`` naming
a file (FileExistsError, after sampling: the work was lost) and a train config ``{"model": 5}``
(TypeError). ``dalle eval --inception`` loaded (ran) the TorchScript file with no check at all.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from dalle_zero.cli.main import main
from dalle_zero.evaluation.inception import TorchScriptInception, sha256_file
from tests.factories.pipelines import tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli_errors") / "model"
    tiny_pipeline().save_pretrained(folder)
    return folder


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("dalle: error:") and "\n" not in err, err
    return err


no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device", "bogus"], "--device: 'bogus' is not a torch device"),
        (["--device", "meta"], "--device: 'meta' holds no data"),
        pytest.param(["--device", "cuda"], "--device cuda: this PyTorch build has no CUDA", marks=no_cuda),
        pytest.param(["--device", "cuda:3"], "--device cuda:3:", marks=no_cuda),
        (["--grid-scale", "100000"], "--grid-scale must be in [1, 256], got 100000"),
        (["--grid-scale", "0"], "--grid-scale must be in [1, 256], got 0"),
        (["--grid-scale", "200", "-n", "16"], "--grid-scale 200 makes a grid of 12800x12800 pixels"),
        (["--out", "{file}"], "exists and is not a folder"),
        (["--out", "{file}/sub"], "is a file, so the folder"),
    ],
)
def test_generate_argument_errors_are_one_line(model_dir, tmp_path, capsys, extra, message):
    (tmp_path / "file").write_text("not a folder")
    extra = [a.format(file=tmp_path / "file") for a in extra]
    argv = ["generate", "--model", str(model_dir), "a red star", "--out", str(tmp_path / "o"), "--no-progress"]
    assert main([*argv, *extra]) == 2
    assert message in one_line_error(capsys)


def test_an_out_that_is_a_file_is_refused_before_sampling(model_dir, tmp_path, capsys):
    """Checked first: many samples would otherwise be drawn, then lost (it used to fail only at the end)."""
    (tmp_path / "results").write_text("an earlier result")
    argv = ["generate", "--model", str(model_dir), "a red star", "-n", "64", "--batch-size", "64", "--no-progress"]
    start = time.perf_counter()
    assert main([*argv, "--out", str(tmp_path / "results")]) == 2
    assert time.perf_counter() - start < 5
    assert "--out" in one_line_error(capsys)
    assert (tmp_path / "results").read_text() == "an earlier result"


def test_serve_refuses_an_unknown_device_in_one_line(model_dir, capsys):
    assert main(["serve", "--model", str(model_dir), "--device", "bogus"]) == 2
    assert "--device: 'bogus' is not a torch device" in one_line_error(capsys)


@pytest.mark.parametrize(
    "device, message",
    [("bogus", "--device: 'bogus' is not a torch device"),
     pytest.param("cuda", "--device cuda: this PyTorch build has no CUDA", marks=no_cuda)],
)
def test_encode_refuses_an_unusable_device_in_one_line_and_writes_nothing(model_dir, tmp_path, capsys, device, message):
    out = tmp_path / "tokens"
    args = ["encode", "--dvae", str(model_dir / "dvae"), "--data", str(tmp_path), "--out", str(out)]
    assert main([*args, "--device", device]) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


# ---- train configs whose sections are not objects


def _config(tmp_path: Path, content) -> Path:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize("stage", ["dvae", "prior", "clip", "evaluator"])
@pytest.mark.parametrize("content, field", [({"model": 5}, "model"), ({"loop": [1, 2]}, "loop")])
def test_a_train_config_with_a_section_that_is_not_an_object_is_one_line(tmp_path, capsys, stage, content, field):
    cfg = _config(tmp_path, content)
    (tmp_path / "data").mkdir()
    argv = ["train", stage, "--config", str(cfg), "--out", str(tmp_path / "run"), "--data", str(tmp_path / "data")]
    if stage == "prior":
        argv = ["train", "prior", "--config", str(cfg), "--out", str(tmp_path / "run"), "--tokens", "t",
                "--tokenizer", "k"]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert str(cfg) in err and f"field '{field}' must be a JSON object" in err


# ---- dalle eval: --out and the Inception file checked before any work


class _TinyNet(nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "net.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_TinyNet()).save(str(path))
    return path


def _eval_argv(tmp_path: Path, *extra: str) -> list[str]:
    """Folders good enough to pass the first checks; the evaluator folder does not exist, so an eval that
    gets past the checks under test fails on it (and says so)."""
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "splits.json").write_text("{}")
    return ["eval", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"),
            "--evaluator", str(tmp_path / "no-evaluator"), *extra]


def test_eval_refuses_an_out_that_is_a_file_before_loading_anything(tmp_path, capsys):
    (tmp_path / "results").write_text("x")
    assert main(_eval_argv(tmp_path, "--out", str(tmp_path / "results"))) == 2
    assert "--out:" in one_line_error(capsys)


def test_eval_refuses_an_inception_file_without_its_hash(tmp_path, scripted, capsys):
    assert main(_eval_argv(tmp_path, "--out", str(tmp_path / "o"), "--inception", str(scripted))) == 2
    err = one_line_error(capsys)
    assert "--inception-sha256" in err and "--trust-inception" in err and sha256_file(scripted) in err


@pytest.mark.parametrize(
    "sha, message",
    [
        ("0" * 64, "not the expected 0000"),
        ("abc", "--inception-sha256: expected 64 hexadecimal digits"),
    ],
)
def test_eval_refuses_an_inception_file_whose_hash_differs(tmp_path, scripted, capsys, sha, message):
    argv = _eval_argv(tmp_path, "--out", str(tmp_path / "o"), "--inception", str(scripted), "--inception-sha256", sha)
    assert main(argv) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize("gate", ["sha256", "trust"])
def test_eval_goes_on_with_the_right_hash_or_trust(tmp_path, scripted, capsys, gate):
    extra = ["--inception-sha256", sha256_file(scripted).upper()] if gate == "sha256" else ["--trust-inception"]
    argv = _eval_argv(tmp_path, "--out", str(tmp_path / "o"), "--inception", str(scripted), *extra)
    assert main(argv) == 2
    assert "--evaluator: folder not found" in one_line_error(capsys)  # past the gate, on to the next check


def test_an_inception_hash_without_an_inception_file_is_an_error(tmp_path, capsys):
    assert main(_eval_argv(tmp_path, "--out", str(tmp_path / "o"), "--inception-sha256", "0" * 64)) == 2
    assert "give --inception too" in one_line_error(capsys)


def test_the_library_loads_an_inception_file_only_with_its_hash(scripted):
    with pytest.raises(ValueError, match="not the expected"):
        TorchScriptInception.from_file(scripted, sha256="f" * 64)
    net = TorchScriptInception.from_file(scripted, sha256=sha256_file(scripted))
    assert net(torch.rand(2, 3, 16, 16)).shape == (2, 2048)
