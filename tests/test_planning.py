"""Planning arithmetic (dalle_zero.planning) and the ``dalle plan`` command."""

import json
import re
from pathlib import Path

import pytest
import torch

from dalle_zero.cli.main import main
from dalle_zero.cli.plan import load_plan_config, load_transformer_config
from dalle_zero.models.transformer import DalleTransformer, TransformerConfig
from dalle_zero.planning import (
    attention_pairs,
    block_matrix_shapes,
    count_parameters,
    flops_per_sequence,
    plan_training,
)


def tiny() -> TransformerConfig:
    return load_transformer_config("prior_model_tiny")


@pytest.mark.parametrize("preset", ["prior_model_tiny", "model_emoji"])
def test_parameter_count_equals_the_built_model(preset):
    config = load_transformer_config(preset)
    assert count_parameters(config)["total"] == DalleTransformer(config).num_parameters()


def test_paper_preset_is_the_paper_12b_config_and_counts_12_3_billion():
    config = load_transformer_config("paper_12b")
    assert config == TransformerConfig.paper_12b()
    params = count_parameters(config)
    assert round(params["block_matrices"] / 1e9, 2) == 12.09
    assert round(params["total"] / 1e9, 1) == 12.3
    with torch.device("meta"):
        assert DalleTransformer(config).num_parameters() == params["total"]


@pytest.mark.parametrize(("old", "new"), [("paper-12b", "paper_12b"), ("transformer_tiny", "prior_model_tiny"),
                                          ("transformer_emoji", "prior_model_emoji")])
def test_old_preset_names_still_plan_with_a_one_line_deprecation(old, new, capsys, caplog):
    assert main(["plan", "--config", old, "--gpus", "8", "--json"]) == 0
    old_out = json.loads(capsys.readouterr().out)
    [record] = caplog.records
    assert record.levelname == "WARNING" and f"preset {old!r} is deprecated, use" in record.getMessage()
    assert "\n" not in record.getMessage()
    caplog.clear()
    assert main(["plan", "--config", new, "--gpus", "8", "--json"]) == 0
    assert not caplog.records and json.loads(capsys.readouterr().out) == old_out


@pytest.mark.parametrize("n_layer", [1, 2])
def test_training_flops_are_what_torch_counts_for_a_forward_and_backward_of_the_model(n_layer):
    """The plan counts a training step as 3 forwards; torch's FLOP counter, on a real forward and backward
    of the built model (full attention, which the counter counts densely), says whether that holds."""
    from torch.utils.flop_counter import FlopCounterMode

    config = tiny().replace(n_layer=n_layer, attn_pattern=("full",) * n_layer)
    model = DalleTransformer(config)
    g = torch.Generator().manual_seed(0)
    text = torch.randint(1, config.text_vocab_size, (2, config.text_seq_len), generator=g)
    image = torch.randint(0, config.image_vocab_size, (2, config.image_seq_len), generator=g)
    with FlopCounterMode(display=False) as forward:
        text_logits, image_logits = model(text, image)
    with FlopCounterMode(display=False) as backward:
        (text_logits.float().sum() + image_logits.float().sum()).backward()
    measured = (forward.get_total_flops() + backward.get_total_flops()) / forward.get_total_flops()
    planned = flops_per_sequence(config)
    assert measured == pytest.approx(planned["train"] / planned["forward"], rel=0.02)


def test_attention_pairs_count_the_mask_entries():
    config = tiny()
    pairs = attention_pairs(config)
    L = config.stream_len
    assert pairs["dense"] == config.n_layer * L * (L + 1) // 2
    assert 0 < pairs["sparse"] < pairs["dense"]
    full = config.replace(attn_pattern=("full",) * config.n_layer)
    assert attention_pairs(full)["sparse"] == pairs["dense"]


def test_training_flops_of_a_tiny_config_match_a_hand_count_and_about_6n_per_token():
    tiny_full = TransformerConfig(n_layer=1, n_head=1, n_embd=8, text_vocab_size=5, text_seq_len=3,
                                  image_vocab_size=6, image_grid=2, attn_pattern=("full",))
    # 7 input positions; per position 2 FLOPs per block-matrix weight (12·8² = 768); heads on their own
    # positions (3 text × 5, 4 image × 6, 8 wide); attention 4·8 per causal pair (7·8/2 = 28)
    forward = 2 * 768 * 7 + 2 * 8 * (3 * 5 + 4 * 6) + 4 * 8 * 28
    assert forward == 12_272
    flops = flops_per_sequence(tiny_full)
    assert flops["forward"] == forward
    config = TransformerConfig.paper_12b()
    flops = flops_per_sequence(config)
    six_n = 6 * count_parameters(config)["total"] * config.stream_len
    assert 0.95 < flops["train"] / six_n < 1.05


def test_plan_scales_with_gpus_and_checkpointing_saves_activation_memory():
    config = TransformerConfig.paper_12b()
    one = plan_training(config, gpus=8, batch_size=8)
    many = plan_training(config, gpus=64, batch_size=64)
    assert many.step_seconds == pytest.approx(one.step_seconds)
    assert many.state_bytes_per_gpu == pytest.approx(one.state_bytes_per_gpu / 8, rel=1e-6)
    assert one.state_bytes_per_gpu == pytest.approx(16 * 12.29e9 / 8, rel=1e-3)
    assert one.activation_bytes_per_gpu_checkpointed < one.activation_bytes_per_gpu / 5
    with pytest.raises(ValueError, match="gpus"):
        plan_training(config, gpus=0)


def test_plan_command_prints_a_table_and_json(capsys, tmp_path):
    assert main(["plan", "--config", "paper_12b", "--gpus", "1024"]) == 0
    out = capsys.readouterr().out
    assert "12.293 B" in out and "days" in out
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"model": tiny().to_dict(), "loop": {}}))
    assert main(["plan", "--config", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"]["total"] == count_parameters(tiny())["total"]
    assert main(["plan", "--config", "no-such-preset"]) == 2
    assert "no-such-preset" in capsys.readouterr().err


# ---- the paper's setup (§2.5, App. E, Table 1) ----

# Table 1: parameters, d_model, the smallest PowerSGD rank without a loss gap, and the compression rate
TABLE_1 = {
    "paper_2.8b": (2.8e9, 1920, 512, 0.83),
    "paper_5.6b": (5.6e9, 2688, 640, 0.85),
    "paper_12b": (12.0e9, 3968, 896, 0.86),
}


def _paper_plan(preset: str):
    """The paper's run: 1024 V100s (125 TFLOP/s fp16) in machines of 8, state sharded within a machine."""
    config, loop = load_plan_config(preset)
    plan = plan_training(config, gpus=1024, gpus_per_machine=8, precision="fp16", peak_flops=125e12,
                         powersgd_rank=loop["powersgd_rank"])
    return config, loop, plan


def test_block_matrix_shapes_are_the_built_blocks_matrices():
    block = DalleTransformer(tiny()).blocks[0]
    built = {name: tuple(p.shape) for name, p in block.named_parameters() if p.ndim == 2}
    assert dict(block_matrix_shapes(tiny())) == built


@pytest.mark.parametrize("preset", TABLE_1)
def test_paper_presets_reproduce_table_1(preset):
    params, d, rank, rate = TABLE_1[preset]
    config, loop, plan = _paper_plan(preset)
    assert (config.n_layer, config.n_embd, config.n_embd // config.n_head) == (64, d, 64)
    assert loop["powersgd_rank"] == rank and loop["powersgd_shards"] == 8
    assert plan.parameters["block_matrices"] == pytest.approx(params, rel=0.02)  # the table counts 12·d²·64
    assert plan.compression_rate == pytest.approx(rate, abs=0.005)  # the table's "≈83 %" etc.
    assert plan.shard == 8


def test_the_12b_model_fits_a_16_gb_v100_as_the_paper_trained_it():
    config, _, plan = _paper_plan("paper_12b")
    assert 2 * plan.parameters["total"] == pytest.approx(24e9, rel=0.05)  # "24 GB of memory ... in 16-bit"
    assert plan.memory_bytes_per_gpu < 16e9
    fp32_state = plan_training(config, gpus=1024, gpus_per_machine=8, precision="bf16", powersgd_rank=896)
    assert fp32_state.memory_bytes_per_gpu > 16e9  # fp32 master weights and moments would not fit
    rest = plan.parameters["total"] - plan.parameters["block_matrices"]
    matrices_sent = (plan.bytes_sent_per_step - 4 * rest) / (2 * plan.parameters["block_matrices"])
    assert matrices_sent == pytest.approx(1 - 0.86, abs=0.005)  # 16-bit factors, the rest in fp32


def test_plan_command_prints_the_papers_setup(capsys):
    args = ["--gpus", "1024", "--gpus-per-machine", "8", "--precision", "fp16", "--peak-tflops", "125"]
    assert main(["plan", "--config", "paper_12b", *args, "--gpu-memory", "16"]) == 0
    out = capsys.readouterr().out
    assert "rank 896 (112 for each of 8 shards)" in out and "compressed 85.9%" in out
    assert "fits a 16 GB GPU" in out and "sharded over 8" in out and "128 machine(s) of 8 GPU(s)" in out
    assert main(["plan", "--config", "paper_12b", "--gpus", "1024", "--gpu-memory", "16"]) == 0  # bf16 state
    assert "does not fit a 16 GB GPU" in capsys.readouterr().out


PAPER_RUN = "--gpus 1024 --gpus-per-machine 8 --precision fp16 --peak-tflops 125 --gpu-memory 16"
README = Path(__file__).parents[1] / "README.md"


@pytest.mark.parametrize("preset", TABLE_1)
def test_plan_command_prints_table_1_for_each_paper_size_as_the_readme_shows(preset, capsys):
    params, _, rank, rate = TABLE_1[preset]
    for config in (preset, f"prior_{preset}"):  # the preset's short and file names
        assert main(["plan", "--config", config, *PAPER_RUN.split()]) == 0
        out = capsys.readouterr().out
        assert f"rank {rank} ({rank // 8} for each of 8 shards)" in out  # 112 per GPU shard at 12B (§2.5)
        assert "fits a 16 GB GPU" in out and "128 machine(s) of 8 GPU(s)" in out
        compressed = re.search(r"compressed ([\d.]+)%", out).group(1)
        assert round(float(compressed)) == round(100 * rate)  # Table 1: 83, 85, 86 %
    # README's table is this output, next to Table 1's figures
    readme = README.read_text(encoding="utf-8")
    assert f"dalle plan --config paper_12b {PAPER_RUN}" in readme
    matrices = re.search(r"of which matrices ([\d.]+) B", out).group(1)
    memory = re.search(r"memory / GPU +([\d.]+) GB", out).group(1)
    label = preset.removeprefix("paper_").upper()
    row = next(line for line in readme.splitlines() if line.startswith(f"| {label} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{params / 1e9:.1f} / {matrices} B" and cells[2] == str(rank)
    assert cells[3] == f"≈{round(100 * rate)} / {compressed} %" and cells[4].startswith(f"{memory} GB")


def test_bad_machine_and_rank_settings_are_one_line_errors(capsys):
    config = TransformerConfig.paper_12b()
    with pytest.raises(ValueError, match=r"blocks.\*.attn.qkv.weight\[q\] \(3968×3968\): cut into 8 shards"):
        plan_training(config, gpus=16, gpus_per_machine=8, powersgd_rank=8 * 500)
    with pytest.raises(ValueError, match="multiple of gpus per machine"):
        plan_training(config, gpus=12, gpus_per_machine=8)
    assert main(["plan", "--config", "paper_12b"]) == 2  # 1 GPU, but the preset's machines hold 8
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--gpus-per-machine" in err
