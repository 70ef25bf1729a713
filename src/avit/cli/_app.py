"""The ``avit`` Typer app and the helpers every command module shares.

Command modules (``*_cmd.py``) import :data:`app` from here and register on it; :mod:`avit.cli.main`
imports them all. Any :class:`~avit.errors.AvitError` becomes one line on stderr and exit code 1 (:func:`cli_errors`).
"""

from __future__ import annotations

import functools
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from avit._io import format_values
from avit._io import parse_thresholds as _parse_thresholds
from avit.errors import AvitError, InputError

app = typer.Typer(
    name="avit",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Deploy adaptive vision transformers: adapt, export to ONNX/TensorRT with real token removal, run.",
)
console = Console(soft_wrap=True, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def cli_errors(fn):
    """Turn :class:`AvitError` into one red line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AvitError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def parse_thresholds(text: Optional[str]) -> Optional[list[float]]:
    """``"0.2,0.4"`` / ``"0,inf"`` → floats; None stays None. Raises :class:`InputError`."""
    return _parse_thresholds(text, name="--thresholds")


def parse_ints(text: str) -> tuple[int, ...]:
    """``"4,8"`` → ``(4, 8)``. Raises :class:`InputError`."""
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise InputError(f"{text!r} is not a comma-separated list of integers (e.g. 4,8)") from None


def fmt_values(values, digits: int = 4) -> str:
    """``[0.25, inf]`` → ``"0.25, inf"``."""
    return format_values(values, digits)


def log_line(message: str) -> None:
    """A progress line of a long operation, indented under the command's own output."""
    console.print(f"  {escape(message)}")
