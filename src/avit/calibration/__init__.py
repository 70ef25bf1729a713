"""Latency-targeted threshold calibration, measured on the real backend.

* :mod:`~avit.calibration.search` — the search (anchors, boundary bisection along rays with an isotonic
  latency fit, per-pause-point hill climb) and the Pareto front; backend-agnostic;
* :mod:`~avit.calibration.choice` — after the search: the final choice (re-measured) and the presets;
* :mod:`~avit.calibration.images` — which images calibrate and which check;
* :mod:`~avit.calibration.evaluate` — measuring a setting on an :class:`~avit.runtime.AdaptiveSession`;
* :mod:`~avit.calibration.calibrate` — the whole procedure with the held-out check (``avit calibrate``);
* the versioned ``.calib.json`` file the runtime reads is in :mod:`avit.metadata.calibration` (schema:
  :mod:`avit.metadata.calibration_schema`);
* :mod:`~avit.calibration.plot` — the Pareto-front plot (matplotlib).

Names are imported lazily: the runtime loads presets without pulling in the search or matplotlib.
"""

_LAZY = {
    "Calibration": "avit.metadata.calibration",
    "Preset": "avit.metadata.calibration",
    "calibration_path": "avit.metadata.calibration",
    "load_calibration": "avit.metadata.calibration",
    "save_calibration": "avit.metadata.calibration",
    "CALIBRATION_SCHEMA": "avit.metadata.calibration_schema",
    "KnobSpace": "avit.evaluation.knobs",
    "Measurement": "avit.calibration.search",
    "ThresholdSearch": "avit.calibration.search",
    "PRESET_FLOORS": "avit.calibration.choice",
    "pareto_front": "avit.calibration.search",
    "BackendEvaluator": "avit.calibration.evaluate",
    "CalibrationReport": "avit.calibration.calibrate",
    "HeldoutCheck": "avit.calibration.calibrate",
    "calibrate": "avit.calibration.calibrate",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'avit.calibration' has no attribute {name!r}")


__all__ = sorted(_LAZY)
