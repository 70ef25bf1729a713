// avit C++ runtime, dependency-free part: errors, a tiny JSON reader, the avit metadata (ModelInfo),
// threshold validation, the TensorRT engine sidecar and image normalisation.
//
// Header-only C++17, no third-party dependency: this part compiles (and is tested) anywhere; the
// backends in onnxruntime_backend.hpp / tensorrt_backend.hpp add ONNX Runtime / TensorRT.
// The metadata keys and their meaning are those of src/avit/metadata.py (avit.format_version "1").
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace avit {

inline constexpr const char* kFormatVersion = "1";

/// Every avit error: one line meant for a user (bad file, wrong threshold count, missing backend).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ------------------------------------------------------------------------------------------------ JSON
/// A tiny JSON reader for avit's metadata values and sidecars: objects, arrays, strings (with \uXXXX
/// escapes for the Basic Multilingual Plane), numbers, true/false/null. Not a general-purpose library:
/// no streaming, no surrogate pairs, depth-limited to 64.
namespace json {

struct Value;
using Array = std::vector<Value>;
using Object = std::map<std::string, Value>;

struct Value {
  std::variant<std::nullptr_t, bool, double, std::string, Array, Object> v;

  bool is_null() const { return std::holds_alternative<std::nullptr_t>(v); }
  bool is_number() const { return std::holds_alternative<double>(v); }
  bool is_string() const { return std::holds_alternative<std::string>(v); }
  bool is_array() const { return std::holds_alternative<Array>(v); }
  bool is_object() const { return std::holds_alternative<Object>(v); }

  double number() const {
    if (!is_number()) throw Error("JSON value is not a number");
    return std::get<double>(v);
  }
  // Accessors on a temporary (`json::parse(text).array()`) return by value, so a range-for over
  // them never iterates a destroyed value.
  const std::string& string() const& {
    if (!is_string()) throw Error("JSON value is not a string");
    return std::get<std::string>(v);
  }
  std::string string() && { return std::string(static_cast<const Value&>(*this).string()); }
  const Array& array() const& {
    if (!is_array()) throw Error("JSON value is not an array");
    return std::get<Array>(v);
  }
  Array array() && {
    static_cast<const Value&>(*this).array();
    return std::move(std::get<Array>(v));
  }
  const Object& object() const& {
    if (!is_object()) throw Error("JSON value is not an object");
    return std::get<Object>(v);
  }
  Object object() && {
    static_cast<const Value&>(*this).object();
    return std::move(std::get<Object>(v));
  }
  const Value& at(const std::string& key) const {
    const auto& o = object();
    auto it = o.find(key);
    if (it == o.end()) throw Error("JSON object has no key \"" + key + "\"");
    return it->second;
  }
  bool has(const std::string& key) const { return is_object() && object().count(key) > 0; }
  /// A number, or avit's spelling of infinity: the strings "inf" / "-inf".
  double number_or_inf() const {
    if (is_string()) {
      if (string() == "inf") return std::numeric_limits<double>::infinity();
      if (string() == "-inf") return -std::numeric_limits<double>::infinity();
    }
    return number();
  }
};

class Parser {
 public:
  explicit Parser(const std::string& text) : s_(text) {}

  Value parse() {
    Value value = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected trailing characters");
    return value;
  }

 private:
  const std::string& s_;
  size_t pos_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw Error("invalid JSON at offset " + std::to_string(pos_) + ": " + what);
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
  }
  bool consume(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(pos_, n, word) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }
  Value parse_value(int depth) {
    if (depth > 64) fail("nested too deeply");
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end");
    char c = s_[pos_];
    if (c == '{') return parse_object(depth);
    if (c == '[') return parse_array(depth);
    if (c == '"') return Value{parse_string()};
    if (consume("true")) return Value{true};
    if (consume("false")) return Value{false};
    if (consume("null")) return Value{nullptr};
    if (c == '-' || (c >= '0' && c <= '9')) return Value{parse_number()};
    fail(std::string("unexpected character '") + c + "'");
  }
  Value parse_object(int depth) {
    Object out;
    ++pos_;  // {
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return Value{std::move(out)};
    }
    while (true) {
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a string key");
      std::string key = parse_string();
      skip_ws();
      if (pos_ >= s_.size() || s_[pos_] != ':') fail("expected ':'");
      ++pos_;
      out[key] = parse_value(depth + 1);
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return Value{std::move(out)};
      }
      fail("expected ',' or '}'");
    }
  }
  Value parse_array(int depth) {
    Array out;
    ++pos_;  // [
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return Value{std::move(out)};
    }
    while (true) {
      out.push_back(parse_value(depth + 1));
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return Value{std::move(out)};
      }
      fail("expected ',' or ']'");
    }
  }
  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  std::string parse_string() {
    std::string out;
    ++pos_;  // "
    while (pos_ < s_.size()) {
      char c = s_[pos_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) break;
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (pos_ + 4 > s_.size()) fail("short \\u escape");
          unsigned cp = static_cast<unsigned>(std::stoul(s_.substr(pos_, 4), nullptr, 16));
          pos_ += 4;
          append_utf8(out, cp);
          break;
        }
        default: fail("unknown escape");
      }
    }
    fail("unterminated string");
  }
  double parse_number() {
    size_t start = pos_;
    if (s_[pos_] == '-') ++pos_;
    while (pos_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '.' || s_[pos_] == 'e' ||
                                s_[pos_] == 'E' || s_[pos_] == '+' || s_[pos_] == '-'))
      ++pos_;
    std::string text = s_.substr(start, pos_ - start);
    char* end = nullptr;
    double value = std::strtod(text.c_str(), &end);
    if (end == text.c_str() || *end != '\0') fail("bad number '" + text + "'");
    return value;
  }
};

inline Value parse(const std::string& text) { return Parser(text).parse(); }

}  // namespace json

// ------------------------------------------------------------------------------------------------ metadata
/// The avit.* metadata of an artifact (ONNX custom metadata map, or an engine sidecar's "metadata").
using Props = std::map<std::string, std::string>;

/// What an avit model is (the C++ twin of avit.metadata.ModelInfo, with the fields a runtime needs).
struct ModelInfo {
  std::string avit_version;
  std::string variant;                 // "adaptive" | "static"
  std::vector<int64_t> pause_points;   // P entries
  std::string policy;                  // "entropy" | "confidence" | "keep_ratio"
  std::vector<float> default_thresholds;
  double nothing_paused = 0.0;
  double everything_paused = 0.0;
  std::vector<std::string> class_names;
  int64_t in_chans = 3;
  int64_t height = 0, width = 0;       // input size in pixels
  int64_t num_patches = 0;
  int64_t num_classes = 0;
  std::vector<float> mean, std;
  std::string output_activation;       // "sigmoid" | "softmax"
  std::vector<std::string> adaptive_ops;
  std::string precision = "fp32";

  size_t num_pause_points() const { return pause_points.size(); }

  /// Parse the avit.* props. Throws avit::Error (no avit metadata, other format version, malformed value).
  static ModelInfo from_props(const Props& props, const std::string& where = "model") {
    auto get = [&](const std::string& key) -> const std::string& {
      auto it = props.find("avit." + key);
      if (it == props.end()) throw Error(where + " has malformed avit metadata (missing avit." + key + ")");
      return it->second;
    };
    if (props.find("avit.format_version") == props.end())
      throw Error(where + " carries no avit metadata (not exported by avit)");
    if (props.at("avit.format_version") != kFormatVersion)
      throw Error(where + " has avit metadata format " + props.at("avit.format_version") + ", this avit reads " + kFormatVersion);
    ModelInfo info;
    try {
      auto numbers = [&](const std::string& key) {
        std::vector<float> out;
        for (const auto& v : json::parse(get(key)).array()) out.push_back(static_cast<float>(v.number_or_inf()));
        return out;
      };
      auto strings = [&](const std::string& key) {
        std::vector<std::string> out;
        for (const auto& v : json::parse(get(key)).array()) out.push_back(v.string());
        return out;
      };
      info.avit_version = get("version");
      info.variant = get("variant");
      for (const auto& v : json::parse(get("pause_points")).array()) info.pause_points.push_back(static_cast<int64_t>(v.number()));
      info.policy = get("policy");
      info.default_thresholds = numbers("default_thresholds");
      info.nothing_paused = json::parse(get("nothing_paused")).number_or_inf();
      info.everything_paused = json::parse(get("everything_paused")).number_or_inf();
      info.class_names = strings("class_names");
      auto size = json::parse(get("input_size")).array();
      if (size.size() != 2) throw Error("input_size must be [H, W]");
      info.height = static_cast<int64_t>(size[0].number());
      info.width = static_cast<int64_t>(size[1].number());
      info.num_patches = std::stoll(get("num_patches"));
      info.mean = numbers("mean");
      info.std = numbers("std");
      info.output_activation = get("output_activation");
      info.adaptive_ops = strings("adaptive_ops");
      auto precision = props.find("avit.precision");
      if (precision != props.end()) info.precision = precision->second;
      json::Value config = json::parse(get("config"));
      info.num_classes = static_cast<int64_t>(config.at("num_classes").number());
      if (config.has("in_chans")) info.in_chans = static_cast<int64_t>(config.at("in_chans").number());
    } catch (const Error& e) {
      throw Error(where + " has malformed avit metadata (" + e.what() + ")");
    } catch (const std::exception& e) {
      throw Error(where + " has malformed avit metadata (" + e.what() + ")");
    }
    if (info.default_thresholds.size() != info.pause_points.size())
      throw Error(where + " has malformed avit metadata (default_thresholds and pause_points differ in length)");
    if (info.mean.size() != static_cast<size_t>(info.in_chans) || info.std.size() != static_cast<size_t>(info.in_chans))
      throw Error(where + " has malformed avit metadata (mean/std need one value per channel)");
    return info;
  }
};

inline std::string format_floats(const std::vector<float>& values) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out << ", ";
    if (std::isinf(values[i])) out << (values[i] > 0 ? "inf" : "-inf");
    else out << values[i];
  }
  out << "]";
  return out.str();
}

/// Validated [P] thresholds (the same rules and messages as AdaptiveSession.thresholds); nullopt → defaults.
inline std::vector<float> validate_thresholds(const ModelInfo& info, const std::optional<std::vector<float>>& values) {
  const size_t p = info.num_pause_points();
  if (!values) return info.default_thresholds;
  const auto& t = *values;
  if (t.size() != p) {
    std::ostringstream msg;
    msg << "expected " << p << " pause thresholds (one per pause point [";
    for (size_t i = 0; i < p; ++i) msg << (i ? ", " : "") << info.pause_points[i];
    msg << "]), got " << t.size();
    throw Error(msg.str());
  }
  for (float v : t)
    if (std::isnan(v)) throw Error("pause thresholds must not be NaN");
  if (info.policy == "keep_ratio") {
    for (float v : t)
      if (v < 0.f || v > 1.f) throw Error("keep ratios must lie in [0, 1], got " + format_floats(t));
  } else {
    for (float v : t)
      if (v < 0.f) throw Error("pause thresholds must be >= 0, got " + format_floats(t));
  }
  return t;
}

/// "0.2,0.4" / "0,inf" → floats (command lines, query strings). Throws avit::Error.
inline std::vector<float> parse_thresholds(const std::string& text) {
  std::vector<float> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    item.erase(std::remove(item.begin(), item.end(), ' '), item.end());
    if (item.empty()) continue;
    if (item == "inf") {
      out.push_back(std::numeric_limits<float>::infinity());
      continue;
    }
    char* end = nullptr;
    float v = std::strtof(item.c_str(), &end);
    if (end == item.c_str() || *end != '\0')
      throw Error("thresholds '" + text + "' is not a comma-separated list of numbers (e.g. 0.2,0.4 or 0,inf)");
    out.push_back(v);
  }
  if (out.empty()) throw Error("thresholds need at least one value");
  return out;
}

// ------------------------------------------------------------------------------------------------ sidecar
/// What model.engine.json records (src/avit/runtime/tensorrt/sidecar.py, EngineSidecar, format version 1).
struct EngineSidecar {
  std::string tensorrt_version;
  std::string precision;
  std::string plugin_library;   // empty: stock engine, no plugins
  std::string plugin_loader;    // "static" (dlopen) | "dynamic" (IPluginRegistry::loadLibrary)
  int64_t min_batch = 1, max_batch = 1;
  Props metadata;

  static EngineSidecar from_json(const std::string& text, const std::string& where = "sidecar") {
    json::Value body;
    try {
      body = json::parse(text);
    } catch (const Error& e) {
      throw Error(where + " is not JSON (" + e.what() + ")");
    }
    if (!body.is_object() || !body.has("format") || !body.at("format").is_string() ||
        body.at("format").string() != "avit-tensorrt-engine")
      throw Error(where + " is not an avit engine sidecar");
    if (!body.has("format_version") || !body.at("format_version").is_number() || body.at("format_version").number() != 1)
      throw Error(where + " has another sidecar format version, this avit reads 1");
    EngineSidecar out;
    try {
      out.tensorrt_version = body.at("tensorrt_version").string();
      out.precision = body.at("precision").string();
      if (body.has("plugin_library") && body.at("plugin_library").is_string()) out.plugin_library = body.at("plugin_library").string();
      if (body.has("plugin_loader") && body.at("plugin_loader").is_string()) out.plugin_loader = body.at("plugin_loader").string();
      const auto& images = body.at("profile").at("images");
      out.min_batch = static_cast<int64_t>(images.at("min").array().at(0).number());
      out.max_batch = static_cast<int64_t>(images.at("max").array().at(0).number());
      for (const auto& [k, v] : body.at("metadata").object()) out.metadata[k] = v.string();
    } catch (const std::exception& e) {
      throw Error(where + " is incomplete (" + e.what() + ")");
    }
    ModelInfo::from_props(out.metadata, where);  // validates now, not at first use
    return out;
  }

  static EngineSidecar read(const std::string& engine_path) {
    const std::string path = engine_path + ".json";
    std::ifstream in(path);
    if (!in) throw Error(engine_path + " has no sidecar " + path + " (build engines with 'avit export MODEL.onnx --trt')");
    std::stringstream buffer;
    buffer << in.rdbuf();
    return from_json(buffer.str(), path);
  }
};

// ------------------------------------------------------------------------------------------------ images
/// Check images float32 [B, C, H, W] against the model: returns B. Throws avit::Error.
inline int64_t check_images(const ModelInfo& info, const std::vector<int64_t>& shape, size_t count) {
  if (shape.size() != 4 || shape[0] < 1 || shape[1] != info.in_chans || shape[2] != info.height || shape[3] != info.width) {
    std::ostringstream msg;
    msg << "images must be float32 [B>=1, " << info.in_chans << ", " << info.height << ", " << info.width << "], got [";
    for (size_t i = 0; i < shape.size(); ++i) msg << (i ? ", " : "") << shape[i];
    msg << "]";
    throw Error(msg.str());
  }
  if (count != static_cast<size_t>(shape[0] * shape[1] * shape[2] * shape[3]))
    throw Error("image buffer holds " + std::to_string(count) + " floats, the shape needs " +
                std::to_string(shape[0] * shape[1] * shape[2] * shape[3]));
  return shape[0];
}

/// uint8 RGB [H, W, C] already at the model's input size → float32 [C, H, W]: x / 255, then (x - mean) / std
/// (what avit.data.preprocess does after its resize; resize with your image library first).
inline std::vector<float> normalize(const ModelInfo& info, const uint8_t* hwc, int64_t height, int64_t width) {
  if (height != info.height || width != info.width)
    throw Error("normalize needs an image of the model's input size " + std::to_string(info.height) + "x" +
                std::to_string(info.width) + ", got " + std::to_string(height) + "x" + std::to_string(width) + " (resize first)");
  const int64_t c = info.in_chans, plane = height * width;
  std::vector<float> out(static_cast<size_t>(c * plane));
  for (int64_t ch = 0; ch < c; ++ch) {
    const float mean = info.mean[ch], inv_std = 1.0f / info.std[ch];
    for (int64_t i = 0; i < plane; ++i)
      out[ch * plane + i] = (static_cast<float>(hwc[i * c + ch]) / 255.0f - mean) * inv_std;
  }
  return out;
}

/// Outputs of one run.
struct Result {
  std::vector<float> logits;            // [B, num_classes, H, W]
  std::vector<int64_t> logits_shape;
  std::vector<int64_t> tokens_kept;     // [B, P]: active patch tokens after each pause point
  std::vector<int64_t> tokens_kept_shape;
  std::vector<float> thresholds;        // [P] used
  double latency_ms = 0.0;              // the backend call
};

/// What a session needs from a backend (ONNX Runtime, TensorRT, or your own). infer must be thread-safe.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Props metadata() const = 0;
  virtual std::vector<std::string> input_names() const = 0;
  /// images [B, C, H, W] (validated), thresholds [P] (validated; ignored when P = 0).
  virtual Result infer(const float* images, const std::vector<int64_t>& shape, const std::vector<float>& thresholds) const = 0;
};

}  // namespace avit
