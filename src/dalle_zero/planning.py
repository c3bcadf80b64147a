"""Parameters, FLOPs, memory and time of training a :class:`TransformerConfig` (paper §2.4–2.5, App. B.2).

Everything here is arithmetic on the config; nothing is allocated. Conventions:

- **Parameters** are counted analytically and equal ``DalleTransformer(config).num_parameters()``.
- **FLOPs** count a multiply-add as 2. Per sequence, forward = ``2 · (block matrices)`` per input
  position + the text/image heads on their own positions + attention ``4 · n_embd`` per allowed
  (query, key) pair per layer. Training = 3 × forward (backward ≈ 2 × forward), the usual
  ``6N`` rule plus attention. Attention is given twice: counting only the pairs each layer's mask
  allows ("sparse", what a block-sparse kernel can reach) and all causal pairs ("dense", what a
  masked dense kernel computes at best).
- **Memory** per GPU. bf16 and fp32 (this code): fp32 master weights 4 B, gradients 4 B and AdamW
  moments 8 B per parameter (16 B in all), plus a 4 B error buffer per block-matrix parameter under
  PowerSGD. fp16 is the paper's layout (App. B.2, D, E): the blocks' matrices keep 16-bit weights,
  16-bit error buffers (into which the gradients accumulate) and two 16-bit Adam moments (8 B), and
  gains, biases, embeddings and unembeddings stay fp32 with fp32 gradients and moments (16 B). The
  state is divided by ``shard``; a sharded run also holds two layers' gathered weights (the current
  one and the prefetched next) and one layer's unsharded gradient. Activations per sequence follow
  Korthikanti et al. (2022), ``34 · s · d`` bytes per layer at 2-byte precision with a fused
  attention kernel (no stored score matrix); with per-block checkpointing only each block's input
  (``s · d`` values) is kept plus one block's activations during recomputation. fp32 logits and
  their gradients are added. The total per GPU counts checkpointed activations.
- **Machines** of ``gpus_per_machine`` GPUs, the paper's layout (§2.5, App. E): the state is sharded
  within a machine (``shard`` defaults to ``gpus_per_machine`` when that is above 1, else to all
  GPUs) and gradients cross machines compressed by PowerSGD at ``powersgd_rank``, each of a
  machine's GPUs factorising its shard of every block matrix at rank r/m
  (:func:`dalle_zero.training.powersgd.matrix_shards`). Bytes sent per step are one machine's
  all-reduce payload: the factors P and Q' (16-bit in the paper's fp16 layout, fp32 in this code)
  and everything else uncompressed in fp32. The compression rate is over the blocks' matrices, as
  the paper's ``1 - r(m + 2)/(2dm)``.
- **Time** = FLOPs per step / (gpus · peak FLOP/s · MFU), at the paper's step count by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from dalle_zero.models.transformer import TransformerConfig
from dalle_zero.nn.masks import AttentionPattern
from dalle_zero.training.powersgd import check_rank, matrix_shards, sent_elements
from dalle_zero.training.precision import PRECISIONS

ADAM_BYTES_PER_PARAM = 16  # fp32 weights + fp32 gradients + two fp32 AdamW moments
PAPER_FP16_MATRIX_BYTES = 8  # the paper's blocks' matrices: 16-bit weights, error buffers, Adam mean and variance


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


def block_matrix_shapes(config: TransformerConfig) -> list[tuple[str, tuple[int, int]]]:
    """One layer's 2-D weights as (name, (out, in)), the matrices PowerSGD compresses."""
    d, h = config.n_embd, config.mlp_ratio * config.n_embd
    return [("attn.qkv.weight", (3 * d, d)), ("attn.proj.weight", (d, d)),
            ("mlp.fc.weight", (h, d)), ("mlp.proj.weight", (d, h))]


def powersgd_elements(config: TransformerConfig, rank: int, gpus_per_machine: int = 1) -> dict[str, int]:
    """Numbers the blocks' matrices send per step under PowerSGD at total ``rank`` (``sent``), each matrix
    cut into ``gpus_per_machine`` shards at rank/shards, against their size (``matrices``)."""
    if rank % gpus_per_machine:
        raise ValueError(f"PowerSGD rank {rank} must be a multiple of the {gpus_per_machine} GPUs of a machine")
    sent = matrices = 0
    for name, shape in block_matrix_shapes(config):
        check_rank(f"blocks.*.{name}", shape, rank, gpus_per_machine)
        pieces = matrix_shards(name, shape, gpus_per_machine)
        sent += sum(sent_elements(piece.shape, rank // gpus_per_machine) for piece in pieces)
        matrices += shape[0] * shape[1]
    return {"sent": config.n_layer * sent, "matrices": config.n_layer * matrices}


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
    gpus_per_machine: int
    shard: int  # GPUs sharing the state
    state_bytes_per_gpu: int  # weights + gradients (error buffers) + optimizer, after sharding
    gathered_bytes_per_gpu: int  # a sharded run's gathered weights and unsharded gradient
    activation_bytes_per_gpu: int
    activation_bytes_per_gpu_checkpointed: int
    memory_bytes_per_gpu: int  # state + gathered + checkpointed activations
    powersgd_rank: int  # 0: uncompressed
    compression_rate: float | None  # of the blocks' matrices
    bytes_sent_per_step: int  # one machine's gradient all-reduce payload
    bytes_sent_per_step_uncompressed: int
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
    gpus_per_machine: int = 1,
    powersgd_rank: int = 0,
) -> TrainingPlan:
    """Plan ``steps`` updates of global ``batch_size`` sequences (default: one per GPU, as the paper did)
    on ``gpus`` devices of ``peak_flops`` at utilisation ``mfu``, in machines of ``gpus_per_machine``;
    state sharded over ``shard`` (default: a machine's GPUs if more than one, else all); gradients
    between machines compressed by PowerSGD at ``powersgd_rank`` (0: not)."""
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    if gpus_per_machine < 1 or gpus % gpus_per_machine:
        raise ValueError(f"gpus ({gpus}) must be a multiple of gpus per machine ({gpus_per_machine})")
    if powersgd_rank < 0:
        raise ValueError(f"PowerSGD rank must be >= 0, got {powersgd_rank}")
    batch_size = gpus if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    if peak_flops <= 0:
        raise ValueError(f"peak FLOP/s must be > 0, got {peak_flops}")
    shard = (gpus_per_machine if gpus_per_machine > 1 else gpus) if shard is None else shard
    params = count_parameters(config)
    flops = flops_per_sequence(config)
    per_gpu_batch = -(-batch_size // gpus)
    value_bytes = 4 if precision == "fp32" else 2
    step_flops = flops["train"] * batch_size
    step_seconds = step_flops / (gpus * peak_flops * mfu)

    matrices, rest = params["block_matrices"], params["total"] - params["block_matrices"]
    if precision == "fp16":  # the paper's layout: the gradients accumulate into the error buffers
        state = PAPER_FP16_MATRIX_BYTES * matrices + ADAM_BYTES_PER_PARAM * rest
        grad_bytes, factor_bytes = 2, 2
    else:
        state = ADAM_BYTES_PER_PARAM * params["total"] + (4 * matrices if powersgd_rank else 0)
        grad_bytes, factor_bytes = 4, 4
    layer = params["blocks"] // config.n_layer
    gathered = layer * (2 * value_bytes + grad_bytes) if shard > 1 else 0
    activations = per_gpu_batch * activation_bytes_per_sequence(config, bytes_per_value=value_bytes, checkpointing=True)
    uncompressed = grad_bytes * matrices + 4 * rest
    if powersgd_rank:
        elements = powersgd_elements(config, powersgd_rank, gpus_per_machine)
        rate: float | None = 1 - elements["sent"] / elements["matrices"]
        sent = factor_bytes * elements["sent"] + 4 * rest
    else:
        rate, sent = None, uncompressed
    return TrainingPlan(
        parameters=params,
        flops_per_token=flops["train"] / config.stream_len,
        flops_per_step=step_flops,
        flops_per_step_dense_attention=flops["train_dense_attention"] * batch_size,
        attention_fraction=flops["attention_fraction"],
        tokens_per_step=batch_size * config.stream_len,
        gpus_per_machine=gpus_per_machine,
        shard=shard,
        state_bytes_per_gpu=-(-state // shard),
        gathered_bytes_per_gpu=gathered,
        activation_bytes_per_gpu=per_gpu_batch
        * activation_bytes_per_sequence(config, bytes_per_value=value_bytes, checkpointing=False),
        activation_bytes_per_gpu_checkpointed=activations,
        memory_bytes_per_gpu=-(-state // shard) + gathered + activations,
        powersgd_rank=powersgd_rank,
        compression_rate=rate,
        bytes_sent_per_step=sent,
        bytes_sent_per_step_uncompressed=uncompressed,
        step_seconds=step_seconds,
        total_seconds=step_seconds * steps,
    )
