"""One training run under torchrun, for the multi-process tests (tests/training/test_fsdp.py).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/training/distributed_worker.py \
        prior CONFIG.json RUN_DIR [--stop-after N] [--resume]
    ... distributed_worker.py toy RUN_DIR --loop '{"strategy": "fsdp", "batch_size": 2}' [--term-at RANK:STEP]

``prior`` trains the prior of the train config in CONFIG.json; ``toy`` trains the loop tests' toy model
(``tests/training/test_loop.py``) with the given loop fields; ``--term-at RANK:STEP`` makes that rank alone
send itself SIGTERM at the end of that step, as a scheduler that stops one process does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for `tests.training`


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("prior", "toy"))
    parser.add_argument("paths", nargs="+", help="prior: CONFIG RUN_DIR; toy: RUN_DIR")
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--loop", default="{}", help="toy: LoopConfig fields as JSON")
    parser.add_argument("--term-at", default=None, help="toy: RANK:STEP, that rank sends itself SIGTERM")
    args = parser.parse_args()
    if args.kind == "toy":
        from tests.factories.toy import run_toy

        task = _signalling_task(*map(int, args.term_at.split(":"))) if args.term_at else _toy_task()
        run_toy(Path(args.paths[0]), resume=args.resume, stop_after=args.stop_after, task=task, **json.loads(args.loop))
        return

    from dalle_zero.training.loop import train
    from dalle_zero.training.prior import PriorTask, PriorTrainConfig, build_model

    config_path, run_dir = args.paths
    cfg = PriorTrainConfig.from_json_file(config_path)
    train(
        build_model(cfg), PriorTask(cfg), cfg.loop, Path(run_dir), train_config=cfg,
        resume=args.resume, progress=False, stop_after=args.stop_after,
    )


def _toy_task() -> type:
    from tests.factories.toy import ToyTask

    return ToyTask


def _signalling_task(rank: int, at_step: int) -> type:
    """The toy task, except that process ``rank`` sends itself SIGTERM when step ``at_step`` ends."""
    import os
    import signal

    import torch.distributed as dist

    class SignallingTask(_toy_task()):
        def on_step_end(self, model, step, metrics):
            super().on_step_end(model, step, metrics)
            if step == at_step and dist.get_rank() == rank:
                os.kill(os.getpid(), signal.SIGTERM)

    return SignallingTask


if __name__ == "__main__":
    main()
