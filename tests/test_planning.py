"""Planning arithmetic (dalle_zero.planning) and the ``dalle plan`` command."""

import json

import pytest
import torch

from dalle_zero.cli.main import main
from dalle_zero.cli.plan import load_transformer_config
from dalle_zero.models.transformer import DalleTransformer, TransformerConfig
from dalle_zero.planning import attention_pairs, count_parameters, flops_per_sequence, plan_training


def tiny() -> TransformerConfig:
    return load_transformer_config("transformer_tiny")


@pytest.mark.parametrize("preset", ["transformer_tiny", "transformer_emoji"])
def test_parameter_count_equals_the_built_model(preset):
    config = load_transformer_config(preset)
    assert count_parameters(config)["total"] == DalleTransformer(config).num_parameters()


def test_paper_preset_is_the_paper_12b_config_and_counts_12_3_billion():
    config = load_transformer_config("paper-12b")
    assert config == TransformerConfig.paper_12b()
    params = count_parameters(config)
    assert round(params["block_matrices"] / 1e9, 2) == 12.09
    assert round(params["total"] / 1e9, 1) == 12.3
    with torch.device("meta"):
        assert DalleTransformer(config).num_parameters() == params["total"]


def test_attention_pairs_count_the_mask_entries():
    config = tiny()
    pairs = attention_pairs(config)
    L = config.stream_len
    assert pairs["dense"] == config.n_layer * L * (L + 1) // 2
    assert 0 < pairs["sparse"] < pairs["dense"]
    full = config.replace(attn_pattern=("full",) * config.n_layer)
    assert attention_pairs(full)["sparse"] == pairs["dense"]


def test_training_flops_are_three_forwards_and_about_6n_per_token():
    config = TransformerConfig.paper_12b()
    flops = flops_per_sequence(config)
    assert flops["train"] == 3 * flops["forward"]
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
    assert main(["plan", "--config", "paper-12b", "--gpus", "1024"]) == 0
    out = capsys.readouterr().out
    assert "12.293 B" in out and "days" in out
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"model": tiny().to_dict(), "loop": {}}))
    assert main(["plan", "--config", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"]["total"] == count_parameters(tiny())["total"]
    assert main(["plan", "--config", "no-such-preset"]) == 2
    assert "no-such-preset" in capsys.readouterr().err
