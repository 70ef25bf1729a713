"""Latency-targeted threshold calibration, measured on the real backend.

* :mod:`~avit.evaluation.knobs` — per-pause-point aggressiveness ``u ∈ [0, 1]`` ↔ thresholds, per policy;
* :mod:`~avit.calibration.search` — the search (anchors, boundary bisection along rays with an isotonic
  latency fit, per-pause-point hill climb), Pareto front, choice and presets; backend-agnostic;
* :mod:`~avit.calibration.evaluate` — measuring a setting on an :class:`~avit.runtime.AdaptiveSession`;
* :mod:`~avit.calibration.calibrate` — the whole procedure with the held-out check (``avit calibrate``);
* :mod:`~avit.metadata.calibration` / :mod:`~avit.metadata.calibration_schema` — the versioned ``.calib.json`` file;
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
    "PRESET_FLOORS": "avit.calibration.search",
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
