"""The torch-free base shared by calibration, profiling, the exporter's checks and adaptation.

* :mod:`~avit.evaluation.latency` — latency statistics (mean, percentiles) of repeated calls, in ms;
* :mod:`~avit.evaluation.metrics` — agreement of predictions with a reference (pixel agreement, IoU);
* :mod:`~avit.evaluation.knobs` — the knob space: per-pause-point aggressiveness ``u ∈ [0, 1]`` ↔ thresholds;
* :mod:`~avit.evaluation.parity` — the parity harness: one row type and one generator of threshold settings
  for comparing a graph against a reference (export, optimize, quantize, validate);
* :mod:`~avit.evaluation.plot` — matplotlib on the Agg backend, figures written atomically.

It sits below the model code and the runtime and imports neither (nor PyTorch): runners and sessions
are passed in, so the adaptation code, the runtime and everything above can use it.
"""
