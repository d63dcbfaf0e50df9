"""Command-line argument types shared by ``duroxide-sim`` and the pytest plugin's options.

``argparse`` (and pytest, which uses it) turns an ``ArgumentTypeError`` into a usage error that
names the option: ``argument --seeds: expected a positive integer, got '0'``."""

from __future__ import annotations

import argparse

__all__ = ["positive_int", "non_negative_int", "MAX_COUNT"]

#: The largest count an option takes (10**12 seeds would already run for years).
MAX_COUNT = 10**12


def positive_int(text: str) -> int:
    """A count that must be at least 1 (seeds, runs, nodes, processes): 0 seeds would report
    success having checked nothing."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value > MAX_COUNT:  # (a seed count past sys.maxsize failed deep inside with an OverflowError)
        raise argparse.ArgumentTypeError(f"expected a positive integer up to {MAX_COUNT:,}, got {text!r}"[:200])
    return value


def non_negative_int(text: str) -> int:
    """A count where 0 means "none" (``--sim-shrink-runs 0``: do not shrink)."""
    if text.strip() in ("0", "+0", "-0"):
        return 0
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}"[:200]) from None
