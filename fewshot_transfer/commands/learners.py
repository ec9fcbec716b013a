"""``ftbench learners``: the registered learners, or one learner's hyperparameter table."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "learners",
        help="list the learners, or show one learner's hyperparameters",
        description="Without NAME: every registered learner with its family, whether it runs at k = 0 "
        "(no target labels) and its control arm. With NAME: that learner's hyperparameters (name, type, "
        "default, bounds, search distribution of `ftbench tune`, help), read from its table. Override a "
        "default with --set learners.NAME.KEY=VALUE.",
    )
    p.add_argument("name", nargs="?", help="a learner (default: list them all)")
    p.add_argument("--markdown", action="store_true", help="print docs/learners.md (every learner's table) instead")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE", help="load a learner plugin")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from fewshot_transfer import learners
    from fewshot_transfer.commands import console as make_console
    from fewshot_transfer.learners.catalog import COLUMNS, hparam_rows, learner_rows, markdown, summary

    learners.load_plugins(args.plugin)
    if args.markdown:
        print(markdown([learners.get(n) for n in learners.available()]), end="")
        return 0
    console = make_console()
    if args.name:
        cls = learners.get(args.name)
        table = Table(
            *COLUMNS, title=f"{cls.name} ({cls.family})", caption=escape(summary(cls)), caption_justify="left"
        )
        rows = hparam_rows(cls)
    else:
        table = Table("learner", "family", "k = 0", "control (mechanism off)")
        rows = learner_rows([learners.get(n) for n in learners.available()])
    for row in rows:
        table.add_row(*map(escape, row))
    console.print(table)
    return 0
