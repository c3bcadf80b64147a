"""``dalle demo`` end to end at a tiny size on a synthetic emoji dataset (no network), with resume."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest

from dalle_zero.cli.main import main
from dalle_zero.data.splits import SPLIT_NAMES
from dalle_zero.demo import DemoInterrupted, load_demo_config, run_demo, side_by_side
from dalle_zero.demo.budget import plan_steps, stage_seconds
from dalle_zero.demo.config import TRAIN_STAGES, StageSpec
from dalle_zero.demo.context import DemoContext, with_loop
from dalle_zero.demo.runner import STAGES, _run_stage, interrupted_seconds
from dalle_zero.demo.timed_training import replan
from dalle_zero.training import loop as loop_module
from tests.factories.emoji import make_emoji_dataset


@pytest.fixture(scope="module")
def emoji(tmp_path_factory) -> Path:
    return make_emoji_dataset(tmp_path_factory.mktemp("demo_data"))


def _finite_numbers(value: object) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _finite_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _finite_numbers(v)]
    return [value] if isinstance(value, float) else []


@pytest.mark.slow
def test_demo_runs_every_stage_resumes_after_an_interruption_and_skips_finished_stages(emoji, tmp_path, monkeypatch):
    config = load_demo_config("demo_tiny")
    monkeypatch.chdir(tmp_path)
    out = Path("demo")  # relative, as `dalle demo` is run by default (`--out demo`)
    logs: list[str] = []

    # 1. the prior trains 1 step (a tenth of its probe's plan), plans again from the rate it trained at
    # (and once more at half of the new plan, when that is past step 1), and is interrupted one step
    # into its last stretch, as a killed run would be (the loop checkpoints and returns)
    real_train = loop_module.train
    prior_calls: list[int | None] = []

    def stop_the_prior_early(*args, **kwargs):
        if Path(args[3]).name == "prior":
            prior_calls.append(kwargs.get("stop_after"))
            if kwargs.get("stop_after") is None:
                kwargs["stop_after"] = 1
        return real_train(*args, **kwargs)

    monkeypatch.setattr(loop_module, "train", stop_the_prior_early)
    with pytest.raises(DemoInterrupted, match="prior stopped at step"):
        run_demo(out, config, data=emoji, progress=False, log=logs.append)
    before_prior = list(STAGES)[: list(STAGES).index("prior")]
    assert all((out / "stages" / f"{s}.json").is_file() for s in before_prior)
    assert not (out / "stages" / "prior.json").exists()
    plan = json.loads((out / "stages" / "prior.plan.json").read_text())
    planned, replans = plan["steps"], plan["replanned"]
    assert prior_calls[0] == 1 and prior_calls[-1] is None and len(prior_calls) == len(replans) + 1
    assert replans[0]["at"] == 1 and [r["at"] for r in replans] == sorted({r["at"] for r in replans})
    assert 4 <= replans[0]["steps_before"] <= 10 and 4 <= planned <= 10  # clamped by the tiny preset
    new_counts = [r["steps_before"] for r in replans[1:]] + [planned]  # each plan is replaced by the next
    assert [line.strip().split(" (")[0] for line in logs if "planned again" in line] == [
        f"{n} steps planned again at step {r['at']}" for n, r in zip(new_counts, replans, strict=True)
    ]
    # the seconds the prior ran before it was stopped are kept; as if it had run 1000 s more before
    # the stop, so the resumed run's own seconds cannot pass for them
    stopped_path = out / "stages" / "prior.interrupted.json"
    stopped = interrupted_seconds(out, "prior")
    assert stopped > 0
    stopped_path.write_text(json.dumps({"seconds": stopped + 1000.0}))

    # 2. run again: finished stages are skipped, the prior resumes from its checkpoint with the plan made
    # before the interruption (no probe, no second re-plan) and the demo ends
    monkeypatch.setattr(loop_module, "train", real_train)
    logs.clear()
    report = run_demo(out, config, data=emoji, progress=False, log=logs.append)
    skipped = [line for line in logs if line.endswith("skipped")]
    assert len(skipped) == len(before_prior)
    assert not any("planned again" in line for line in logs)  # the plan made before the interruption holds
    prior_rows = [json.loads(x) for x in (out / "runs" / "prior" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in prior_rows) == planned
    prior_summary = json.loads((out / "stages" / "prior.json").read_text())
    assert prior_summary["steps"] == planned
    assert prior_summary["seconds"] > stopped + 1000.0 and not stopped_path.exists()
    summary_header = json.loads((out / "summary.json").read_text())["header"]
    assert summary_header["wall_minutes"] * 60 > stopped + 1000.0

    # 3. every artefact exists and every figure is finite
    assert report == (out / "report.html").resolve() and report.is_file()
    for stage in STAGES:
        assert (out / "stages" / f"{stage}.json").is_file(), stage
    for stage in TRAIN_STAGES:
        assert (out / "runs" / stage / "model" / "config.json").is_file(), stage
        assert (out / "plots" / f"{stage}_curves.png").is_file(), stage
    assert (out / "model" / "pipeline.json").is_file()
    showcase = json.loads((out / "showcase.json").read_text())
    for split in ("train", "unseen_compositions", "unseen_concepts"):
        entries = showcase["splits"][split]
        assert entries, split
        for e in entries:
            assert len(e["images"]) == config.showcase_n and all((out / p).is_file() for p in e["images"])
            assert e["scores"] == sorted(e["scores"], reverse=True)
    i2i = showcase["image_to_image"]
    assert i2i is not None and (out / i2i["original"]).is_file() and i2i["completions"]
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results["splits"]) == {"train", "validation", "unseen_compositions", "unseen_concepts"}
    for split, figures in results["splits"].items():
        for key in ("fid", "kid_mean", "is_mean", "r_precision", "bits_per_image_token", "bits_per_text_token"):
            assert figures[key] is not None and math.isfinite(figures[key]), (split, key)
    assert all(math.isfinite(x) for x in _finite_numbers(results["dvae"]))
    # the caption kinds: every kind on the kind splits, the canonical one elsewhere; concept figures
    for split, figures in results["splits"].items():
        kinds = set(figures["captions"])
        expected = set(config.eval.caption_kinds) if split in config.eval.kind_splits else {"canonical"}
        assert kinds == expected, split
        for kind, k in figures["captions"].items():
            assert 0.0 <= k["concept_top1"] <= k["concept_top5"] <= 1.0, (split, kind)
            assert ("heldout_attribute_accuracy" in k) == (split == "unseen_compositions" and kind != "name")
        assert 0.0 <= figures["recon_concept_top5"] <= 1.0 and 0.0 <= figures["real_concept_top5"] <= 1.0
        right = figures["captions"]["canonical"]["bits_per_image_right_caption"]
        assert math.isfinite(right) and right > 0
    # plain-word samples and the example captions stored with the model
    assert [e["caption"] for e in showcase["plain_words"]] == list(config.plain_captions)
    assert all((out / p).is_file() for e in showcase["plain_words"] for p in e["images"])
    from dalle_zero.pipelines.text_to_image import read_examples

    examples = read_examples(out / "model")
    assert examples[: len(config.plain_captions)] == list(config.plain_captions) and len(examples) > len(
        config.plain_captions
    )
    html = report.read_text()
    for text in (
        "dVAE reconstructions",
        "Training curves",
        "unseen compositions",
        "unseen concepts",
        "Image-to-image",
        "captions in plain words",
        "plain name",
        "unseen phrasing",
        "in-house",
        "not comparable to published FID",
        "reranker",
    ):
        assert text in html, text

    # 4. a third run finds everything done and only rewrites the report
    logs.clear()
    run_demo(out, config, data=emoji, progress=False, log=logs.append)
    assert sum(line.endswith("skipped") for line in logs) == len(STAGES)


def test_demo_refuses_to_resume_with_other_settings(emoji, tmp_path):
    config = load_demo_config("demo_tiny")
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo_config.json").write_text(
        json.dumps({"config": config.replace(minutes=2.0).to_dict(), "data": str(emoji.resolve())})
    )
    with pytest.raises(ValueError, match="other settings.*minutes"):
        run_demo(out, config, data=emoji, progress=False, log=lambda s: None)


def test_demo_cli_reports_a_missing_data_folder_in_one_line(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--data", str(tmp_path / "nope"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dalle: error: --data: data folder not found") and err.count("\n") == 1


def test_a_sigterm_between_training_loops_stops_the_demo_with_the_resume_message(emoji, tmp_path, capsys, monkeypatch):
    # a scheduler's SIGTERM while the demo is in a stage without a training loop (here the tokenizer's)
    real_tokenizer = STAGES["tokenizer"]

    def terminated(ctx):
        # without the demo's handler SIGTERM would end the whole test run instead of failing this test
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "dalle demo set no SIGTERM handler"
        os.kill(os.getpid(), signal.SIGTERM)
        return real_tokenizer(ctx)

    monkeypatch.setitem(STAGES, "tokenizer", terminated)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "d"
    argv = ["demo", "--config", "demo_tiny", "--data", str(emoji), "--out", str(out), "--no-progress"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err == "dalle demo: stopped; run the same command again to resume\n"
    assert (out / "stages" / "data.json").is_file() and not (out / "stages" / "tokenizer.json").exists()
    assert interrupted_seconds(out, "tokenizer") > 0  # the stopped stage's seconds count on resume
    assert signal.getsignal(signal.SIGTERM) is before


def test_steps_are_the_stage_share_of_the_time_left_times_the_measured_rate():
    # 600 s left, this stage has 0.5 of the remaining shares (0.5 + 0.25 + 0.25) -> 300 s
    seconds = stage_seconds(0.5, [0.5, 0.25, 0.25], 600.0)
    assert seconds == pytest.approx(300.0)
    assert plan_steps(seconds, 2.0, safety=0.9, min_steps=10, max_steps=10_000) == 540
    assert plan_steps(seconds, 2.0, safety=0.9, min_steps=10, max_steps=100) == 100
    assert plan_steps(0.0, 2.0, safety=0.9, min_steps=10, max_steps=100) == 10
    assert stage_seconds(0.5, [0.5], -5.0) == 0.0


def test_a_replan_gives_the_seconds_left_to_the_rate_the_stage_trained_at():
    config = load_demo_config("demo")
    spec = StageSpec(min_steps=20, max_steps=5_000)
    plan = {"steps": 300, "rate": 3.0, "seconds": 120.0, "source": "time budget"}
    # at step 30, training at 3 steps/s, 14 s gone (the probe too): 106 s left
    again = replan(plan, 30, 3.0, 14.0, config, spec)
    assert again["steps"] == 30 + math.floor(config.replan_safety * 106.0 * 3.0)
    assert config.replan_safety > config.safety  # the stage's own rate is a surer guide than the probe
    assert again["replanned"] == [{"at": 30, "rate": 3.0, "steps_before": 300}]
    assert {k: again[k] for k in ("rate", "seconds", "source")} == {k: plan[k] for k in ("rate", "seconds", "source")}
    # half-way the machine runs faster: the second plan gives the 60 s left to the new rate, and both
    # re-plans stay on record
    twice = replan(again, 160, 4.0, 60.0, config, spec)
    assert twice["steps"] == 160 + math.floor(config.replan_safety * 60.0 * 4.0)
    assert [r["at"] for r in twice["replanned"]] == [30, 160]
    assert twice["replanned"][1]["steps_before"] == again["steps"]
    assert replan(plan, 30, 300.0, 5.0, config, spec)["steps"] == 5_000  # clamped by the stage's max_steps
    assert replan(plan, 10, 1.0, 130.0, config, spec)["steps"] == 20  # over budget: no more than min_steps
    for bad in ((1.0,), (0.5, 0.1), (0.1, 0.1), (0.0,), 0.1, ("half",)):
        with pytest.raises(ValueError, match="replan_at must be increasing shares"):
            config.replace(replan_at=bad)
    assert config.replace(replan_at=()).replan_at == ()  # keep the probe's plan
    with pytest.raises(ValueError, match="replan_safety must be <= 1"):
        config.replace(replan_safety=1.5)


def test_the_default_preset_fits_the_issue_budget():
    config = load_demo_config("demo")
    assert config.minutes <= 15
    assert set(config.eval.splits) == set(SPLIT_NAMES)  # every split the emoji dataset writes is scored
    assert config.showcase_candidates > config.showcase_n
    assert config.stage("clip").config["loop"]["seed"] != config.stage("eval_clip").config["loop"]["seed"]


def test_a_cached_evaluator_is_trained_once_per_dataset_and_settings_and_reused(emoji, tmp_path, monkeypatch):
    from dalle_zero.demo.context import DemoContext
    from dalle_zero.demo.stages import stage_evaluator
    from dalle_zero.demo.yardsticks import stage_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base = load_demo_config("demo_tiny")
    spec = base.stage("evaluator").replace(cache=True)
    config = base.replace(stages={**base.stages, "evaluator": spec})
    first = stage_evaluator(DemoContext(tmp_path / "a", config, data=emoji, progress=False, log=lambda s: None))
    cached = Path(first["cached"])
    assert not first["reused"] and first["steps"] == spec.steps
    assert cached.parent == tmp_path / "cache" / "dalle-zero" / "evaluator" and (cached / "finished.json").is_file()
    model_a = (tmp_path / "a" / "runs" / "evaluator" / "model" / "model.safetensors").read_bytes()

    # another demo folder reuses it without training, and gets the same model and accuracy
    def no_training(*args, **kwargs):
        raise AssertionError("the cached evaluator was trained again")

    monkeypatch.setattr(loop_module, "train", no_training)
    second = stage_evaluator(DemoContext(tmp_path / "b", config, data=emoji, progress=False, log=lambda s: None))
    assert second["reused"] and second["cached"] == first["cached"] and second["accuracy"] == first["accuracy"]
    assert (tmp_path / "b" / "runs" / "evaluator" / "model" / "model.safetensors").read_bytes() == model_a

    # other settings or another dataset get another cache entry
    other = dict(spec.config, lr=spec.config.get("lr", 2e-3) * 2)
    assert stage_cache_dir("evaluator", emoji, other) != cached
    assert stage_cache_dir("evaluator", emoji, spec.config) != cached  # the key includes the fixed step count
    vocab = tmp_path / "tokenizer.json"  # an input file (a CLIP's tokenizer) is part of the key
    vocab.write_text("a")
    keyed = stage_cache_dir("eval_clip", emoji, spec.config, [vocab])
    vocab.write_text("b")
    assert stage_cache_dir("eval_clip", emoji, spec.config, [vocab]) != keyed


def test_the_evaluator_cache_key_follows_labels_and_images_not_captions(emoji, tmp_path, monkeypatch):
    import shutil

    from dalle_zero.demo.yardsticks import stage_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = tmp_path / "emoji"
    shutil.copytree(emoji, data)
    fields = {"steps": 10}
    reads = ("tone", "style", "concept")

    def keys() -> tuple[Path, Path]:
        return stage_cache_dir("evaluator", data, fields, reads=reads), stage_cache_dir("eval_clip", data, fields)

    def rewrite_rows(change) -> None:
        path = data / "metadata.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        change(rows[0])
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    first = sorted((data / "images").glob("*.png"))[0]
    evaluator, clip = keys()
    # other captions (a rebuilt caption preset): the evaluator keeps its run, a CLIP does not
    rewrite_rows(lambda row: row.update(captions=["another caption"], caption="another caption"))
    first.with_suffix(".txt").write_text("x\n")
    new_evaluator, new_clip = keys()
    assert new_evaluator == evaluator and new_clip != clip
    # another label, or other pixels, is another yardstick
    rewrite_rows(lambda row: row.update(style="other"))
    assert keys()[0] != evaluator
    evaluator, clip = keys()
    first.write_bytes(first.read_bytes() + b"\0")
    new_evaluator, new_clip = keys()
    assert new_evaluator != evaluator and new_clip != clip


def test_a_cached_stage_needs_a_fixed_step_count():
    from dalle_zero.demo.config import StageSpec

    with pytest.raises(ValueError, match="cache needs a fixed `steps`"):
        StageSpec(share=0.1, cache=True)


def test_the_reserve_is_the_measured_sampling_time_of_the_showcase_and_evaluation_kept_for_a_resume(
    emoji, tmp_path, monkeypatch
):
    import torch

    from dalle_zero.demo import budget, stages, timed_training
    from dalle_zero.demo.context import DemoContext

    config = load_demo_config("demo_tiny").replace(reserve_seconds=7.0)
    config = config.replace(eval=config.eval.replace(workers=2))  # the evaluation samples in 2 processes
    ctx = DemoContext(tmp_path / "demo", config, data=emoji, progress=False, log=lambda s: None)
    stages.stage_tokenizer(ctx)
    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as if the stage had chosen 1 thread: the rate on all the cores is measured too
    try:
        seconds = timed_training.plan_reserve(ctx)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.get_rng_state(), rng)  # the untrained probe models leave the global stream alone
    record = json.loads((ctx.out / "stages" / "reserve.json").read_text())
    by_threads = record["images_per_second_by_threads"]
    assert set(by_threads) == {"1", str(os.cpu_count() or 1)}
    assert record["images_per_second"] == max(by_threads.values())
    splits = json.loads((emoji / "splits.json").read_text())
    e = config.eval
    # every split once with its canonical captions, and again per other caption kind on the kind splits
    per_split = {s: min(e.samples, len(splits.get(s, []))) for s in e.splits}
    kinds = len(e.caption_kinds) - 1
    assert record["eval_images"] == e.candidates * sum(
        n * (1 + (kinds if s in e.kind_splits else 0)) for s, n in per_split.items()
    )
    assert record["showcase_images"] == (
        3 * config.showcase_captions + 1 + len(config.plain_captions)
    ) * config.showcase_candidates
    # the evaluation's images at the rate of its 2 processes, the showcase's at this process's
    assert record["eval_workers"] == 2 and record["eval_images_per_second"] > 0
    sampling = (
        record["eval_images"] / record["eval_images_per_second"]
        + 2 * record["showcase_images"] / record["images_per_second"]
    )
    assert record["images_per_second"] > 0 and record["fixed_seconds"] == 7.0
    assert seconds == pytest.approx(7.0 + timed_training.TAIL_MARGIN * sampling) and seconds > 7.0
    ctx.reserve = seconds
    assert ctx.seconds_left() == pytest.approx(config.minutes * 60 - seconds)

    # a resumed run reads the reserve it planned instead of measuring again
    def no_probe(*args, **kwargs):
        raise AssertionError("the sampling rate was measured again")

    monkeypatch.setattr(budget, "measure_sampling_rate", no_probe)
    again = DemoContext(tmp_path / "demo", config, data=emoji, progress=False, log=lambda s: None)
    assert timed_training.plan_reserve(again) == seconds


def test_the_sampling_rate_is_images_per_second_of_the_evaluation_path():
    from dalle_zero.demo.budget import measure_sampling_rate
    from dalle_zero.evaluation.evaluate import EvalConfig
    from tests.factories.pipelines import tiny_pipeline

    rate = measure_sampling_rate(tiny_pipeline(), EvalConfig(batch_size=4, guidance_scale=2.0), ["a red star"])
    assert math.isfinite(rate) and rate > 0
    with pytest.raises(ValueError, match="captions"):
        measure_sampling_rate(tiny_pipeline(), EvalConfig(batch_size=4), [])


@pytest.mark.parametrize("preset", ["demo", "demo_tiny"])
def test_the_fixed_step_yardsticks_train_before_every_time_budgeted_stage(preset):
    """A first run's time for the cached yardsticks is spent before a budgeted stage plans, so it comes
    off the budget instead of running over it (their shares had kept 74 s for what once took 22 minutes)."""
    config = load_demo_config(preset)
    order = [s for s in STAGES if s in TRAIN_STAGES]
    assert sorted(order) == sorted(TRAIN_STAGES) and tuple(order) == TRAIN_STAGES
    fixed = [config.stage(s).steps is not None for s in order]
    assert fixed == sorted(fixed, reverse=True) and any(fixed) and not all(fixed)


@pytest.mark.parametrize("bf16_rate, chosen", [(0.2, "fp32"), (4.0, "fp32"), (4.5, "bf16")])
def test_a_bf16_stage_trains_at_the_precision_whose_steps_are_faster_and_keeps_the_choice(
    tmp_path, monkeypatch, bf16_rate, chosen
):
    from types import SimpleNamespace

    from dalle_zero.demo import budget, timed_training
    from dalle_zero.demo.context import DemoContext

    config = load_demo_config("demo")  # its prior asks for bf16
    assert config.stage("prior").config["loop"]["precision"] == "bf16"
    logs: list[str] = []
    ctx = DemoContext(tmp_path / "demo", config, data=None, progress=False, log=logs.append)
    built: list[tuple[int, str]] = []

    def build(steps, precision):
        built.append((steps, precision))
        return None, None, SimpleNamespace(loop=SimpleNamespace(precision=precision))

    rates = {"fp32": 4.0, "bf16": bf16_rate}  # a tie goes to fp32
    monkeypatch.setattr(budget, "measure_steps_per_second", lambda model, task, loop, steps: rates[loop.precision])
    assert timed_training.choose_precision(ctx, "prior", build) == (chosen, rates[chosen])  # the plan reuses the rate
    assert built == [(config.stage("prior").min_steps, "fp32"), (config.stage("prior").min_steps, "bf16")]
    assert any(f"precision: {chosen} (steps/s: fp32 4.00, bf16 {bf16_rate:.2f})" in line for line in logs)
    assert timed_training.choose_precision(ctx, "clip", build) == (None, None)  # an fp32 stage keeps its preset
    rates["fp32"], rates["bf16"] = rates["bf16"], rates["fp32"]  # a resumed run does not decide again
    assert timed_training.choose_precision(ctx, "prior", build) == (chosen, None) and len(built) == 2


def test_bf16_speedup_is_a_positive_ratio():
    from dalle_zero.training.precision import bf16_speedup

    speedup = bf16_speedup(repeats=1)
    assert math.isfinite(speedup) and speedup > 0


def test_a_stage_that_keeps_its_best_model_is_evaluated_often_enough_to_find_it():
    prior = load_demo_config("demo").stage("prior").config
    assert prior["loop"]["select_by"] == "loss"
    short, long = with_loop(prior, 1_920)["loop"], with_loop(prior, 25_070)["loop"]
    assert (short["checkpoint_every"], short["eval_every"]) == (240, 240)  # every checkpoint
    assert (long["checkpoint_every"], long["eval_every"]) == (3_134, prior["loop"]["eval_every"])
    dvae = load_demo_config("demo").stage("dvae").config
    assert with_loop(dvae, 3_000)["loop"]["eval_every"] == 0  # no selection: evaluated once, at the end


def _beside_config(name: str = "demo_tiny"):
    """The preset with its reranker training beside the dVAE (and on real images only: recon_prob needs
    the dVAE's model)."""
    config = load_demo_config(name)
    clip = config.stage("clip")
    fields = {k: v for k, v in clip.config.items() if k != "recon_prob"}
    stages = {**config.stages, "clip": clip.replace(beside="dvae", config=fields)}
    return config.replace(stages=stages)


def test_a_stage_beside_another_shares_its_window_and_plans_alone_once_that_one_is_done(tmp_path):
    from dalle_zero.demo.context import DemoContext
    from dalle_zero.demo.timed_training import stage_window

    config = _beside_config("demo")
    ctx = DemoContext(tmp_path, config, reserve=100.0)
    ctx.done = ["eval_clip", "evaluator"]
    left = ctx.seconds_left()
    dvae, clip, prior = (config.stage(s).share for s in ("dvae", "clip", "prior"))
    # the reranker trains in the dVAE's window, so its share does not shorten the dVAE's
    assert stage_window(ctx, "dvae") == pytest.approx(left * dvae / (dvae + prior))
    ctx.done.append("dvae")  # a resumed run whose reranker had not finished: it trains alone, in its share
    assert stage_window(ctx, "clip") == pytest.approx(left * clip / (clip + prior))
    for bad in ({"beside": "prior"}, {"beside": "nope"}, {"beside": "evaluator"}, {"beside": "clip"}):
        with pytest.raises(ValueError, match="beside must name an earlier training stage"):
            config.replace(stages={**config.stages, "clip": config.stage("clip").replace(**bad)})
    clip_spec = config.stage("clip")
    with_recon = clip_spec.replace(config={**clip_spec.config, "recon_prob": 0.5})
    with pytest.raises(ValueError, match="recon_prob needs the dVAE's model"):
        config.replace(stages={**config.stages, "clip": with_recon})


@pytest.mark.slow
def test_the_reranker_trains_beside_the_dvae_in_another_process(emoji, tmp_path, monkeypatch):
    config = _beside_config()
    out = tmp_path / "demo"
    logs: list[str] = []
    # 1. the dVAE is stopped after one step: the demo stops its partner too (or finds it done) and
    # leaves no interrupted-seconds file for it, since its seconds were the dVAE's as well
    real_train = loop_module.train

    def stop_the_dvae_early(*args, **kwargs):
        if Path(args[3]).name == "dvae":
            kwargs["stop_after"] = 1
        return real_train(*args, **kwargs)

    monkeypatch.setattr(loop_module, "train", stop_the_dvae_early)
    with pytest.raises(DemoInterrupted, match="dvae stopped at step"):
        run_demo(out, config, data=emoji, progress=False, log=logs.append)
    assert interrupted_seconds(out, "dvae") > 0 and interrupted_seconds(out, "clip") == 0
    assert any("clip trains beside it in another process" in line for line in logs)
    # 2. run again: the dVAE resumes and the reranker (resumed, or done the first time) is taken in
    monkeypatch.setattr(loop_module, "train", real_train)
    logs.clear()
    report = run_demo(out, config, data=emoji, progress=False, log=logs.append)
    assert report.is_file() and (out / "model" / "clip").is_dir()
    assert "trained beside the dVAE (stage 1) in another process" in report.read_text()
    clip = json.loads((out / "stages" / "clip.json").read_text())
    assert clip["beside"] == "dvae" and clip["steps"] == config.stage("clip").steps
    waited = clip.get("wait_seconds", 0.0)  # none if it had finished in the first run, before its wait
    assert clip["threads"] == max(1, (os.cpu_count() or 1) // 2) and waited >= 0
    # the report's minutes count the reranker's waiting, not its seconds that ran beside the dVAE
    summary = json.loads((out / "summary.json").read_text())
    spent = sum(s["seconds"] for name, s in summary["stages"].items() if name != "clip") + waited
    assert summary["header"]["wall_minutes"] * 60 == pytest.approx(spent)


def _finish_then_die(marker: str) -> None:
    Path(marker).write_text(json.dumps({"steps": 3, "seconds": 1.0, "threads": 1, "beside": "dvae"}))
    os.kill(os.getpid(), 10)  # SIGUSR1 at its default: as a late alone() during interpreter exit


def test_a_partner_that_wrote_its_done_marker_is_done_however_its_process_ended(tmp_path):
    import multiprocessing
    import time

    from dalle_zero.demo import side_by_side
    from dalle_zero.demo.context import DemoContext

    (tmp_path / "stages").mkdir()
    marker = tmp_path / "stages" / "clip.json"
    process = multiprocessing.get_context("spawn").Process(target=_finish_then_die, args=(str(marker),))
    process.start()
    ctx = DemoContext(tmp_path, load_demo_config("demo_tiny"))
    summary = side_by_side.finish(ctx, side_by_side.Partner("clip", process))
    assert process.exitcode == -10 and summary["steps"] == 3 and summary["wait_seconds"] >= 0
    assert json.loads(marker.read_text())["wait_seconds"] == summary["wait_seconds"]
    # without its marker, the same ending is a failure
    marker.unlink()
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    process.start()
    with pytest.raises(RuntimeError, match="stage clip failed in its process"):
        side_by_side.finish(ctx, side_by_side.Partner("clip", process))


def _stopped_partner(seconds: float) -> None:
    import time

    time.sleep(seconds)
    os._exit(side_by_side.INTERRUPTED)  # as a partner whose training was stopped


def test_a_stop_while_waiting_for_a_partner_counts_the_seconds_waited(tmp_path):
    import multiprocessing

    config = _beside_config()
    ctx = DemoContext(out=tmp_path, config=config, data=None, progress=False, log=lambda s: None)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "clip.interrupted.json").write_text(json.dumps({"seconds": 5.0}))  # an earlier stop
    process = multiprocessing.get_context("spawn").Process(target=_stopped_partner, args=(0.5,))
    process.start()
    partners = {"clip": side_by_side.Partner("clip", process)}
    with pytest.raises(DemoInterrupted, match="clip stopped in its process"):
        _run_stage(ctx, {}, lambda s: None, "[7/11] reranker", "clip", STAGES["clip"], partners)
    assert not partners  # nothing left to stop
    assert 5.0 + 0.5 <= interrupted_seconds(tmp_path, "clip") < 5.0 + 60.0  # counted when the run resumes


def test_the_report_gives_the_kept_priors_validation_and_the_last_one():
    from dalle_zero.demo.report import stage_details

    summary = {"steps": 12172, "validation": {"bits_per_image_token": 3.231},
               "kept": {"step": 4000, "validation": {"bits_per_image_token": 1.935}}}
    assert "kept at step 4000, its lowest validation loss: 1.935 bits per image token (3.231 at the end)" in (
        stage_details("prior", summary))
    summary["kept"] = {"step": 12172, "validation": {"bits_per_image_token": 3.231}}  # the last step was the lowest
    assert "validation 3.231 bits per image token" in stage_details("prior", summary)
    del summary["kept"]  # a demo folder from before the prior was selected
    assert "validation 3.231 bits per image token" in stage_details("prior", summary)
