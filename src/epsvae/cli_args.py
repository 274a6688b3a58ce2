"""Argument types for the command line: bad values are argparse errors (usage + one line, exit 2)."""

from __future__ import annotations

import argparse
import math

import torch


def _number(cast, accept, want: str):
    """An argparse type: `cast(text)` that `accept`s the value, else '... must be WANT, got TEXT'."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
        return value

    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")
finite_float = _number(float, math.isfinite, "a finite number")


def int_list(minimum: int):
    """'1,3' -> [1, 3]: at least one value, each >= `minimum`."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("needs at least one value")
        bad = [v for v in values if v < minimum]
        if bad:
            raise argparse.ArgumentTypeError(f"values must be at least {minimum}, got {bad[0]}")
        return values

    return parse


def device(text: str) -> str:
    """'cpu', 'cuda', 'cuda:1', 'mps': checked now, not deep inside torch later."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unsupported device {text!r} (cpu, cuda, cuda:N, mps)")
    return text
