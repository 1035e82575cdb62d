"""Command-line arguments checked where they are parsed: a bad value stops a command at once,
with exit status 2 and one line naming the argument, not after minutes of work."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``-h`` shows the usage)."""

    def error(self, message: str) -> Any:
        """Print ``PROG: error: MESSAGE`` and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def number(low: float, high: float, *, upper_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a number from ``low`` to ``high`` (``high`` itself excluded when
    ``upper_open``), refused at parse time with the range."""
    bounds = f"[{low:g}, {high:g}{')' if upper_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = low <= value < high if upper_open else low <= value <= high
        if not inside:  # NaN is never inside
            raise argparse.ArgumentTypeError(f"{text} is not in {bounds}")
        return value

    parse.__name__ = f"number in {bounds}"  # argparse names the type in some messages
    return parse


def positive_integer(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not at least 1")
    return value


def add_refine_arguments(parser: Any, what: str) -> None:
    """``--refine REFINER | --no-refine`` (BPR, :mod:`training.refine`) on ``parser`` (or an
    argument group); ``what`` says what the refiner's boundaries are for, in the help."""
    from pathlib import Path

    refine = parser.add_mutually_exclusive_group()
    refine.add_argument(
        "--refine",
        type=Path,
        metavar="REFINER",
        help=f"refine {what} with this BPR refiner checkpoint (python -m training.train_refiner); "
        "default: the model's own, if its manifest names one",
    )
    refine.add_argument("--no-refine", action="store_true", help="skip the manifest's refiner")
