"""``ftbench`` entry point: a thin argparse shell over the command modules."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fewshot_transfer import __version__

#: Command modules, each with ``register(subparsers)``; imported lazily so ``--help`` stays fast.
COMMAND_MODULES = ("run", "leaderboard", "report", "claims", "data", "tune", "worker", "learners")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftbench",
        description=(
            "Few-shot COVID-19 lung-CT lesion segmentation benchmark: how well does each learner "
            "segment lesions from k labeled COVID-19 slices, and how much does labeled CAP data help?"
        ),
    )
    parser.add_argument("--version", action="version", version=f"ftbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"fewshot_transfer.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fewshot_transfer.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # A command may restart itself (``run.portable``) only when it is the program, not a call from Python.
    args.restartable = argv is None
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        if args.verbose:
            raise
        print(f"ftbench: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
