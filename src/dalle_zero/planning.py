"""Parameters, FLOPs, memory and time of training a :class:`TransformerConfig` (paper §2.4–2.5, App. B.2).

Everything here is arithmetic on the config; nothing is allocated. Conventions:

- **Parameters** are counted analytically and equal ``DalleTransformer(config).num_parameters()``.
- **FLOPs** count a multiply-add as 2. Per sequence, forward = ``2 · (block matrices)`` per input
  position + the text/image heads on their own positions + attention ``4 · n_embd`` per allowed
  (query, key) pair per layer. Training = 3 × forward (backward ≈ 2 × forward), the usual
  ``6N`` rule plus attention. Attention is given twice: counting only the pairs each layer's mask
  allows ("sparse", what a block-sparse kernel can reach) and all causal pairs ("dense", what a
  masked dense kernel computes at best).
- **Memory** per GPU, mixed precision with fp32 master weights: weights 4 B, gradients 4 B and
  AdamW moments 8 B per parameter (16 B in all), divided by ``shard`` for FSDP/ZeRO-3 sharding.
  Activations per sequence follow Korthikanti et al. (2022), ``34 · s · d`` bytes per layer at
  2-byte precision with a fused attention kernel (no stored score matrix); with per-block
  checkpointing only each block's input (``s · d`` values) is kept plus one block's activations
  during recomputation. fp32 logits and their gradients are added.
- **Time** = FLOPs per step / (gpus · peak FLOP/s · MFU), at the paper's step count by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from dalle_zero.models.transformer import TransformerConfig
from dalle_zero.nn.masks import AttentionPattern

ADAM_BYTES_PER_PARAM = 16  # fp32 weights + fp32 gradients + two fp32 AdamW moments


def count_parameters(config: TransformerConfig) -> dict[str, int]:
    """Parameter counts by part: ``blocks`` (of which ``block_matrices``), ``embeddings``, ``heads``, ``total``."""
    c = config
    d, h = c.n_embd, c.mlp_ratio * c.n_embd
    matrices = c.n_layer * (4 * d * d + 2 * d * h)  # qkv + proj + MLP: 12·d² at mlp_ratio 4
    vectors = c.n_layer * (3 * d + d + h + d + 4 * d)  # biases of qkv, proj, fc, mlp proj; 2 LayerNorms
    embeddings = d * (1 + c.text_vocab_size + 2 * c.text_seq_len + c.image_vocab_size + 2 * c.image_grid)
    heads = d * (c.text_vocab_size + c.image_vocab_size) + 2 * d  # + final LayerNorm
    blocks = matrices + vectors
    return {
        "blocks": blocks,
        "block_matrices": matrices,
        "embeddings": embeddings,
        "heads": heads,
        "total": blocks + embeddings + heads,
    }


def attention_pairs(config: TransformerConfig) -> dict[str, int]:
    """Allowed (query, key) pairs summed over layers (``sparse``) and causal pairs × layers (``dense``)."""
    c = config
    length = c.stream_len
    per_kind: dict[str, int] = {}
    for kind in set(c.attn_pattern):
        pattern = AttentionPattern(kind, c.text_seq_len + 1, c.image_grid, c.conv_kernel_size)
        per_kind[kind] = int(pattern.dense(length).sum())
    sparse = sum(per_kind[k] for k in c.attn_pattern)
    return {"sparse": sparse, "dense": c.n_layer * length * (length + 1) // 2}


def flops_per_sequence(config: TransformerConfig) -> dict[str, float]:
    """Forward and training FLOPs of one full sequence (``stream_len`` input positions)."""
    c = config
    params = count_parameters(c)
    matmul = 2 * params["block_matrices"] * c.stream_len
    heads = 2 * c.n_embd * (c.text_seq_len * c.text_vocab_size + c.image_seq_len * c.image_vocab_size)
    pairs = attention_pairs(c)
    attn_sparse = 4 * c.n_embd * pairs["sparse"]
    attn_dense = 4 * c.n_embd * pairs["dense"]
    forward = matmul + heads + attn_sparse
    return {
        "forward": float(forward),
        "train": 3.0 * forward,
        "train_dense_attention": 3.0 * (matmul + heads + attn_dense),
        "attention_fraction": attn_sparse / forward,
    }


def activation_bytes_per_sequence(config: TransformerConfig, *, bytes_per_value: int, checkpointing: bool) -> int:
    """Activation memory of one sequence in training (see the module docstring for the model)."""
    c = config
    s, d = c.stream_len, c.n_embd
    per_layer = 34 * s * d * bytes_per_value // 2  # Korthikanti et al. at 2 bytes per value
    logits = 2 * 4 * (c.text_seq_len * c.text_vocab_size + c.image_seq_len * c.image_vocab_size)
    if checkpointing:
        return c.n_layer * s * d * bytes_per_value + per_layer + logits
    return c.n_layer * per_layer + logits


@dataclass(frozen=True, kw_only=True)
class TrainingPlan:
    """The figures ``dalle plan`` prints; sizes in bytes, times in seconds."""

    parameters: dict[str, int]
    flops_per_token: float  # training FLOPs per input position (sparse attention)
    flops_per_step: float
    flops_per_step_dense_attention: float
    attention_fraction: float
    tokens_per_step: int
    state_bytes_per_gpu: int  # weights + gradients + optimizer, after sharding
    activation_bytes_per_gpu: int
    activation_bytes_per_gpu_checkpointed: int
    step_seconds: float
    total_seconds: float


def plan_training(
    config: TransformerConfig,
    *,
    gpus: int = 1,
    batch_size: int | None = None,
    steps: int = 430_000,
    precision: str = "bf16",
    peak_flops: float = 312e12,
    mfu: float = 0.4,
    shard: int | None = None,
) -> TrainingPlan:
    """Plan ``steps`` updates of global ``batch_size`` sequences (default: one per GPU, as the paper did)
    on ``gpus`` devices of ``peak_flops`` at utilisation ``mfu``; state sharded over ``shard`` (default all)."""
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    batch_size = gpus if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    if peak_flops <= 0:
        raise ValueError(f"peak FLOP/s must be > 0, got {peak_flops}")
    shard = gpus if shard is None else shard
    params = count_parameters(config)
    flops = flops_per_sequence(config)
    per_gpu_batch = -(-batch_size // gpus)
    value_bytes = 2 if precision == "bf16" else 4
    step_flops = flops["train"] * batch_size
    step_seconds = step_flops / (gpus * peak_flops * mfu)
    return TrainingPlan(
        parameters=params,
        flops_per_token=flops["train"] / config.stream_len,
        flops_per_step=step_flops,
        flops_per_step_dense_attention=flops["train_dense_attention"] * batch_size,
        attention_fraction=flops["attention_fraction"],
        tokens_per_step=batch_size * config.stream_len,
        state_bytes_per_gpu=-(-ADAM_BYTES_PER_PARAM * params["total"] // shard),
        activation_bytes_per_gpu=per_gpu_batch
        * activation_bytes_per_sequence(config, bytes_per_value=value_bytes, checkpointing=False),
        activation_bytes_per_gpu_checkpointed=per_gpu_batch
        * activation_bytes_per_sequence(config, bytes_per_value=value_bytes, checkpointing=True),
        step_seconds=step_seconds,
        total_seconds=step_seconds * steps,
    )
