"""Entry point of the ``dalle`` program.

Each subcommand lives in its own module that defines ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args)``. Modules import heavy dependencies inside ``run`` so ``dalle --help`` is instant.
User mistakes (missing files, bad values) end with a one-line ``dalle: error: ...`` and exit code 2,
never a traceback; set ``DALLE_DEBUG=1`` to see the traceback anyway.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys

from dalle_zero.runtime import flush_denormals

# (command words) -> module; a group ("train") gets its own sub-parser.
COMMANDS: dict[tuple[str, ...], str] = {
    ("demo",): "dalle_zero.cli.demo",
    ("data", "emoji"): "dalle_zero.cli.data_emoji",
    ("data", "shards"): "dalle_zero.cli.data_shards",
    ("train", "tokenizer"): "dalle_zero.cli.train_tokenizer",
    ("train", "dvae"): "dalle_zero.cli.train_dvae",
    ("train", "prior"): "dalle_zero.cli.train_prior",
    ("train", "clip"): "dalle_zero.cli.train_clip",
    ("train", "evaluator"): "dalle_zero.cli.train_evaluator",
    ("encode",): "dalle_zero.cli.encode",
    ("assemble",): "dalle_zero.cli.assemble",
    ("generate",): "dalle_zero.cli.generate",
    ("eval",): "dalle_zero.cli.evaluate",
    ("serve",): "dalle_zero.cli.serve",
    ("plan",): "dalle_zero.cli.plan",
}

USER_ERRORS = (
    ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dalle", description="DALL-E in PyTorch: train and sample text-to-image models."
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module_name in COMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        if len(words) == 1:
            sub = top.add_parser(words[0], help=module.HELP, description=module.HELP)
        else:
            if words[0] not in groups:
                group = top.add_parser(words[0], help=f"{words[0]} subcommands")
                groups[words[0]] = group.add_subparsers(dest="subcommand", metavar="WHAT", required=True)
            sub = groups[words[0]].add_parser(words[1], help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    flush_denormals()  # before torch starts its threads, so that they inherit it (dalle_zero/runtime.py)
    parser = build_parser()
    args = parser.parse_args(argv)
    # library modules log through logging; the program shows warnings (e.g. truncated captions) as one line each
    logging.basicConfig(level=logging.WARNING, format="dalle: %(levelname)s: %(message)s")
    try:
        code = args._run(args)
    except KeyboardInterrupt:
        print("dalle: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("DALLE_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"dalle: error: {msg}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
