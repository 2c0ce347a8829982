"""Command-line value types: argparse refuses a value out of range, naming it, at once."""

from __future__ import annotations

import argparse
import math


def positive(text: str) -> int:
    """A count of 1 or more: tail's --limit 0 would print nothing, as if no event were there;
    the demo's --calls 0 is its default of forever, headless never ending."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count} is not 1 or more")
    return count


def rate(text: str) -> float:
    """Events per second (or seconds), more than 0 and finite: 0 or less, or nan, the simulator
    would take as "as fast as possible" or refuse only once the bridge had started."""
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < rate < math.inf:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number above 0")
    return rate


def not_negative(text: str) -> float:
    """Seconds (or a rate) of 0 or more, finite: the simulator slept on a nan or inf start delay
    for ever, silently, and sent an inf token lifetime as JSON's non-standard `Infinity`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number of 0 or more")
    return value


def port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535: out of range ended the demo in a traceback."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port from 0 to 65535")
    return port
