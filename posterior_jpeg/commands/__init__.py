"""The command lines, torch-free at import: each module owns one command's parser (`configure`) and
hands its job what it parsed (`run`, which imports the job, and torch, after parsing), so `--help`
and argument errors answer at once. Jobs (sampling, evaluation, sweep, training, pages) never import
this package.

    posterior-jpeg COMMAND ...        (= python -m posterior_jpeg COMMAND ..., torchrun -m posterior_jpeg ...)
"""

import argparse

from . import eval, info, lambda_sweep, pack, project, sample, train, weights

COMMANDS = (sample, train, eval, lambda_sweep, info, project, pack, weights)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posterior-jpeg",
        description="Stochastic JPEG decoding with outputs exactly consistent with the file.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.configure(commands.add_parser(command.NAME, help=command.HELP))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
