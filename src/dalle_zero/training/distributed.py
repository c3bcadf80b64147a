"""One training code path for one process and many (paper §2.5; docs/training_at_scale.md).

Launch with ``torchrun --nproc_per_node N dalle train ...``: the environment variables torchrun sets
(RANK, WORLD_SIZE, LOCAL_RANK) turn on ``torch.distributed`` with NCCL on GPUs and gloo on CPU, and
each rank takes a disjoint slice of every batch. Two strategies (``LoopConfig.strategy``):

- ``"ddp"``: every rank holds the whole model; DistributedDataParallel averages the gradients,
  optionally compressed by PowerSGD (``powersgd_rank`` > 0): the paper's variant
  (:mod:`~dalle_zero.training.powersgd`, ``powersgd="paper"``) or PyTorch's stock hook
  (``powersgd="torch"``).
- ``"fsdp"``: FSDP2 (``fully_shard``) for models that do not fit one device. Each repeated block is
  one unit (its parameters all-gathered before its forward and backward, its gradients
  reduce-scattered after), the rest of the model another; a rank keeps only its shard of every
  parameter, gradient and optimizer state. With bf16 the blocks compute on bf16 copies of their
  parameters (embeddings and heads stay fp32) and reduce gradients in fp32; the shards stay fp32.
  :func:`full_state_dict` and :func:`full_optimizer_state_dict` gather what one process would hold,
  so checkpoints are the same files under both strategies.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dalle_zero.training import powersgd as psgd

logger = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this context initialised the process group, so it tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> DistContext:
    """Initialise the process group if launched by torchrun; otherwise a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    owns = world_size > 1 and not dist.is_initialized()
    if owns:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        logger.info("process group: rank %d of %d (%s)", rank, world_size, backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, owns_group=owns)


def check_powersgd(kind: str, rank: int, shards: int) -> None:
    """Validate ``LoopConfig``'s PowerSGD fields (``powersgd``, ``powersgd_rank``, ``powersgd_shards``)."""
    if kind not in psgd.KINDS:
        raise ValueError(f"LoopConfig.powersgd must be one of {list(psgd.KINDS)}, got {kind!r}")
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ValueError(f"LoopConfig.powersgd_shards must be an integer >= 1, got {shards!r}")
    if shards > 1 and kind != "paper":
        raise ValueError(f"LoopConfig.powersgd_shards is {shards} but only powersgd 'paper' shards its matrices")
    if rank % shards:
        raise ValueError(f"LoopConfig.powersgd_rank ({rank}) must be a multiple of powersgd_shards ({shards})")


def wrap(
    module: nn.Module,
    ctx: DistContext,
    *,
    powersgd_rank: int = 0,
    powersgd: str = "paper",
    powersgd_shards: int = 1,
    blocks: Iterable[nn.Module] = (),
    seed: int = 0,
) -> nn.Module:
    """``module`` in DDP when there are several processes (else itself), its gradients compressed by
    PowerSGD at ``powersgd_rank`` if > 0: the paper's hook (the 2-D weights of ``blocks``, each cut into
    ``powersgd_shards``; Q from ``seed``) or the stock one (``powersgd="torch"``). A rank too large for
    one of the blocks' matrices is a ``ValueError`` naming it, with one process too."""
    blocks = list(blocks)
    if powersgd_rank > 0 and powersgd == "paper":
        names = {id(p): name for name, p in module.named_parameters()}
        for p in (p for block in blocks for p in block.parameters() if p.ndim == 2):
            psgd.check_rank(names.get(id(p), "a block matrix"), tuple(p.shape), powersgd_rank, powersgd_shards)
    if not ctx.enabled:
        return module
    # multi-process only, and absent from torch builds without distributed support
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if powersgd_rank > 0 and powersgd == "paper":
        state = psgd.PowerSGD(module, blocks, rank=powersgd_rank, shards=powersgd_shards, seed=seed)
        psgd.register(ddp, state)
    elif powersgd_rank > 0:
        # multi-process only, and absent from torch builds without distributed support
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as stock

        state = stock.PowerSGDState(process_group=None, matrix_approximation_rank=powersgd_rank,
                                    start_powerSGD_iter=2, use_error_feedback=True)
        ddp.register_comm_hook(state, stock.powerSGD_hook)
    return ddp


def grad_clipper(module: nn.Module) -> Callable[[Iterable[nn.Parameter], float], Any]:
    """``clip(parameters, max_norm) -> norm`` for ``module`` as :func:`wrap` returned it: by the paper's
    PowerSGD norm under its hook, else ``torch.nn.utils.clip_grad_norm_``."""
    state = psgd.state_of(module)
    return state.clip_grad_norm_ if state is not None else torch.nn.utils.clip_grad_norm_


def update_is_finite(module: nn.Module) -> bool:
    """False when the paper's PowerSGD hook saw a nonfinite gradient this step: the update is skipped
    (its error buffers were zeroed). Always True otherwise."""
    state = psgd.state_of(module)
    return state is None or math.isfinite(state.grad_norm())


def gather_powersgd_state(module: nn.Module, ctx: DistContext) -> list[dict[str, torch.Tensor]] | None:
    """Every rank's PowerSGD error buffers, in rank order, on rank 0 (None elsewhere, and without the
    paper's hook). A collective when the hook is on: every rank calls it."""
    state = psgd.state_of(module)
    return gather_to_main(state.state_dict(), ctx) if state is not None else None


def load_powersgd_state(module: nn.Module, saved: list[dict[str, torch.Tensor]] | None, ctx: DistContext) -> None:
    """Restore the error buffers :func:`gather_powersgd_state` saved (nothing to do without the hook)."""
    state = psgd.state_of(module)
    if state is None:
        return
    if saved is None:
        logger.info("the checkpoint holds no PowerSGD error buffers: they start from zero")
        return
    state.load_state_dict(saved, ctx.rank)


# ---- FSDP2 ----


def _fsdp() -> Any:
    # multi-process only, and absent from torch builds without distributed support; slow to import
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):  # public from torch 2.6
        raise ValueError(f"strategy 'fsdp' needs torch >= 2.6 (fully_shard); this is torch {torch.__version__}")
    return fsdp


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks a model lists with ``repeated_blocks()`` (the transformer's layers), else none."""
    return list(model.repeated_blocks()) if hasattr(model, "repeated_blocks") else []


def shard(
    module: nn.Module, ctx: DistContext, *, blocks: Iterable[nn.Module] = (), param_dtype: torch.dtype | None = None
) -> nn.Module:
    """Apply ``fully_shard`` to each of ``blocks``, then to ``module`` (the rest), over all ranks; in place.

    Each unit moves to ``ctx.device`` as it is sharded, so a model built on the CPU never needs to
    fit the device whole. With ``param_dtype`` (bf16) the blocks gather their parameters in that
    dtype and compute on them (their floating-point inputs cast to it), and their gradients are
    reduced in fp32; the rest of the model (embeddings, heads, final norm) stays fp32, as the paper
    keeps its embeddings and unembeddings (paper App. D), unless there are no blocks and the
    whole model is the one unit. ``module``'s own inputs, the loss's batch, are never cast.
    """
    fsdp = _fsdp()
    # multi-process only, and absent from torch builds without distributed support
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    module.to(memory_format=torch.contiguous_format)  # FSDP2 shards contiguous parameters only (dVAE convs: NHWC)
    blocks = list(blocks)
    reduce_dtype = torch.float32 if param_dtype is not None else None
    for block in blocks:
        policy = fsdp.MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
        fsdp.fully_shard(block, mesh=mesh, mp_policy=policy)
    root_dtype = None if blocks else param_dtype
    policy = fsdp.MixedPrecisionPolicy(
        param_dtype=root_dtype, reduce_dtype=reduce_dtype if root_dtype else None, cast_forward_inputs=False
    )
    fsdp.fully_shard(module, mesh=mesh, mp_policy=policy)
    return module


@contextlib.contextmanager
def no_sync(module: nn.Module) -> Iterator[None]:
    """Accumulate this micro-batch's gradients locally (forward and backward inside the block).

    DDP's ``no_sync``, or FSDP2's ``set_requires_gradient_sync(False)`` on every unit; a plain
    module needs nothing.
    """
    if hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)
    elif hasattr(module, "no_sync"):
        with module.no_sync():
            yield
    else:
        yield


def clip_sharded_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` for FSDP-sharded gradients: the norm is the whole model's,
    over every rank's shards, and every rank scales its shards by the same factor. Returns the norm."""
    # multi-process only, and absent from torch builds without distributed support; slow to import
    from torch.distributed.tensor import DTensor

    params = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(norm, DTensor):  # already reduced over the ranks; a plain tensor for the scaling
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return float(norm)


def _full_options() -> Any:
    # multi-process only, and absent from torch builds without distributed support; slow
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded ``module.state_dict()`` of an FSDP-sharded module, on rank 0's CPU ({} on the
    other ranks). A collective: every rank must call it."""
    # multi-process only, and absent from torch builds without distributed support; slow
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_full_options())


def _param_numbers(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Parameter name -> its number in ``optimizer.state_dict()`` (the order of the param groups)."""
    number = {id(p): i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    return {name: number[id(p)] for name, p in model.named_parameters() if id(p) in number}


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` as one unsharded process holds it (parameters numbered, full state
    tensors) for an optimizer over ``model``'s FSDP shards; on rank 0's CPU, {} elsewhere. A collective."""
    # multi-process only, and absent from torch builds without distributed support; slow
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer, options=_full_options())
    if not by_name:
        return {}
    number = _param_numbers(model, optimizer)
    return {
        "state": {number[name]: value for name, value in by_name["state"].items()},
        "param_groups": [{**g, "params": [number[name] for name in g["params"]]} for g in by_name["param_groups"]],
    }


def load_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a one-process ``optimizer.state_dict()`` (every rank holds all of it) into an optimizer over
    ``model``'s FSDP shards: each rank keeps the slices of its own shards."""
    # multi-process only, and absent from torch builds without distributed support; slow to import
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    name = {i: n for n, i in _param_numbers(model, optimizer).items()}
    saved = [len(g["params"]) for g in state["param_groups"]]
    own = [len(g["params"]) for g in optimizer.param_groups]
    if saved != own or set(name) != {i for g in state["param_groups"] for i in g["params"]}:
        raise ValueError(f"optimizer state holds param groups of {saved} parameters, this optimizer has {own}")
    by_name = {
        "state": {name[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [name[i] for i in g["params"]]} for g in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))


# ---- small collectives ----


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def gather_to_main(value: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's ``value`` (picklable), in rank order, on rank 0 (None on the others; every rank calls it)."""
    if not ctx.enabled:
        return [value]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(value, out, dst=0)
    return out


def from_main(value: Any, ctx: DistContext) -> Any:
    """Rank 0's ``value`` (picklable) on every rank (every rank calls it; the others' values are ignored)."""
    if not ctx.enabled:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """Whether ``flag`` is true on any rank (every rank calls it): a decision all ranks then share."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_mean(value: float, ctx: DistContext) -> float:
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def finish(ctx: DistContext) -> None:
    """End a run: every rank waits for the others, then the group :func:`setup` made is destroyed.

    Call it once the run's DDP/FSDP wrappers are freed. Left to interpreter shutdown, gloo's work
    objects can be destroyed after their group, which aborts the process ("terminate called without
    an active exception") and makes torchrun report a finished run as failed."""
    if not ctx.enabled:
        return
    barrier(ctx)
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
