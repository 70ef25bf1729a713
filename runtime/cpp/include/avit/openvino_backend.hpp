// avit C++ runtime: the OpenVINO backend (OpenVINO Runtime C++ API, openvino/openvino.hpp).
//
// Needs OpenVINO's headers and library: the `openvino` PyPI wheel ships both (CMake package in
// <site-packages>/openvino/cmake; find_package(avit) with -DOpenVINO_DIR=<that folder>, target
// avit::openvino). Reads the OpenVINO IR that `avit export --openvino` writes (model.openvino.xml + .bin,
// avit metadata in the IR's rt_info["framework"]); a plain avit .onnx does not load here, because
// OpenVINO's ONNX frontend does not expand the model-local functions avit's adaptive ops are made of
// (the Python exporter inlines them before writing the IR).
//
// Thread safety: one compiled model serves every thread; each call borrows an ov::InferRequest from a
// pool (an infer request runs one inference at a time; the pool grows to the number of concurrent
// callers). The thresholds are a graph input, so every call may use its own.
#pragma once

#include <openvino/openvino.hpp>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "avit/core.hpp"

namespace avit {

struct OvOptions {
  std::string device = "CPU";
  std::string inference_precision = "f32";  // "f32" | "bf16" (bf16 needs a CPU with native bf16: AVX512-BF16 / AMX)
  int threads = 0;                          // ov::inference_num_threads; 0: OpenVINO's default
};

class OpenVINOBackend : public Backend {
 public:
  explicit OpenVINOBackend(const std::string& path, const OvOptions& options = {}) {
    if (options.inference_precision != "f32" && options.inference_precision != "bf16")
      throw Error("inference precision must be f32 or bf16, got '" + options.inference_precision + "'");
    std::shared_ptr<ov::Model> model;
    try {
      model = core_.read_model(path);
    } catch (const std::exception& e) {
      throw Error(path + " is not a loadable OpenVINO model: " + first_line(e.what()));
    }
    if (model->has_rt_info("framework")) {
      for (const auto& [key, value] : model->get_rt_info<ov::AnyMap>("framework")) props_[key] = value.as<std::string>();
    }
    for (const auto& input : model->inputs()) inputs_.push_back(input.get_any_name());
    ov::AnyMap config{ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
    if (options.inference_precision == "bf16") {
      auto caps = core_.get_property(options.device, ov::device::capabilities);
      if (std::find(caps.begin(), caps.end(), std::string(ov::device::capability::BF16)) == caps.end())
        throw Error("inference precision bf16 needs native bf16 support, which this " + options.device + " lacks; use f32");
      config.emplace(ov::hint::inference_precision(ov::element::bf16));
    } else {
      config.emplace(ov::hint::inference_precision(ov::element::f32));
    }
    if (options.threads > 0) config.emplace(ov::inference_num_threads(options.threads));
    try {
      compiled_ = core_.compile_model(model, options.device, config);
    } catch (const std::exception& e) {
      throw Error("OpenVINO could not compile " + path + " for " + options.device + ": " + first_line(e.what()));
    }
    precision_ = options.inference_precision;
  }

  std::string name() const override { return "openvino"; }
  Props metadata() const override { return props_; }
  std::vector<std::string> input_names() const override { return inputs_; }
  /// The inference precision the model was compiled for ("f32" or "bf16").
  const std::string& inference_precision() const { return precision_; }

  Result infer(const float* images, const std::vector<int64_t>& shape, const std::vector<float>& thresholds) const override {
    Lease lease(*this);
    ov::InferRequest& request = lease.request;
    ov::Shape image_shape(shape.begin(), shape.end());
    // The tensors wrap the caller's buffers without copying; OpenVINO only reads inputs.
    try {
      request.set_tensor("images", ov::Tensor(ov::element::f32, image_shape, const_cast<float*>(images)));
      if (inputs_.size() == 2)
        request.set_tensor("pause_thresholds", ov::Tensor(ov::element::f32, ov::Shape{thresholds.size()}, const_cast<float*>(thresholds.data())));
    } catch (const std::exception& e) {
      throw Error("OpenVINO rejected the inputs: " + first_line(e.what()));
    }
    auto start = std::chrono::steady_clock::now();
    try {
      request.infer();
    } catch (const std::exception& e) {
      throw Error("OpenVINO inference failed: " + first_line(e.what()));
    }
    Result r;
    r.latency_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    const ov::Tensor logits = request.get_tensor("logits");
    for (size_t d : logits.get_shape()) r.logits_shape.push_back(static_cast<int64_t>(d));
    const float* l = logits.data<const float>();
    r.logits.assign(l, l + logits.get_size());
    const ov::Tensor kept = request.get_tensor("tokens_kept");
    for (size_t d : kept.get_shape()) r.tokens_kept_shape.push_back(static_cast<int64_t>(d));
    if (kept.get_element_type() == ov::element::i64) {
      const int64_t* k = kept.data<const int64_t>();
      r.tokens_kept.assign(k, k + kept.get_size());
    } else {  // OpenVINO may report integer outputs as i32
      const int32_t* k = kept.data<const int32_t>();
      r.tokens_kept.assign(k, k + kept.get_size());
    }
    r.thresholds = thresholds;
    return r;
  }

 private:
  static std::string first_line(const std::string& what) {
    std::string line = what.substr(0, what.find('\n'));
    return line.size() > 300 ? line.substr(0, 300) : line;
  }

  /// Borrow an idle infer request (or make one) for the duration of one call.
  struct Lease {
    const OpenVINOBackend& owner;
    ov::InferRequest request;
    explicit Lease(const OpenVINOBackend& o) : owner(o) {
      {
        std::lock_guard<std::mutex> lock(owner.mutex_);
        if (!owner.idle_.empty()) {
          request = std::move(owner.idle_.back());
          owner.idle_.pop_back();
          return;
        }
      }
      request = owner.compiled_.create_infer_request();
    }
    ~Lease() {
      std::lock_guard<std::mutex> lock(owner.mutex_);
      owner.idle_.push_back(std::move(request));
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
  };

  mutable ov::Core core_;
  mutable ov::CompiledModel compiled_;
  mutable std::mutex mutex_;
  mutable std::vector<ov::InferRequest> idle_;
  Props props_;
  std::vector<std::string> inputs_;
  std::string precision_;
};

}  // namespace avit
