"""Specification of the sampling settings a model folder recommends (``sampling.json``): what a call,
``dalle generate``, ``dalle eval`` and the HTTP API use for the settings they leave unset."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dalle_zero.cli.main import main
from dalle_zero.pipelines.sampling_defaults import SAMPLING_NAME, SamplingDefaults
from dalle_zero.pipelines.text_to_image import TextToImagePipeline
from dalle_zero.server.api import GenerationService
from dalle_zero.server.generate_request import ServerLimits, parse_generate_request

RECOMMENDED = SamplingDefaults(guidance_scale=3.0, guidance_top_p=0.9, temperature=0.8, candidates=6)


def with_sampling(pipeline: TextToImagePipeline, sampling: SamplingDefaults | None) -> TextToImagePipeline:
    return TextToImagePipeline(
        pipeline.tokenizer, pipeline.dvae, pipeline.transformer, pipeline.clip, sampling=sampling
    )


def test_the_recommendation_round_trips_and_a_folder_without_one_samples_as_the_paper(pipeline, tmp_path):
    with_sampling(pipeline, RECOMMENDED).save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / SAMPLING_NAME).read_text())["guidance_scale"] == 3.0
    assert TextToImagePipeline.from_pretrained(tmp_path / "m").sampling == RECOMMENDED
    pipeline.save_pretrained(tmp_path / "plain")
    assert not (tmp_path / "plain" / SAMPLING_NAME).exists()
    plain = TextToImagePipeline.from_pretrained(tmp_path / "plain").sampling
    assert (plain.temperature, plain.guidance_scale, plain.candidates) == (1.0, 1.0, None)


def test_unset_settings_take_the_recommendation_and_given_ones_win(pipeline_with_clip):
    p = with_sampling(pipeline_with_clip, RECOMMENDED)
    unset = p("a red star", n=2, seed=3)
    explicit = pipeline_with_clip("a red star", n=2, seed=3, candidates=6, guidance_scale=3.0,
                                  guidance_top_p=0.9, temperature=0.8)
    paper = p("a red star", n=2, seed=3, candidates=2, guidance_scale=1.0, temperature=1.0)
    assert torch.equal(unset.codes[0], explicit.codes[0])
    assert not torch.equal(unset.codes[0], paper.codes[0])


def test_the_recommended_candidates_never_fall_below_n_and_need_a_reranker(pipeline, pipeline_with_clip):
    assert with_sampling(pipeline_with_clip, RECOMMENDED).candidates_for(2) == 6
    assert with_sampling(pipeline_with_clip, RECOMMENDED).candidates_for(8) == 8
    assert with_sampling(pipeline, RECOMMENDED).candidates_for(2) == 2  # no CLIP: nothing to rerank


@pytest.mark.parametrize(
    "content, message",
    [
        ('[3]', "expected a JSON object, got a list"),
        ('{"guidance_scale": -1}', "guidance_scale"),
        ('{"temperature": 1e9}', "temperature"),  # outside what a request may ask for
        ('{"guidance_top_p": null}', "guidance_top_p"),  # plain guidance is 1
        ('{"candidates": 0}', "candidates"),
        ('{"top_k": 5}', "unknown field"),
        ('{"guidance_scale": 3', "not valid JSON"),
    ],
)
def test_a_malformed_sampling_file_is_a_one_line_error_naming_it(pipeline, tmp_path, content, message):
    pipeline.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / SAMPLING_NAME).write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        TextToImagePipeline.from_pretrained(tmp_path / "m")
    assert str(tmp_path / "m" / SAMPLING_NAME) in str(info.value) and "\n" not in str(info.value)


def test_dalle_generate_records_the_recommended_settings_it_used(pipeline_with_clip, tmp_path):
    with_sampling(pipeline_with_clip, RECOMMENDED).save_pretrained(tmp_path / "m")
    out = tmp_path / "out"
    args = ["generate", "--model", str(tmp_path / "m"), "a red star", "-n", "2", "--seed", "1", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    settings = json.loads(next(out.glob("*.json")).read_text())["settings"]
    assert (settings["guidance_scale"], settings["guidance_top_p"], settings["temperature"]) == (3.0, 0.9, 0.8)
    assert settings["candidates"] == 6
    assert main([*args, "--guidance-scale", "1", "--out", str(tmp_path / "out2")]) == 0
    assert json.loads(next((tmp_path / "out2").glob("*.json")).read_text())["settings"]["guidance_scale"] == 1.0


def test_the_api_fills_absent_fields_from_the_recommendation_within_its_limits(pipeline_with_clip):
    p = with_sampling(pipeline_with_clip, RECOMMENDED)
    limits = ServerLimits(max_images=4, max_candidates=5)
    request = parse_generate_request({"caption": "a red star", "n": 2}, p, limits)
    assert (request.guidance_scale, request.guidance_top_p, request.temperature) == (3.0, 0.9, 0.8)
    assert request.candidates == 5  # the recommended 6, capped by the server's limit
    asked = parse_generate_request({"caption": "a red star", "n": 2, "guidance_scale": 1.5}, p, limits)
    assert asked.guidance_scale == 1.5
    assert GenerationService(p, limits).info()["sampling"]["guidance_scale"] == 3.0


def test_dalle_assemble_stores_the_recommendation_and_refuses_candidates_without_a_reranker(
    pipeline_with_clip, tmp_path, capsys
):
    pipeline_with_clip.save_pretrained(tmp_path / "src")
    s = tmp_path / "src"
    parts = ["--tokenizer", str(s), "--dvae", str(s), "--prior", str(s)]
    assert main(["assemble", *parts, "--clip", str(s), "--out", str(tmp_path / "m"),
                 "--guidance-scale", "2.5", "--candidates", "8"]) == 0
    got = TextToImagePipeline.from_pretrained(tmp_path / "m").sampling
    assert (got.guidance_scale, got.candidates) == (2.5, 8)
    assert main(["assemble", *parts, "--out", str(tmp_path / "m2"), "--candidates", "8"]) == 2
    assert "--candidates above 1 needs a reranker" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()


def test_dalle_assemble_refuses_guidance_for_a_prior_run_that_never_saw_the_empty_caption(
    pipeline_with_clip, tmp_path, capsys
):
    s = tmp_path / "src"
    pipeline_with_clip.save_pretrained(s)
    parts = ["--tokenizer", str(s), "--dvae", str(s)]
    for prob, code in ((0.0, 2), (0.1, 0)):
        run = tmp_path / f"run{prob}"
        shutil.copytree(s / "transformer", run / "model")
        (run / "train_config.json").write_text(json.dumps({"null_caption_prob": prob}))
        out = tmp_path / f"m{prob}"
        assert main(["assemble", *parts, "--prior", str(run), "--out", str(out), "--guidance-scale", "3"]) == code
        assert out.exists() == (code == 0)
    assert "trained with null_caption_prob 0" in capsys.readouterr().err
    # without guidance the same run assembles: its unconditional model is never asked for
    assert main(["assemble", *parts, "--prior", str(tmp_path / "run0.0"), "--out", str(tmp_path / "m")]) == 0
