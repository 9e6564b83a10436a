"""The `decaf` command: one entry point whose sub-commands come from each package.

Each package owns its sub-commands (`featurizer.cli`, `featurizer.backbones.command`,
`classifiers.cli`, `retrieval.cli`, `service.commands`); this module only assembles them, so
`decaf extract` never imports the web stack and `decaf --help` imports neither torch, pyarrow,
scikit-learn nor FAISS. Process tuning (`featurizer.runtime`) happens here, before any command
can import torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from classifiers import cli as classifiers_cli
from classifiers.plots import command as plot_command
from classifiers.reproduce import cli as reproduce_cli
from featurizer import cli as featurizer_cli
from featurizer.backbones import command as backbones_command
from featurizer.runtime import configure_process
from retrieval import cli as retrieval_cli
from service import commands as service_commands
from service.logs import StderrHandler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decaf",
        description="DeCAF features: extract activations of pretrained backbones (AlexNet's "
        "DeCAF5/6/7, VGG-16, ResNet-50, ViT-B/16), fit linear probes, serve them.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, and tracebacks of errors"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    service_commands.register(sub)
    featurizer_cli.register(sub)
    backbones_command.register(sub)
    classifiers_cli.register(sub)
    reproduce_cli.register(sub)
    plot_command.register(sub)
    retrieval_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_process()
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[StderrHandler()],
    )
    try:
        # One line and the documented exit status per error (featurizer.errors.EXIT_STATUSES).
        return featurizer_cli.run_command(args)
    except BrokenPipeError:  # `decaf backbones | head`: the reader left, nothing went wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
