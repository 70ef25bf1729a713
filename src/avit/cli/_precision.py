"""The runtime commands' ``--inference-precision`` option (run, calibrate, profile, serve, demo). Its old
spelling ``--precision`` is a hidden alias in :data:`avit.cli._app.RENAMED_OPTIONS`, like every renamed
option. (``avit export --precision fp32|fp16`` is another thing: the graph's precision.)"""

from __future__ import annotations

import typer


#: Help text of ``--inference-precision``.
HELP = ("OpenVINO inference precision: auto (default: bf16 where the CPU has native bfloat16, else f32) | f32 | bf16 "
        "(see avit doctor).")


def inference_precision_option() -> typer.models.OptionInfo:
    """``--inference-precision auto|f32|bf16``."""
    return typer.Option("--inference-precision", help=HELP)


def describe(session) -> str:
    """``"openvino bf16 (auto)"`` / ``"openvino f32"`` / ``"onnxruntime"``: the backend a session runs on, its
    inference precision, and whether ``auto`` chose it."""
    if session.inference_precision is None:
        return session.backend.name
    auto = " (auto)" if getattr(session.backend, "requested_precision", None) == "auto" else ""
    return f"{session.backend.name} {session.inference_precision}{auto}"
