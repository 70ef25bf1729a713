#!/usr/bin/env bash
# CI for the C++ runtime (runtime/cpp) and its example (examples/cpp_service).
#
#   runtime/cpp/ci_build.sh [BUILD_DIR]        # env: onnxruntime_ROOT, TensorRT_ROOT, OpenVINO_DIR, AVIT_PYTHON,
#                                              #      AVIT_CPP_TEST_MODEL
#
# Always (needs cmake and a C++17 compiler): configures and installs the header-only package, then builds
# the example as a separate project through find_package(avit) against the install. Backends are built
# in when their headers are found (onnxruntime_ROOT / TensorRT_ROOT, or the usual prefixes; OpenVINO:
# OpenVINO_DIR, or the openvino wheel of $AVIT_PYTHON, default python3); for each missing one this prints
# "skipped: … not found (…)" and still exits 0 — that is the only skip. Any configure/build/run failure
# exits non-zero. With AVIT_CPP_TEST_MODEL=model.onnx (ONNX Runtime) or model.openvino.xml (OpenVINO) the
# example also answers one request on a generated image.
# The dependency-free headers are additionally compiled and tested against a real exported model by
# tests/test_cpp.py (pytest).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="${1:-$repo/build/cpp-ci}"

for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (needed for the C++ runtime build)" >&2; exit 1; }
done

find_header() {  # find_header NAME ROOT... -> the first ROOT holding NAME under include/, or nothing
  local name="$1"; shift
  for root in "$@"; do
    [ -n "$root" ] || continue
    for sub in include include/onnxruntime include/onnxruntime/core/session include/x86_64-linux-gnu; do
      if [ -f "$root/$sub/$name" ]; then echo "$root"; return 0; fi
    done
  done
  return 0
}
ort_root="$(find_header onnxruntime_cxx_api.h "${onnxruntime_ROOT:-}" /usr/local /usr /opt/onnxruntime)"
trt_root="$(find_header NvInfer.h "${TensorRT_ROOT:-}" /usr/local/TensorRT /opt/tensorrt /usr/local /usr)"
python="${AVIT_PYTHON:-python3}"
ov_dir="${OpenVINO_DIR:-}"
if [ -z "$ov_dir" ] && command -v "$python" >/dev/null; then
  ov_dir="$("$python" -c 'import os, openvino; print(os.path.join(os.path.dirname(openvino.__file__), "cmake"))' 2>/dev/null || true)"
fi
[ -n "$ov_dir" ] && [ -f "$ov_dir/OpenVINOConfig.cmake" ] || ov_dir=""
if [ -n "$ov_dir" ]; then ov_args=(-DOpenVINO_DIR="$ov_dir"); else ov_args=(-DAVIT_PYTHON="$python"); fi  # CMake asks the same Python

rm -rf "$build"
cmake -S "$here" -B "$build/runtime" -DCMAKE_BUILD_TYPE=Release -DAVIT_BUILD_EXAMPLES=OFF \
  ${ort_root:+-Donnxruntime_ROOT="$ort_root"} ${trt_root:+-DTensorRT_ROOT="$trt_root"} "${ov_args[@]}" >"$build.configure.log" 2>&1 \
  || { cat "$build.configure.log" >&2; exit 1; }
grep '^-- avit:' "$build.configure.log" || true
cmake --build "$build/runtime" >/dev/null
cmake --install "$build/runtime" --prefix "$build/prefix" >/dev/null

cmake -S "$repo/examples/cpp_service" -B "$build/example" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$build/prefix" \
  ${ort_root:+-Donnxruntime_ROOT="$ort_root"} ${trt_root:+-DTensorRT_ROOT="$trt_root"} "${ov_args[@]}" >/dev/null
cmake --build "$build/example" -j 2 >/dev/null
example="$build/example/avit_cpp_service"
set +e; "$example" >/dev/null 2>&1; code=$?; set -e
[ "$code" -eq 2 ] || { echo "error: $example without arguments should print its usage and exit 2 (got $code)" >&2; exit 1; }
echo "built: avit package (find_package(avit) from $build/prefix) and examples/cpp_service"

test_model="${AVIT_CPP_TEST_MODEL:-}"
if [ -n "$test_model" ] && { { [ -n "$ort_root" ] && [ "${test_model%.onnx}" != "$test_model" ]; } ||
                             { [ -n "$ov_dir" ] && [ "${test_model%.xml}" != "$test_model" ]; }; }; then
  python3 - "$build/probe.ppm" <<'PY'
import sys
w, h = 96, 64
with open(sys.argv[1], "wb") as f:
    f.write(b"P6\n%d %d\n255\n" % (w, h) + bytes((x * 7 + y * 3 + c * 50) % 256 for y in range(h) for x in range(w) for c in range(3)))
PY
  answer="$(echo "$build/probe.ppm 0,0" | "$example" "$AVIT_CPP_TEST_MODEL" --workers 1)"
  echo "$answer"
  case "$answer" in *'"tokens_kept"'*) ;; *) echo "error: the example did not answer the request" >&2; exit 1 ;; esac
fi

[ -n "$ort_root" ] || echo "skipped: ONNX Runtime headers not found (set onnxruntime_ROOT): avit::onnxruntime and its run were not built"
[ -n "$trt_root" ] || echo "skipped: TensorRT headers not found (set TensorRT_ROOT): avit::tensorrt was not built"
[ -n "$ov_dir" ] || echo "skipped: OpenVINO not found (pip install openvino, or set OpenVINO_DIR): avit::openvino was not built"
exit 0
