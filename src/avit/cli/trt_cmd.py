"""``avit validate``: parity of a TensorRT engine (or any avit artifact) against its ONNX model.

Registered on the ``avit`` app of :mod:`avit.cli._app`; :mod:`avit.cli.main` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from avit.cli._app import app, cli_errors, console, fmt_values, parse_ints, parse_thresholds
from avit.errors import ExportError, InputError



@app.command()
@cli_errors
def validate(
    model: Annotated[Path, typer.Argument(help="Artifact to check: a TensorRT .engine (or an .onnx, e.g. an fp16 export).")],
    onnx: Annotated[Optional[Path], typer.Option("--onnx", help="ONNX reference run in ONNX Runtime CPU (default for an engine: the ONNX it was built from).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Folder of images to compare on (default: seeded noise).")] = None,
    batch: Annotated[Optional[str], typer.Option("--batch-sizes", help="Batch sizes, e.g. 1,8 (default: the engine profile's min and max).")] = None,
    thresholds: Annotated[Optional[list[str]], typer.Option(help="Extra threshold setting to check, e.g. 0.2,0.4 (repeatable).")] = None,
    atol: Annotated[Optional[float], typer.Option(help="Absolute logit tolerance (default by precision: fp32 1e-3, fp16 5e-2).")] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative logit tolerance (an element fails only beyond both).")] = None,
    plugins: Annotated[Optional[Path], typer.Option(help="avit TensorRT plugin library (default: the sidecar's, $AVIT_PLUGIN_LIBRARY, build/plugins).")] = None,
) -> None:
    """Compare an engine with ONNX Runtime at nothing-paused / default / everything-paused thresholds."""
    from avit.data.files import image_files
    from avit.exporter.validate import validate as run_validation

    if images is not None and not images.is_dir():
        raise InputError(f"--images {images} is not a folder")
    extra = [parse_thresholds(t) for t in thresholds or []]
    report = run_validation(
        model,
        onnx,
        images=image_files(images) if images is not None else None,
        batches=parse_ints(batch) if batch else None,
        extra_thresholds=extra,
        atol=atol,
        rtol=rtol,
        plugin_library=plugins,
    )
    table = Table(
        title=f"{escape(model.name)} ({report.backend}, {report.precision}) vs {escape(report.reference.name)} "
        f"(onnxruntime): atol {report.atol:g}, rtol {report.rtol:g}, comparator {report.rows[0].engine}"
    )
    for col in ("thresholds", "batch", "max |Δlogits|", "max rel", "tokens kept", ""):
        table.add_column(col, justify="right")
    for row in report.rows:
        kept = "equal" if row.tokens_equal else f"{row.tokens_kept} vs {row.tokens_kept_reference}"
        table.add_row(
            f"{row.label} ({fmt_values(row.thresholds) or '-'})",
            str(row.batch),
            f"{row.max_abs_diff:.2e}",
            f"{row.max_rel_diff:.2e}",
            escape(kept),
            "ok" if row.ok else "[bold red]FAIL[/]",
        )
    console.print(table)
    bad = [r for r in report.rows if not r.ok]
    if bad:
        r = bad[0]
        what = "token counts differ" if not r.tokens_equal else f"{r.mismatches} logits beyond tolerance"
        raise ExportError(f"validation failed on {len(bad)} of {len(report.rows)} settings, e.g. '{r.label}' batch {r.batch}: {what}")
    console.print(f"{escape(str(model))} matches {escape(str(report.reference))} on {len(report.rows)} settings")
