"""The ``avit`` Typer app and the helpers every command module shares.

Command modules (``*_cmd.py``) import :data:`app` from here and register on it; :mod:`avit.cli.main`
imports them all. Any :class:`~avit.errors.AvitError` becomes one line on stderr and exit code 1 (:func:`cli_errors`).
"""

from __future__ import annotations

import functools
from typing import Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape

from avit._io import format_values
from avit._io import parse_thresholds as _parse_thresholds
from avit.errors import AvitError, InputError

#: Old option spellings each command still accepts, silently and hidden from ``--help`` (scripts keep
#: working; every output, error lines included, stays as with the new name): one concept has one option
#: name in every command. ``{command: {old: new}}``; a command declares only the new name.
RENAMED_OPTIONS: dict[str, dict[str, str]] = {
    "adapt": {"--steps": "--head-steps"},
    "finetune": {"--steps": "--finetune-steps", "--minutes": "--finetune-minutes"},
    "acmize": {"--steps": "--gate-steps"},
    "export": {"--calib-images": "--images", "--calib-count": "--max-images"},
    "quantize": {"--calib-images": "--images", "--calib-count": "--max-images"},
    "optimize": {"--level": "--opt-level"},
    "run": {"-o": "--output-dir", "--calib": "--calibration", "--precision": "--inference-precision"},
    "calibrate": {"--repeats": "--search-rounds", "--precision": "--inference-precision"},
    "profile": {"--iters": "--rounds", "--calib": "--calibration", "--batch": "--batch-sizes", "--duration": "--duration-s",
                "--precision": "--inference-precision"},
    "validate": {"--batch": "--batch-sizes"},
    "serve": {"--timeout-s": "--request-timeout-s", "--precision": "--inference-precision"},
    "demo": {"--steps": "--head-steps", "--images": "--max-images"},
    "triton-repo": {"--device": "--instance-kind"},
    "triton-serve": {"--timeout-s": "--load-timeout-s"},
}


def rename_options(args: list[str], renamed: dict[str, str]) -> tuple[list[str], list[str]]:
    """Rewrite old option spellings in a command's arguments to the current ones.

    ``--old VALUE``, ``--old=VALUE`` and, for a short alias, ``-oVALUE`` become the new name; nothing
    after a bare ``--`` is touched. Returns ``(arguments, old spellings used)``.
    """
    out: list[str] = []
    used: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        new = None
        for old, current in renamed.items():
            if arg == old:
                new = current
            elif old.startswith("--") and arg.startswith(old + "="):
                new = current + arg[len(old):]
            elif not old.startswith("--") and arg.startswith(old) and len(arg) > len(old):
                new = f"{current}={arg[len(old):]}"
            if new is not None:
                used.append(old)
                break
        out.append(arg if new is None else new)
    return out, used


class _AvitGroup(typer.core.TyperGroup):
    """The app's group: accepts each command's old option spellings (:data:`RENAMED_OPTIONS`)."""

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        renamed = RENAMED_OPTIONS.get(name or "")
        if renamed:
            rest, _ = rename_options(rest, renamed)
        return name, cmd, rest


app = typer.Typer(
    cls=_AvitGroup,
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
