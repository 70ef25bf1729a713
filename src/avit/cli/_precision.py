"""The runtime commands' ``--inference-precision`` option (run, calibrate, profile, serve), and its hidden
old spelling ``--precision``. (``avit export --precision fp32|fp16`` is another thing: the graph's precision.)"""

from __future__ import annotations

import typer

from avit.cli._app import err_console
from avit.errors import InputError

#: Help text of ``--inference-precision``.
HELP = ("OpenVINO inference precision: auto (default: bf16 where the CPU has native bfloat16, else f32) | f32 | bf16 "
        "(see avit doctor).")


def inference_precision_option() -> typer.models.OptionInfo:
    """``--inference-precision auto|f32|bf16``."""
    return typer.Option("--inference-precision", help=HELP)


def old_precision_option() -> typer.models.OptionInfo:
    """``--precision``, hidden: the old spelling of ``--inference-precision``."""
    return typer.Option("--precision", hidden=True, help="Old spelling of --inference-precision.")


def resolve(new: str | None, old: str | None) -> str | None:
    """The inference precision asked for (None: the backend's default), printing a note when the old spelling
    was used. Raises :class:`InputError` when both spellings disagree."""
    if old is not None:
        err_console.print("note: --precision is now --inference-precision")
        if new is not None and new != old:
            raise InputError(f"--inference-precision {new} and --precision {old} disagree; give one")
        return old
    return new


def describe(session) -> str:
    """``"openvino bf16 (auto)"`` / ``"openvino f32"`` / ``"onnxruntime"``: the backend a session runs on, its
    inference precision, and whether ``auto`` chose it."""
    if session.inference_precision is None:
        return session.backend.name
    auto = " (auto)" if getattr(session.backend, "requested_precision", None) == "auto" else ""
    return f"{session.backend.name} {session.inference_precision}{auto}"
