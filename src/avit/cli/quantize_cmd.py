"""``avit quantize``: int8 copy of an exported model (:func:`avit.exporter.quantize.quantize_onnx`).

Registered on the running ``avit`` app (:func:`avit.cli._host.main_module`) by the import at the end of
``avit/cli/main.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from avit.cli._host import main_module

_main = main_module()
app, cli_errors, console = _main.app, _main.cli_errors, _main.console


@app.command("quantize")
@cli_errors
def quantize_command(
    model: Annotated[Path, typer.Argument(help="fp32 ONNX model exported by avit.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="ONNX file to write (default: <model>.int8.onnx).")] = None,
    mode: Annotated[str, typer.Option(help="dynamic (int8 weights, activations quantized per call).")] = "dynamic",
) -> None:
    """Quantize the backbone's linear layers to int8; token heads and adaptive ops stay fp32."""
    from avit.exporter.quantize import quantize_onnx

    out = output or model.with_suffix(".int8.onnx")
    path = quantize_onnx(model, out, mode=mode)
    console.print(f"wrote {escape(str(path))} (int8 {mode}; thresholds input unchanged)")
