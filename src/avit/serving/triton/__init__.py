"""Triton Inference Server: model repositories for avit models and a local server to run them.

* :func:`write_triton_repository` (``avit triton-repo``) — ``config.pbtxt`` + model files: Triton's own
  onnxruntime / tensorrt backends, or the **python backend** running avit's runtime with dynamic
  batching of requests whose thresholds differ (:mod:`avit.serving.triton.repository`);
* :func:`config_pbtxt` / :class:`TritonModelSpec` — one model's configuration (:mod:`.config`);
* :class:`TritonServer` / :func:`serve_repository` (``avit triton-serve``) — the ``tritonserver`` of PyPI
  ``nvidia-pytriton`` serving a python-backend repository on 127.0.0.1 (:mod:`.server`).

``python_model.py`` is the python backend's ``model.py`` (imported only inside Triton).
"""

from avit.serving.triton.config import KINDS, TritonModelSpec, config_pbtxt
from avit.serving.triton.repository import TritonRepository, onnx_with_thresholds, write_triton_repository
from avit.serving.triton.server import TritonServer, find_bundled_triton, repository_backends, serve_repository

__all__ = [
    "KINDS",
    "TritonModelSpec",
    "TritonRepository",
    "TritonServer",
    "config_pbtxt",
    "find_bundled_triton",
    "onnx_with_thresholds",
    "repository_backends",
    "serve_repository",
    "write_triton_repository",
]
