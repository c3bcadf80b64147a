"""PowerSGD as the paper uses it (paper §2.5, App. E): what it compresses and how, what it
sends, that training under it follows uncompressed training, and that it resumes exactly.

The single-process tests run the hook's arithmetic in a one-rank gloo group (the mean over one rank is the
rank's own value); the two-process tests launch CPU processes with torchrun, as a user would.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from dalle_zero.cli.main import main
from dalle_zero.models.transformer import DalleTransformer
from dalle_zero.nn.block import TransformerBlock
from dalle_zero.training import checkpoint as ckpt
from dalle_zero.training import distributed
from dalle_zero.training.loop import LoopConfig
from dalle_zero.training.powersgd import EPSILON, PowerSGD, matrix_shards, orthonormal
from tests.factories.prior import make_tokenizer, prior_config, write_tiny_shards
from tests.factories.processes import torchrun

WORKER = Path(__file__).with_name("powersgd_worker.py")


@pytest.fixture(scope="module")
def one_rank():
    """A one-process gloo group for the hook's collectives."""
    with tempfile.TemporaryDirectory() as folder:
        dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=0, world_size=1)
        yield
        dist.destroy_process_group()


class _Tiny(nn.Module):
    """An embedding (uncompressed) and one transformer block (its matrices compressed)."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, d)
        self.blocks = nn.ModuleList([TransformerBlock(d, 2)])


def _grads(module: nn.Module, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g) for p in module.parameters()]


def _reduce(state: PowerSGD, module: nn.Module, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    out = [g.clone() for g in grads]
    state.reduce(list(module.parameters()), out)
    return out


# ---- what is compressed, and how ----


def test_qkv_is_three_matrices_and_only_the_mlp_second_matrix_is_cut_along_its_inputs():
    d = 8
    qkv = matrix_shards("blocks.0.attn.qkv.weight", (3 * d, d), shards=2)
    assert [p.key for p in qkv] == [f"blocks.0.attn.qkv.weight[{m}]#{i}" for m in "qkv" for i in (0, 1)]
    assert [(p.rows, p.cols) for p in qkv[2:4]] == [((8, 12), (0, 8)), ((12, 16), (0, 8))]  # k's output rows
    fc = matrix_shards("blocks.0.mlp.fc.weight", (4 * d, d), shards=2)  # (out, in): cut along the output
    assert [(p.rows, p.cols) for p in fc] == [((0, 16), (0, 8)), ((16, 32), (0, 8))]
    second = matrix_shards("blocks.0.mlp.proj.weight", (d, 4 * d), shards=2)  # cut along the input
    assert [(p.rows, p.cols) for p in second] == [((0, 8), (0, 16)), ((0, 8), (16, 32))]
    assert [p.key for p in matrix_shards("blocks.0.attn.proj.weight", (d, d))] == ["blocks.0.attn.proj.weight"]


def test_only_the_blocks_matrices_are_compressed_and_the_rest_is_sent_exactly(one_rank):
    module = _Tiny()
    state = PowerSGD(module, module.blocks, rank=4)
    grads = _grads(module)
    out = _reduce(state, module, grads)
    for (name, p), before, after in zip(module.named_parameters(), grads, out):
        compressed = name.startswith("blocks.") and p.ndim == 2
        assert torch.equal(before, after) != compressed, name  # embeddings, gains, biases untouched by one rank
        assert after.dtype == torch.float32


def test_decompressed_gradient_projects_on_the_span_of_m_times_the_fixed_q(one_rank):
    """One rank: g -> P·Pᵀ·M with P = orthonormal(M·Q + ε·I), Q the fixed Gaussian; e = M - P·Pᵀ·M."""
    module = _Tiny()
    state = PowerSGD(module, module.blocks, rank=4, seed=3)
    weight = module.blocks[0].attn.proj.weight
    index = [id(p) for p in module.parameters()].index(id(weight))
    q = state.q["blocks.0.attn.proj.weight"].clone()
    for seed in (0, 1):  # the second step adds the first step's error
        m = _grads(module, seed)[index] + state.errors.get("blocks.0.attn.proj.weight", 0)
        p = torch.linalg.qr(m @ q + EPSILON * torch.eye(16, 4)).Q
        expected = p @ p.T @ m
        got = _reduce(state, module, _grads(module, seed))[index]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(state.errors["blocks.0.attn.proj.weight"], m - expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(state.q["blocks.0.attn.proj.weight"], q)  # never warm-started


def test_q_is_the_same_on_every_rank_and_differs_between_pieces():
    a, b = _Tiny(), _Tiny()
    qa = PowerSGD(a, a.blocks, rank=4, shards=2, seed=7).q
    qb = PowerSGD(b, b.blocks, rank=4, shards=2, seed=7).q
    assert qa.keys() == qb.keys() and all(torch.equal(qa[k], qb[k]) for k in qa)
    assert not torch.equal(qa["blocks.0.attn.proj.weight#0"], qa["blocks.0.attn.proj.weight#1"])
    assert qa["blocks.0.mlp.fc.weight#0"].shape == (16, 2)  # (inputs of the piece, rank / shards)


def test_epsilon_identity_keeps_a_vanished_gradient_finite_and_p_orthonormal():
    p = orthonormal(torch.zeros(6, 3))  # a zero gradient: Householder QR of ε·I
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.abs(), torch.eye(6, 3))
    p = orthonormal(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(p.T @ p, torch.eye(3), rtol=0, atol=1e-6)


def test_error_feedback_sends_noisy_gradients_in_full_on_average(one_rank):
    """The decompressed gradients plus the last error sum to the gradients exactly, and their mean approaches
    the true gradient, which one rank-2 step captures only a tenth of. (With Q fixed the mean error e has
    e·Q = 0, so it is sent only as the gradients' noise turns P: a constant gradient would not be.)"""
    module = _Tiny()
    state = PowerSGD(module, module.blocks, rank=2)
    index = [n for n, _ in module.named_parameters()].index("blocks.0.mlp.fc.weight")
    true = _grads(module)[index]
    g = torch.Generator().manual_seed(1)
    sent, total, steps = torch.zeros_like(true), torch.zeros_like(true), 400
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=g) for p in module.parameters()]
        grads[index] += true
        total += grads[index]
        sent += _reduce(state, module, grads)[index]
    torch.testing.assert_close(sent + state.errors["blocks.0.mlp.fc.weight"], total, rtol=1e-4, atol=1e-3)
    assert (sent / steps - true).norm() < 0.3 * true.norm()
    p = orthonormal(true @ state.q["blocks.0.mlp.fc.weight"])
    assert (p @ p.T @ true - true).norm() > 0.8 * true.norm()


def test_grad_norm_is_the_norm_of_the_decompressed_gradient_and_clips_by_it(one_rank):
    module = _Tiny()
    state = PowerSGD(module, module.blocks, rank=4)
    out = _reduce(state, module, _grads(module))
    assert state.grad_norm() == pytest.approx(float(torch.cat([g.flatten() for g in out]).norm()), rel=1e-5)
    for p, g in zip(module.parameters(), out):
        p.grad = g.clone()
    norm = state.clip_grad_norm_(module.parameters(), 1.0)
    assert norm == pytest.approx(state.grad_norm())
    assert float(torch.cat([p.grad.flatten() for p in module.parameters()]).norm()) == pytest.approx(1.0, rel=1e-4)


def test_a_nonfinite_gradient_zeroes_only_its_buffers_and_skips_the_update(one_rank):
    module = _Tiny()
    state = PowerSGD(module, module.blocks, rank=4)
    _reduce(state, module, _grads(module, 0))
    before = {k: v.clone() for k, v in state.errors.items()}
    assert all(v.abs().sum() > 0 for v in before.values())
    grads = _grads(module, 1)
    index = [n for n, _ in module.named_parameters()].index("blocks.0.mlp.fc.weight")
    grads[index][3, 2] = math.inf
    _reduce(state, module, grads)
    assert state.grad_norm() == math.inf
    ddp_like = nn.Module()
    ddp_like.powersgd_state = state
    assert not distributed.update_is_finite(ddp_like)
    for key, error in state.errors.items():
        assert torch.isfinite(error).all()
        assert (error.abs().sum() == 0) == (key == "blocks.0.mlp.fc.weight"), key
    _reduce(state, module, _grads(module, 2))  # the next step is clean again
    assert math.isfinite(state.grad_norm()) and distributed.update_is_finite(ddp_like)


def test_error_buffers_resume_exactly_or_by_the_papers_rule_on_another_world_size(one_rank):
    module = _Tiny()
    state = PowerSGD(module, module.blocks, rank=4)
    _reduce(state, module, _grads(module))
    saved = state.state_dict()
    other = {k: 3 * v for k, v in saved.items()}
    fresh = PowerSGD(module, module.blocks, rank=4)
    fresh.load_state_dict([saved], rank=0)  # one rank then, one rank now: its own buffers
    assert all(torch.equal(fresh.errors[k], saved[k]) for k in saved)
    fresh.load_state_dict([saved, other], rank=0)  # two machines then: their sum divided by two
    assert all(torch.allclose(fresh.errors[k], 2 * saved[k]) for k in saved)


# ---- settings and bad input ----


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"powersgd": "vogels"}, r"LoopConfig.powersgd must be one of \['paper', 'torch'\], got 'vogels'"),
        ({"powersgd_rank": 12, "powersgd_shards": 8}, r"powersgd_rank \(12\) must be a multiple of powersgd_shards"),
        ({"powersgd": "torch", "powersgd_rank": 8, "powersgd_shards": 2}, "only powersgd 'paper' shards"),
        ({"powersgd_shards": 0}, "powersgd_shards must be an integer >= 1"),
    ],
)
def test_bad_powersgd_settings_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        LoopConfig(**bad)


def test_a_rank_larger_than_a_matrix_side_is_a_one_line_error_naming_the_matrix():
    module = _Tiny(d=16)
    ctx = distributed.DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(ValueError) as e:
        distributed.wrap(module, ctx, powersgd_rank=32, blocks=module.blocks)
    assert "\n" not in str(e.value)
    assert "matrix blocks.0.attn.qkv.weight[q] (16×16): it would take rank 32, at most 16" in str(e.value)
    with pytest.raises(ValueError, match=r"weight\[q\] \(16×16\): cut into 8 shards of 2×16, each would take rank 4"):
        distributed.wrap(module, ctx, powersgd_rank=32, powersgd_shards=8, blocks=module.blocks)
    assert distributed.wrap(module, ctx, powersgd_rank=32, powersgd="torch", blocks=module.blocks) is module


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("powersgd_data")
    return write_tiny_shards(root / "tokens"), make_tokenizer(root / "tokenizer", text_seq_len=12)


def test_cli_rank_too_large_for_the_model_is_a_one_line_error(data, tmp_path, capsys):
    tokens, tok_dir = data
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"n_layer": 1, "n_head": 1, "n_embd": 8}, "loop": {"powersgd_rank": 16}}))
    args = ["train", "prior", "--tokens", str(tokens), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "r")]
    assert main([*args, "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.blocks.0.attn.qkv.weight[q]" in err and "16" in err


# ---- two processes ----


def _bytes(tmp_path: Path, *, d: int, n_head: int, n_layer: int, rank: int, shards: int, steps: int) -> dict:
    out = tmp_path / f"bytes_{d}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)]
    args = {"n-embd": d, "n-head": n_head, "n-layer": n_layer, "rank": rank, "shards": shards, "steps": steps}
    flags = [x for k, v in args.items() for x in (f"--{k}", str(v))]
    subprocess.run([*cmd, str(out), *flags], check=True, env=env, timeout=900)
    return json.loads(out.read_text())


def _sent_formula(d: int, n_layer: int, rank: int, shards: int) -> int:
    """Numbers sent per step for the blocks' matrices, by hand: per layer, q, k, v and the attention output
    (d×d) and the two MLP matrices (d×4d), each cut into m shards that send P and Q' at rank r/m."""
    m, r = shards, rank // shards
    d_by_d = m * r * (d // m + d)  # shards of d/m × d
    mlp = m * r * (4 * d // m + d)  # shards of 4d/m × d (first) or d × 4d/m (second)
    return n_layer * (4 * d_by_d + 2 * mlp)


@pytest.mark.slow
def test_bytes_per_step_are_the_factors_plus_the_uncompressed_rest_in_fp32(tmp_path):
    d, n_layer, rank, shards = 32, 2, 8, 2
    got = _bytes(tmp_path, d=d, n_head=2, n_layer=n_layer, rank=rank, shards=shards, steps=2)
    assert got["numel"]["block_matrices"] == n_layer * 12 * d * d
    uncompressed = got["numel"]["total"] - got["numel"]["block_matrices"]
    expected = 4 * (_sent_formula(d, n_layer, rank, shards) + uncompressed)
    assert got["bytes"] == [expected, expected]
    print(f"\nd {d}, {n_layer} layers, rank {rank}, {shards} shards: {got['bytes']} B/step "
          f"({4 * got['numel']['total']:,} uncompressed)")


@pytest.mark.slow
def test_compression_at_the_papers_d_model_is_1_minus_5r_over_8d(tmp_path):
    """The 12B model's width (one layer), rank 896 cut 8 ways: the fraction of the blocks' matrices sent is
    r(m + 2)/(2dm) = 5r/(8d), i.e. Table 1's ≈86 % compression."""
    d, rank = 3968, 896
    got = _bytes(tmp_path, d=d, n_head=62, n_layer=1, rank=rank, shards=8, steps=1)
    uncompressed = got["numel"]["total"] - got["numel"]["block_matrices"]
    sent = got["bytes"][0] // 4 - uncompressed
    assert sent == _sent_formula(d, 1, rank, 8)
    fraction = sent / got["numel"]["block_matrices"]
    print(f"\nd {d}, rank {rank}, 8 shards: {got['bytes'][0]:,} B/step ({4 * got['numel']['total']:,} uncompressed); "
          f"the blocks' matrices {sent:,} of {got['numel']['block_matrices']:,} numbers, {1 - fraction:.2%} compressed")
    assert fraction == pytest.approx(5 * rank / (8 * d), rel=1e-12)
    assert round(100 * (1 - fraction)) == 86


STEPS = 40


def _prior_config(data, folder: Path, name: str, **loop) -> Path:
    """A tiny two-process prior run: no plateau rule (it would react to the loss differences we measure)."""
    cfg = prior_config(data, lr_schedule="cosine", bpe_dropout=0.1, null_caption_prob=0.0,
                  loop={"steps": STEPS, "batch_size": 4, "checkpoint_every": 10, "log_every": 1, **loop})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(cfg.to_json())
    return path


def _losses(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


PAPER = {"powersgd_rank": 4, "powersgd": "paper"}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted two-process runs: uncompressed, the paper's PowerSGD, and the stock hook."""
    root = tmp_path_factory.mktemp("powersgd_runs")
    out = {}
    for name, loop in (("plain", {}), ("paper", PAPER), ("torch", {"powersgd_rank": 4, "powersgd": "torch"})):
        out[f"{name}_config"] = _prior_config(data, root / "configs", name, **loop)
        out[name] = root / name
        torchrun("prior", str(out[f"{name}_config"]), str(out[name]))
    return out


@pytest.mark.slow
def test_training_under_powersgd_follows_the_uncompressed_run(runs):
    plain, paper, stock = (_losses(runs[k]) for k in ("plain", "paper", "torch"))
    assert len(plain) == len(paper) == len(stock) == STEPS
    assert paper != plain  # the gradients were compressed
    assert plain[-1] < 0.8 * plain[0]  # it learns
    late = slice(STEPS - 10, STEPS)
    mean = lambda xs: sum(xs[late]) / 10  # noqa: E731
    gap = max(abs(a - b) / b for a, b in zip(paper, plain))
    print(f"\nloss at step 1 {plain[0]:.4f}; mean of the last 10 steps: uncompressed {mean(plain):.4f}, paper "
          f"{mean(paper):.4f}, torch {mean(stock):.4f}; largest gap of a step, paper vs uncompressed {gap:.2%}")
    assert mean(paper) == pytest.approx(mean(plain), rel=0.01)
    assert gap < 0.02
    assert all(math.isfinite(x) for x in stock)


@pytest.mark.slow
def test_powersgd_resume_matches_the_uninterrupted_run(runs, tmp_path):
    cut = tmp_path / "run"
    torchrun("prior", str(runs["paper_config"]), str(cut), "--stop-after", "15")
    state = ckpt.load_checkpoint(ckpt.latest_step_dir(cut)).state
    assert len(state["powersgd"]) == 2  # each rank's error buffers
    assert all(float(e.abs().sum()) > 0 for buffers in state["powersgd"] for e in buffers.values())
    torchrun("prior", str(runs["paper_config"]), str(cut), "--resume")
    full = ckpt.load_checkpoint(ckpt.latest_step_dir(runs["paper"]))
    resumed = ckpt.load_checkpoint(ckpt.latest_step_dir(cut))
    assert full.step == resumed.step == STEPS
    assert all(torch.equal(full.model[k], resumed.model[k]) for k in full.model)
    assert _losses(cut) == _losses(runs["paper"])
    a, b = (DalleTransformer.from_pretrained(run / "model") for run in (runs["paper"], cut))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))

