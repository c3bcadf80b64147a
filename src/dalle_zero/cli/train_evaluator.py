"""``dalle train evaluator``: train the in-house evaluator on real training images (docs/evaluation.md).

The evaluator is the frozen feature extractor and classifier behind ``dalle eval``'s in-house
FID/KID/IS and tone/style read-outs. It never sees held-out images; its accuracy on them is printed
at the end and logged as ``val/<split>/<head>_acc`` in ``RUN/metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

HELP = "train the in-house evaluator (category / skin tone / style classifier) on real images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", required=True, help="dataset folder from `dalle data emoji` (metadata.jsonl)"
    )
    parser.add_argument("--out", required=True, help="run folder to write (the model is saved to RUN/model)")
    parser.add_argument("--config", default=None, help="JSON file of EvaluatorTrainConfig fields (optional)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer updates (default 3000)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per update (default 64)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input size of the model (default: the dataset's image size)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `dalle --help` imports every command module
    import torch

    # imported here, not at the top: `dalle --help` imports every command module
    from dalle_zero.data.images import load_image
    from dalle_zero.data.metadata import read_dataset_split
    from dalle_zero.models.evaluator import EmojiEvaluator
    from dalle_zero.training.evaluator import EvaluatorTask, EvaluatorTrainConfig, build_train_config
    from dalle_zero.training.loop import train
    from dalle_zero.training.run_files import last_validation

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = EvaluatorTrainConfig.from_json_file(args.config) if args.config else EvaluatorTrainConfig()
    loop_changes = {
        k: v
        for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("seed", args.seed))
        if v is not None
    }
    cfg = cfg.replace(data=str(args.data), loop=cfg.loop.replace(**loop_changes))
    data = Path(args.data)
    size = args.image_size
    if size is None and "image_size" not in _raw_json(args.config).get("model", {}):
        first = read_dataset_split(data, cfg.train_split)[:1]
        if first:
            size = int(load_image(data / "images" / f"{first[0]}.png").shape[-1])
    if size is not None:
        cfg = cfg.replace(model=cfg.model.replace(image_size=size))
    cfg = build_train_config(cfg)
    heads = ", ".join(f"{h.name} ({len(h.labels)})" for h in cfg.model.heads)
    print(f"evaluator heads: {heads}; input {cfg.model.image_size} px")

    task = EvaluatorTask.from_folder(cfg)
    print(
        f"training on {len(task.train_data)} real images of split {cfg.train_split!r}; held out: "
        + ", ".join(f"{k} {len(v)}" for k, v in task.eval_data.items())
    )
    torch.manual_seed(cfg.loop.seed)  # the initial weights depend on --seed alone
    model = EmojiEvaluator(cfg.model)
    out = Path(args.out)
    model_dir = train(
        model, task, cfg.loop, out, train_config=cfg, resume=args.resume, progress=not args.no_progress
    )

    final = last_validation(out)
    if final:
        (out / "evaluator_accuracy.json").write_text(json.dumps(final, indent=2) + "\n")
        print("held-out accuracy (real images never trained on):")
        for split in cfg.eval_splits:
            row = {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith(f"{split}/")}
            if row:
                print(
                    f"  {split}: "
                    + ", ".join(
                        f"{k} {v:.3f}"
                        for k, v in row.items()
                        if k.endswith("_acc") and not k.endswith("balanced_acc")
                    )
                )
    print(f"wrote {model_dir}")
    return 0


def _raw_json(path: str | None) -> dict:
    """The config file as written (to tell which fields it sets), or {} without one."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # EvaluatorTrainConfig.from_json_file has already reported a bad file
    return data if isinstance(data, dict) else {}
