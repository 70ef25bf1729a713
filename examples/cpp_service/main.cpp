// avit C++ example service: a line-oriented request loop over one thread-safe avit::Session.
//
//   avit_cpp_service model.onnx [--workers 4]            # requests on stdin, one JSON answer per line
//   echo "photo.ppm 0.2,0.4" | avit_cpp_service model.onnx
//   avit_cpp_service model.openvino.xml --precision bf16 --threads 2   # OpenVINO IR (avit export --openvino)
//
// Options: --workers N (requests in flight), --threads N (ONNX Runtime intra-op / OpenVINO inference
// threads; 0: the backend's default), --precision f32|bf16 (OpenVINO), --logits DIR (write each answer's
// logits as raw float32 [B, C, H, W] to DIR/<request index>.f32 and name the file in the answer).
//
// A request is "<image.ppm> [thresholds]" (binary PPM P6; thresholds omitted = the model's defaults).
// Requests run on a pool of worker threads sharing the session (each call passes its own thresholds);
// answers come back in request order: {"image", "tokens_kept", "thresholds", "latency_ms"} or {"error"}.
// latency_ms is the backend call alone (what AdaptiveSession's RunResult.latency_ms measures in Python).
// Put it behind any transport (HTTP framework, gRPC, a queue): the session is the part that matters.
#include <avit/avit.hpp>

#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <future>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // [H, W, 3]
};

Image read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw avit::Error("image not found: " + path);
  std::string magic;
  int maxval = 0;
  Image im;
  in >> magic >> im.width >> im.height >> maxval;
  if (magic != "P6" || im.width <= 0 || im.height <= 0 || maxval != 255) throw avit::Error(path + " is not a binary 8-bit PPM (P6)");
  in.get();
  im.rgb.resize(static_cast<size_t>(im.width) * im.height * 3);
  if (!in.read(reinterpret_cast<char*>(im.rgb.data()), static_cast<std::streamsize>(im.rgb.size())))
    throw avit::Error(path + " is truncated");
  return im;
}

// Bilinear resize to the model's size (half-pixel centres). Pillow's resize (what the Python runtime
// uses) also antialiases when shrinking, so outputs can differ slightly from avit.data.preprocess.
std::vector<uint8_t> resize(const Image& im, int64_t h, int64_t w) {
  std::vector<uint8_t> out(static_cast<size_t>(h * w * 3));
  for (int64_t y = 0; y < h; ++y) {
    float sy = std::max(0.f, (y + 0.5f) * im.height / h - 0.5f);
    int y0 = std::min(static_cast<int>(sy), im.height - 1), y1 = std::min(y0 + 1, im.height - 1);
    float fy = sy - y0;
    for (int64_t x = 0; x < w; ++x) {
      float sx = std::max(0.f, (x + 0.5f) * im.width / w - 0.5f);
      int x0 = std::min(static_cast<int>(sx), im.width - 1), x1 = std::min(x0 + 1, im.width - 1);
      float fx = sx - x0;
      for (int c = 0; c < 3; ++c) {
        auto at = [&](int yy, int xx) { return static_cast<float>(im.rgb[(static_cast<size_t>(yy) * im.width + xx) * 3 + c]); };
        float v = (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1)) + fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1));
        out[(y * w + x) * 3 + c] = static_cast<uint8_t>(std::min(255.f, v + 0.5f));
      }
    }
  }
  return out;
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out + "\"";
}

// [P] floats as a JSON array; infinities as the string "inf" (as avit's Python service writes them).
std::string json_floats(const std::vector<float>& values) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < values.size(); ++i) {
    out << (i ? ", " : "");
    if (std::isinf(values[i])) out << (values[i] > 0 ? "\"inf\"" : "\"-inf\"");
    else out << values[i];
  }
  out << "]";
  return out.str();
}

std::string answer(const avit::Session& session, const std::string& line, const std::string& logits_file) {
  std::istringstream in(line);
  std::string path, knob;
  in >> path >> knob;
  try {
    std::optional<std::vector<float>> thresholds;
    if (!knob.empty()) thresholds = avit::parse_thresholds(knob);
    const auto& info = session.info();
    Image im = read_ppm(path);
    std::vector<float> x = avit::normalize(info, resize(im, info.height, info.width).data(), info.height, info.width);
    avit::Result r = session.run(x, {1, info.in_chans, info.height, info.width}, thresholds);
    std::ostringstream out;
    out << "{\"image\": " << quote(path) << ", \"tokens_kept\": [";
    for (size_t i = 0; i < r.tokens_kept.size(); ++i) out << (i ? ", " : "") << r.tokens_kept[i];
    out << "], \"num_patches\": " << info.num_patches << ", \"thresholds\": " << json_floats(r.thresholds)
        << ", \"latency_ms\": " << r.latency_ms;
    if (!logits_file.empty()) {
      std::ofstream raw(logits_file, std::ios::binary);
      raw.write(reinterpret_cast<const char*>(r.logits.data()), static_cast<std::streamsize>(r.logits.size() * sizeof(float)));
      if (!raw) throw avit::Error("cannot write " + logits_file);
      out << ", \"logits_file\": " << quote(logits_file);
    }
    out << "}";
    return out.str();
  } catch (const avit::Error& e) {
    return "{\"image\": " + quote(path) + ", \"error\": " + quote(e.what()) + "}";
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: avit_cpp_service MODEL [--workers N] [--threads N] [--precision f32|bf16] [--logits DIR]"
                 "  (requests '<image.ppm> [t1,t2,...]' on stdin)\n";
    return 2;
  }
  int workers = 4, threads = 0;
  std::string precision, logits_dir;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc || (arg != "--workers" && arg != "--threads" && arg != "--precision" && arg != "--logits")) {
      std::cerr << "error: unknown option or missing value: " << arg << "\n";
      return 2;
    }
    const std::string value = argv[++i];
    if (arg == "--workers") workers = std::max(1, std::atoi(value.c_str()));
    if (arg == "--threads") threads = std::max(0, std::atoi(value.c_str()));
    if (arg == "--precision") precision = value;
    if (arg == "--logits") logits_dir = value;
  }
  try {
    avit::SessionOptions options;
#if defined(AVIT_WITH_ONNXRUNTIME)
    options.onnxruntime.intra_op_threads = threads;
#endif
#if defined(AVIT_WITH_OPENVINO)
    options.openvino.threads = threads;
    if (!precision.empty()) options.openvino.inference_precision = precision;
#else
    if (!precision.empty()) throw avit::Error("--precision is OpenVINO's, and this build has no OpenVINO backend");
#endif
    avit::Session session(argv[1], options);
    const auto& info = session.info();
    std::cerr << "avit " << avit::kVersion << ": " << argv[1] << " on " << session.backend().name() << ", pause points "
              << info.num_pause_points() << " (" << info.policy << "), defaults " << avit::format_floats(info.default_thresholds)
              << ", input " << info.height << "x" << info.width << ", " << workers << " workers\n";
    // A bounded pipeline: at most `workers` requests in flight, answers printed in order.
    std::deque<std::future<std::string>> inflight;
    std::string line;
    size_t index = 0;
    while (std::getline(std::cin, line)) {
      if (line.empty()) continue;
      const std::string logits_file = logits_dir.empty() ? "" : logits_dir + "/" + std::to_string(index) + ".f32";
      ++index;
      inflight.push_back(std::async(std::launch::async, [&session, line, logits_file] { return answer(session, line, logits_file); }));
      if (static_cast<int>(inflight.size()) >= workers) {
        std::cout << inflight.front().get() << std::endl;
        inflight.pop_front();
      }
    }
    for (auto& f : inflight) std::cout << f.get() << std::endl;
  } catch (const avit::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
