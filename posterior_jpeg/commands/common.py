"""The arguments every config-driven command takes (train, eval, sweep): --config FILE,
--print-config and key=value overrides."""

import argparse
import importlib


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
