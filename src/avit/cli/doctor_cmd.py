"""``avit doctor``: what this machine offers avit (engines, CPU features, native precisions, threads)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from avit.cli._app import app, console


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check this machine: avit and Python versions, engines found, CPU features and native precisions, threads."""
    from avit.doctor import machine_report, report_lines

    report = machine_report()
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for line in report_lines(report):
        console.print(escape(line))
