"""The arguments every config-driven command takes (train, eval, sweep): --config FILE,
--print-config and key=value overrides; and the old spellings of renamed options."""

import argparse
import importlib
import sys


def add_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--config", help=f"YAML config ({example}); defaults when omitted")
    parser.add_argument("--print-config", action="store_true",
                        help="print every config key with its resolved value (defaults <- --config <- "
                             "overrides) and one line of meaning, as YAML, and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, dotted keys")


def configure_config_command(parser: argparse.ArgumentParser, description: str, example: str,
                             run) -> argparse.ArgumentParser:
    """A config-driven command's parser: its description, the config arguments, its `run`."""
    parser.description = description
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_config_arguments(parser, example)
    parser.set_defaults(run=run)
    return parser


def job_command(name: str, description: str, example: str, job: str):
    """The `configure` of a command whose job module (posterior_jpeg.<job>) has `run_command(config,
    overrides, program, print_config)`: the job, and torch with it, is imported after parsing."""

    def run(args: argparse.Namespace) -> int:
        module = importlib.import_module(f"posterior_jpeg.{job}")
        return module.run_command(args.config, args.overrides, f"posterior-jpeg {name}", args.print_config)

    def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return configure_config_command(parser, description, example, run)

    return configure


class Renamed(argparse.Action):
    """An option's former spelling, still accepted: it sets the new option's destination (a flag
    when nargs=0), is hidden from --help, and prints one warning line on stderr naming `new`."""

    def __init__(self, option_strings, dest, new: str, nargs=None, **kwargs):
        super().__init__(option_strings, dest, nargs=nargs, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is now {self.new} (the old spelling still works)",
              file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)
