"""The torch-free base shared by calibration, profiling and the exporter's checks.

* :mod:`~avit.evaluation.latency` — latency statistics (mean, percentiles) of repeated calls, in ms;
* :mod:`~avit.evaluation.metrics` — agreement of predictions with a reference (pixel agreement, IoU, MAE);
* :mod:`~avit.evaluation.knobs` — the knob space: per-pause-point aggressiveness ``u ∈ [0, 1]`` ↔ thresholds;
* :mod:`~avit.evaluation.parity` — the parity harness: one row type and one generator of threshold settings
  for comparing a graph against a reference (export, optimize, quantize, validate);
* :mod:`~avit.evaluation.plot` — matplotlib on the Agg backend, figures written atomically.

It imports the runtime at most, never PyTorch, the model code, the exporter, calibration or profiling.
"""
