"""PowerSGD gradient compression as the paper uses it: a DDP communication hook (paper §2.5, App. E;
docs/training_at_scale.md).

Each step, for every piece ``M`` (a × b) of a weight matrix that is compressed, every rank computes

    M = g + e                       # local gradient plus this rank's error buffer (error feedback)
    P = mean over ranks of M·Q      # (a, r); Q (b, r) is a fixed random Gaussian, never updated
    P = orthonormal(P + ε·I)        # ε = 1e-6 keeps P full-rank (a zero gradient); Householder QR
    Q' = mean over ranks of Mᵀ·P    # (b, r)
    g = P·Q'ᵀ;  e = M - P·Q'ᵀ       # the decompressed mean gradient; what it missed, kept for the next step

so only ``r·(a + b)`` numbers per piece cross the network instead of ``a·b``. What differs from
PyTorch's stock hook (``powersgd: "torch"``, kept as an option): Q is not warm-started from the
last step (the paper found a fixed Q as good, and resampling it worse); ε·I before orthogonalising;
only the transformer blocks' 2-D weights are compressed, and everything else (embeddings,
unembeddings, gains, biases) is all-reduced uncompressed in fp32; an error buffer is zeroed only
after it has been contaminated by a nonfinite value; and the gradient norm for clipping is the
paper's, ``Σ‖Q'‖²`` over the compressed pieces (P has orthonormal columns, so ``‖P·Q'ᵀ‖ = ‖Q'‖``)
plus ``Σ‖g‖²`` over the rest, infinite after a nonfinite value so that the loop skips that update.

**Pieces.** The fused ``qkv`` weight is three d×d matrices, q, k and v, compressed separately. With
``shards`` m > 1 each matrix is further cut into m shards, each factorised at rank r/m on its own:
the paper shards every matrix 8 ways within a machine, along its output axis except the MLP's
second matrix (along its input axis, App. E; Fig. 5), and each GPU compresses its own shard with its
counterparts on the other machines. A DDP rank here plays one machine, so ``shards=8`` sends what
the paper's machines sent. The fraction of the blocks' matrices sent per step is then

    r·(m + 2) / (2·d·m)         (4 d×d + a d×4d + a 4d×d matrix per layer, each cut m ways)

i.e. 1 - 5r/(8d) at m = 8: 86 % for the 12B model's d = 3968 and r = 896, Table 1.

Not as in the paper: P, Q' and the error buffers are fp32, not the paper's 16-bit 1-6-9 format
with hand-tuned scales, and sharding is emulated by the hook (FSDP and a DDP hook cannot be
combined here: docs/training_at_scale.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

logger = logging.getLogger(__name__)

KINDS = ("paper", "torch")  # our hook after App. E; PyTorch's stock powerSGD_hook
EPSILON = 1e-6  # added to P as ε·I before orthogonalising (App. E)
FUSED = {"qkv.weight": ("q", "k", "v")}  # weights that stack several matrices along their output axis


@dataclass(frozen=True)
class MatrixShard:
    """One piece of a weight matrix that is factorised on its own: ``rows`` × ``cols`` of the parameter
    (torch layout: output × input), named ``key`` in the checkpoint."""

    key: str
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]

    def of(self, matrix: Tensor) -> Tensor:
        """This piece of ``matrix`` (a view)."""
        return matrix[self.rows[0] : self.rows[1], self.cols[0] : self.cols[1]]


def _split(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) cut into ``parts`` contiguous ranges whose sizes differ by at most one."""
    size, extra = divmod(stop - start, parts)
    bounds = [start]
    for i in range(parts):
        bounds.append(bounds[-1] + size + (i < extra))
    return list(zip(bounds[:-1], bounds[1:]))


def matrix_shards(name: str, shape: tuple[int, int], shards: int = 1) -> list[MatrixShard]:
    """The pieces of weight ``name`` of ``shape`` (out, in) that are compressed separately.

    A fused weight (``FUSED``) is first cut into its matrices; each is then cut into ``shards``
    along its output axis, or along its input axis if it has more inputs than outputs (the MLP's
    second matrix), as the paper shards its matrices across a machine's GPUs.
    """
    n_out, n_in = shape
    labels = next((v for k, v in FUSED.items() if name == k or name.endswith("." + k)), None)
    if labels is not None and n_out % len(labels):
        raise ValueError(f"{name}: a fused {'/'.join(labels)} weight needs rows divisible by {len(labels)}: {shape}")
    if labels is None:
        matrices = [(name, (0, n_out))]
    else:
        matrices = [(f"{name}[{label}]", rows) for label, rows in zip(labels, _split(0, n_out, len(labels)))]
    pieces = []
    for key, (r0, r1) in matrices:
        along_inputs = n_in > r1 - r0
        for i, part in enumerate(_split(0, n_in if along_inputs else r1 - r0, shards)):
            rows, cols = ((r0, r1), part) if along_inputs else ((r0 + part[0], r0 + part[1]), (0, n_in))
            pieces.append(MatrixShard(key if shards == 1 else f"{key}#{i}", rows, cols))
    return pieces


def check_rank(name: str, shape: tuple[int, int], rank: int, shards: int) -> None:
    """A one-line ``ValueError`` naming the matrix if rank/shards exceeds the smaller side of one of its pieces."""
    per_shard = rank // shards
    whole = {piece.key: piece.shape for piece in matrix_shards(name, shape)}
    for piece in matrix_shards(name, shape, shards):
        if per_shard > min(piece.shape):
            key = piece.key.split("#")[0]
            a, b = piece.shape
            where = f"cut into {shards} shards of {a}×{b}, each" if shards > 1 else "it"
            raise ValueError(
                f"PowerSGD rank {rank} is too large for matrix {key} ({whole[key][0]}×{whole[key][1]}): "
                f"{where} would take rank {per_shard}, at most {min(a, b)}; lower LoopConfig.powersgd_rank"
            )


def sent_elements(shape: tuple[int, int], rank: int) -> int:
    """Numbers sent for one piece of ``shape`` at ``rank``: P (a × r) and Q' (b × r)."""
    return rank * (shape[0] + shape[1])


def orthonormal(p: Tensor, eps: float = EPSILON) -> Tensor:
    """(a, r) -> (a, r) orthonormal columns spanning ``p + eps·I`` (Householder QR; a >= r).

    Gram–Schmidt (the stock hook's choice at low rank) is unstable here (App. E); ε·I keeps a zero or
    rank-deficient ``p`` (a matrix whose gradient vanished) from dividing by zero.
    """
    eye = torch.eye(p.shape[0], p.shape[1], dtype=p.dtype, device=p.device)
    return torch.linalg.qr(p + eps * eye).Q


class PowerSGD:
    """The hook's state: which gradients are compressed and how, the fixed Q of every piece, the error
    buffers, and the last step's gradient norm. Register with :func:`register`.

    ``blocks`` are the transformer blocks whose 2-D weights are compressed (``module``'s other
    parameters are all-reduced uncompressed); ``rank`` is the total rank of a matrix, ``rank/shards``
    that of each of its ``shards`` pieces; Q comes from ``seed`` (the same on every rank).
    """

    def __init__(
        self,
        module: nn.Module,
        blocks: Iterable[nn.Module],
        *,
        rank: int,
        shards: int = 1,
        seed: int = 0,
        group: Any = None,
    ) -> None:
        if rank < 1 or rank % shards:
            raise ValueError(f"PowerSGD rank must be a positive multiple of its {shards} shards, got {rank}")
        self.rank, self.shards, self.group = rank, shards, group
        self.names = {id(p): name for name, p in module.named_parameters()}
        compressed = {id(p) for block in blocks for p in block.parameters() if p.ndim == 2}
        self.pieces: dict[int, list[MatrixShard]] = {}
        self.q: dict[str, Tensor] = {}
        gen = torch.Generator().manual_seed(seed)
        for name, p in module.named_parameters():  # the same order, hence the same Q, on every rank
            if id(p) not in compressed or not p.requires_grad:
                continue
            check_rank(name, tuple(p.shape), rank, shards)
            self.pieces[id(p)] = matrix_shards(name, tuple(p.shape), shards)
            for piece in self.pieces[id(p)]:
                self.q[piece.key] = torch.randn(piece.shape[1], rank // shards, generator=gen)
        if not self.pieces:
            logger.warning("PowerSGD: the model lists no transformer blocks; every gradient is sent uncompressed")
        self.errors: dict[str, Tensor] = {}
        self._norm_sq: dict[str, Tensor] = {}  # per piece or parameter, overwritten every step

    # ---- one bucket of gradients ----

    def reduce(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """Replace ``grads`` (views into DDP's bucket) by their mean over the ranks: compressed or not."""
        world = dist.get_world_size(self.group)
        plain = [(p, g) for p, g in zip(params, grads) if id(p) not in self.pieces]
        if plain:
            flat = _all_reduce_mean([g.reshape(-1).float() for _, g in plain], world, self.group)
            for (p, g), mean in zip(plain, flat):
                g.copy_(mean.view_as(g))
                self._norm_sq[self.names[id(p)]] = mean.square().sum()
        views = [(piece, piece.of(g)) for p, g in zip(params, grads) for piece in self.pieces.get(id(p), [])]
        if not views:
            return
        ms = [view.float() + self._error(piece, view) for piece, view in views]  # (a, b) each
        ps = _all_reduce_mean([m @ self._q(piece, m) for (piece, _), m in zip(views, ms)], world, self.group)
        ps = [orthonormal(p) for p in ps]  # (a, r)
        qs = _all_reduce_mean([m.T @ p for m, p in zip(ms, ps)], world, self.group)  # (b, r)
        for (piece, view), m, p, q in zip(views, ms, ps, qs):
            approx = p @ q.T
            view.copy_(approx)
            error = m.sub_(approx)
            error.masked_fill_(~torch.isfinite(error).all(), 0.0)  # contaminated: start again from zero
            self.errors[piece.key] = error
            self._norm_sq[piece.key] = q.square().sum()

    def _error(self, piece: MatrixShard, like: Tensor) -> Tensor:
        if piece.key not in self.errors:
            self.errors[piece.key] = torch.zeros(piece.shape, dtype=torch.float32, device=like.device)
        return self.errors[piece.key]

    def _q(self, piece: MatrixShard, like: Tensor) -> Tensor:
        q = self.q[piece.key]
        if q.device != like.device:
            q = self.q[piece.key] = q.to(like.device)
        return q

    # ---- what the loop asks ----

    def grad_norm(self) -> float:
        """The global norm of the last step's decompressed gradient as the paper computes it; inf if any
        part was nonfinite."""
        if not self._norm_sq:
            return 0.0
        total = float(torch.stack([v.to("cpu", torch.float64) for v in self._norm_sq.values()]).sum())
        return math.sqrt(total) if math.isfinite(total) else math.inf

    def clip_grad_norm_(self, parameters: Iterable[nn.Parameter], max_norm: float) -> float:
        """Scale the gradients of ``parameters`` to norm at most ``max_norm`` by :meth:`grad_norm`; return it."""
        norm = self.grad_norm()
        if math.isfinite(norm):  # (a nonfinite one skips the update)
            torch.nn.utils.clip_grads_with_norm_(list(parameters), max_norm, torch.tensor(norm))
        return norm

    def state_dict(self) -> dict[str, Tensor]:
        """This rank's error buffers (CPU copies), by piece."""
        return {k: v.detach().cpu().clone() for k, v in self.errors.items()}

    def load_state_dict(self, per_rank: list[Mapping[str, Tensor]], rank: int) -> None:
        """Restore the error buffers from every rank's :meth:`state_dict`: each rank its own when the
        number of ranks is unchanged (an exact resume), else every rank the mean of the saved ones (the
        paper's rule: the sum divided by the number of machines)."""
        keys = {piece.key for pieces in self.pieces.values() for piece in pieces}
        if not per_rank or any(set(saved) - keys for saved in per_rank):
            logger.warning("PowerSGD: the checkpoint's error buffers do not match this model's pieces; starting "
                           "from zero buffers")
            self.errors = {}
            return
        if len(per_rank) == dist.get_world_size(self.group):
            own = per_rank[rank]
            self.errors = {k: v.float().clone() for k, v in own.items()}
        else:
            self.errors = {k: torch.stack([s[k].float() for s in per_rank]).mean(0) for k in per_rank[0]}


def _all_reduce_mean(tensors: list[Tensor], world: int, group: Any) -> list[Tensor]:
    """The mean over the ranks of each of ``tensors``, sent as one flat all-reduce."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    flat /= world
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def powersgd_hook(state: PowerSGD, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
    """DDP communication hook: ``bucket``'s gradients become their (compressed) mean over the ranks."""
    state.reduce(bucket.parameters(), bucket.gradients())
    fut: torch.futures.Future[Tensor] = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


# DDP checks a hook's annotations as objects; ``from __future__ import annotations`` made them strings
powersgd_hook.__annotations__ = {"state": PowerSGD, "bucket": dist.GradBucket, "return": torch.futures.Future[Tensor]}


def register(ddp: nn.Module, state: PowerSGD) -> None:
    """Send ``ddp``'s gradients through :func:`powersgd_hook`; :func:`state_of` finds ``state`` again."""
    ddp.register_comm_hook(state, powersgd_hook)  # type: ignore[operator]
    ddp.powersgd_state = state


def state_of(module: nn.Module) -> PowerSGD | None:
    """The :class:`PowerSGD` state a module was registered with, if any."""
    state = getattr(module, "powersgd_state", None)
    return state if isinstance(state, PowerSGD) else None
