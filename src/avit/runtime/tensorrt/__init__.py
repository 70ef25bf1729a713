"""TensorRT pieces shared by the engine builder and the runtime backend (torch-free, TensorRT optional).

* :mod:`.modules` — :func:`import_tensorrt` / :func:`import_cudart`: the optional modules, imported lazily, with one-line
  :class:`~avit.errors.BackendUnavailableError` messages when they are missing.
* :mod:`.plugins` — :func:`find_plugin_library` / :func:`load_plugin_library`: where the avit plugin library is and how it
  is loaded. ``libavit_plugins.so`` registers its creators statically when it is ``dlopen``-ed (loaded
  with :mod:`ctypes`, like Polygraphy's ``--plugins`` and trtexec's ``--staticPlugins``);
  ``libavit_plugins_dynamic.so`` only exports ``getCreators`` and is loaded with TensorRT's
  ``IPluginRegistry.load_library`` (trtexec ``--dynamicPlugins``). Giving one library to both loaders
  registers its creators twice, which TensorRT refuses (see docs/plugins.md), so the loader is chosen
  from the file name and each library is loaded once per process.
* :mod:`.sidecar` — :class:`EngineSidecar`: the JSON file beside an engine (``model.engine.json``) holding what the
  serialized engine cannot: the avit metadata of the ONNX model it came from, the TensorRT version,
  the plugin library and its sha256, the optimization profile and the precision.
"""

from __future__ import annotations

from avit.runtime.tensorrt.modules import import_cudart, import_tensorrt
from avit.runtime.tensorrt.plugins import (
    BUILD_HINT,
    PLUGIN_LIBRARY_ENV,
    PLUGIN_NAMESPACE,
    PLUGIN_SEARCH_GLOBS,
    PLUGIN_VERSION,
    find_plugin_library,
    load_plugin_library,
    plugin_loader,
    repository_roots,
)
from avit.runtime.tensorrt.sidecar import (
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    EngineSidecar,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)

__all__ = [
    "BUILD_HINT", "PLUGIN_LIBRARY_ENV", "PLUGIN_NAMESPACE", "PLUGIN_SEARCH_GLOBS", "PLUGIN_VERSION",
    "SIDECAR_FORMAT", "SIDECAR_VERSION", "EngineSidecar", "find_plugin_library", "import_cudart",
    "import_tensorrt", "load_plugin_library", "plugin_loader", "read_sidecar", "repository_roots",
    "sidecar_path", "write_sidecar",
]
