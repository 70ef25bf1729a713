// avit C++ runtime: run an exported adaptive ViT with per-call pause thresholds.
//
//   #include <avit/avit.hpp>
//   avit::Session session("model.onnx");                  // or "model.engine" (+ model.engine.json),
//                                                         // or "model.openvino.xml" (+ .bin, OpenVINO IR)
//   std::vector<float> x = ...;                           // float32 [B, 3, H, W], normalised
//   avit::Result r = session.run(x, {B, 3, H, W}, std::vector<float>{0.2f, 0.4f});
//   r.logits / r.logits_shape, r.tokens_kept ([B, P]), r.latency_ms
//
// Header-only C++17. The backends are compiled in when their headers are: define AVIT_WITH_ONNXRUNTIME
// / AVIT_WITH_TENSORRT / AVIT_WITH_OPENVINO (the CMake targets avit::onnxruntime / avit::tensorrt /
// avit::openvino do) — core.hpp alone needs nothing. Session::run is thread-safe: the thresholds are a
// graph input, nothing per call is stored.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "avit/core.hpp"
#if defined(AVIT_WITH_ONNXRUNTIME)
#include "avit/onnxruntime_backend.hpp"
#endif
#if defined(AVIT_WITH_TENSORRT)
#include "avit/tensorrt_backend.hpp"
#endif
#if defined(AVIT_WITH_OPENVINO)
#include "avit/openvino_backend.hpp"
#endif

namespace avit {

inline constexpr const char* kVersion = "0.1.0";

struct SessionOptions {
#if defined(AVIT_WITH_ONNXRUNTIME)
  OrtOptions onnxruntime;
#endif
#if defined(AVIT_WITH_TENSORRT)
  TrtOptions tensorrt;
#endif
#if defined(AVIT_WITH_OPENVINO)
  OvOptions openvino;
#endif
};

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// The backend for `path` by its suffix (.onnx: ONNX Runtime; .engine/.plan/.trt: TensorRT; .xml: OpenVINO IR).
inline std::unique_ptr<Backend> open_backend(const std::string& path, const SessionOptions& options = {}) {
  (void)options;
  if (std::ifstream(path).fail()) throw Error("model not found: " + path);
  if (ends_with(path, ".onnx")) {
#if defined(AVIT_WITH_ONNXRUNTIME)
    return std::make_unique<OnnxRuntimeBackend>(path, options.onnxruntime);
#else
    throw Error("this build has no ONNX Runtime backend (build with the avit::onnxruntime target), so " + path + " cannot run");
#endif
  }
  if (ends_with(path, ".engine") || ends_with(path, ".plan") || ends_with(path, ".trt")) {
#if defined(AVIT_WITH_TENSORRT)
    return std::make_unique<TensorRTBackend>(path, options.tensorrt);
#else
    throw Error("this build has no TensorRT backend (build with the avit::tensorrt target), so " + path + " cannot run");
#endif
  }
  if (ends_with(path, ".xml")) {
#if defined(AVIT_WITH_OPENVINO)
    return std::make_unique<OpenVINOBackend>(path, options.openvino);
#else
    throw Error("this build has no OpenVINO backend (build with the avit::openvino target), so " + path + " cannot run");
#endif
  }
  throw Error(path + " is not an avit artifact (expected .onnx, .engine or .xml (OpenVINO IR))");
}

class Session {
 public:
  explicit Session(const std::string& path, const SessionOptions& options = {})
      : Session(open_backend(path, options), path) {}

  /// Serve any Backend (your own, or one opened with options open_backend does not expose).
  Session(std::unique_ptr<Backend> backend, const std::string& where)
      : backend_(std::move(backend)), info_(ModelInfo::from_props(backend_->metadata(), where)) {
    std::vector<std::string> expected{"images"};
    if (info_.num_pause_points()) expected.push_back("pause_thresholds");
    if (backend_->input_names() != expected) throw Error(where + " does not have the inputs of an avit model (images, pause_thresholds)");
  }

  const ModelInfo& info() const { return info_; }
  const Backend& backend() const { return *backend_; }

  /// Validated [P] thresholds (nullopt: the model's defaults). Throws avit::Error.
  std::vector<float> thresholds(const std::optional<std::vector<float>>& values = std::nullopt) const {
    return validate_thresholds(info_, values);
  }

  /// Run float32 images of `shape` [B, C, H, W] with this call's thresholds (nullopt: defaults). Thread-safe.
  Result run(const float* images, const std::vector<int64_t>& shape, size_t count,
             const std::optional<std::vector<float>>& thresholds = std::nullopt) const {
    check_images(info_, shape, count);
    return backend_->infer(images, shape, validate_thresholds(info_, thresholds));
  }
  Result run(const std::vector<float>& images, const std::vector<int64_t>& shape,
             const std::optional<std::vector<float>>& thresholds = std::nullopt) const {
    return run(images.data(), shape, images.size(), thresholds);
  }

 private:
  std::unique_ptr<Backend> backend_;
  ModelInfo info_;
};

}  // namespace avit
