"""``avit`` command line: a thin shell over the Python API.

Every command parses its arguments, calls one function of :mod:`avit` and prints rich tables; the
commands live one group per module (``adapt_cmd``, ``export_cmd``, ``run_cmd``, …) on the app of
:mod:`avit.cli._app`. Any :class:`~avit.errors.AvitError` becomes one line on stderr and exit code 1;
bad option values are usage errors (exit code 2). Nothing is left half-written: every file is written
to a temporary name and renamed.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from avit import __version__
from avit.cli import (  # noqa: F401  (each module registers its commands on the app, in this order)
    adapt_cmd,
    finetune_cmd,
    export_cmd,
    run_cmd,
    demo_cmd,
    calibrate_cmd,
    profile_cmd,
    trt_cmd,
    serve_cmd,
    import_cmd,
    quantize_cmd,
    doctor_cmd,
)
from avit.cli._app import app, console, err_console


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the avit version and exit.")] = False,
) -> None:
    if version:
        console.print(f"avit {__version__}")
        raise typer.Exit(0)


def main() -> None:
    """Console-script entry point: usage errors, like every other error, are one line on stderr."""
    import sys

    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # usage errors (missing argument, unknown option, bad value)
        if type(exc).__name__ == "NoArgsIsHelpError":
            code = 0  # the help was printed
        else:
            ctx = getattr(exc, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            err_console.print(f"[bold red]error:[/] {escape(exc.format_message())}{escape(where)}")
            code = getattr(exc, "exit_code", 2)
    except typer.Abort:
        err_console.print("[bold red]aborted[/]")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
