# Find ONNX Runtime and TensorRT (+ CUDA) under a root folder (imported targets avit_deps::*), and OpenVINO
# through its own CMake package (target openvino::runtime).
# Used by the build and by the installed package (avitConfig.cmake), so consumers find them the same way.

function(avit_find_onnxruntime root)
  if(TARGET avit_deps::onnxruntime)
    set(AVIT_HAVE_ONNXRUNTIME TRUE PARENT_SCOPE)
    return()
  endif()
  find_path(AVIT_ONNXRUNTIME_INCLUDE onnxruntime_cxx_api.h
    HINTS ${root} ENV onnxruntime_ROOT PATH_SUFFIXES include include/onnxruntime include/onnxruntime/core/session)
  find_library(AVIT_ONNXRUNTIME_LIBRARY onnxruntime HINTS ${root} ENV onnxruntime_ROOT PATH_SUFFIXES lib lib64)
  if(AVIT_ONNXRUNTIME_INCLUDE AND AVIT_ONNXRUNTIME_LIBRARY)
    add_library(avit_deps::onnxruntime UNKNOWN IMPORTED GLOBAL)
    set_target_properties(avit_deps::onnxruntime PROPERTIES
      IMPORTED_LOCATION "${AVIT_ONNXRUNTIME_LIBRARY}" INTERFACE_INCLUDE_DIRECTORIES "${AVIT_ONNXRUNTIME_INCLUDE}")
    set(AVIT_HAVE_ONNXRUNTIME TRUE PARENT_SCOPE)
  else()
    set(AVIT_HAVE_ONNXRUNTIME FALSE PARENT_SCOPE)
  endif()
endfunction()

function(avit_find_tensorrt root)
  if(TARGET avit_deps::tensorrt)
    set(AVIT_HAVE_TENSORRT TRUE PARENT_SCOPE)
    return()
  endif()
  find_path(AVIT_TENSORRT_INCLUDE NvInfer.h HINTS ${root} ENV TensorRT_ROOT PATH_SUFFIXES include include/x86_64-linux-gnu)
  find_library(AVIT_TENSORRT_LIBRARY nvinfer HINTS ${root} ENV TensorRT_ROOT PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu)
  find_package(CUDAToolkit QUIET)
  if(AVIT_TENSORRT_INCLUDE AND AVIT_TENSORRT_LIBRARY AND CUDAToolkit_FOUND)
    add_library(avit_deps::tensorrt UNKNOWN IMPORTED GLOBAL)
    set_target_properties(avit_deps::tensorrt PROPERTIES
      IMPORTED_LOCATION "${AVIT_TENSORRT_LIBRARY}" INTERFACE_INCLUDE_DIRECTORIES "${AVIT_TENSORRT_INCLUDE}"
      INTERFACE_LINK_LIBRARIES CUDA::cudart)
    set(AVIT_HAVE_TENSORRT TRUE PARENT_SCOPE)
  else()
    set(AVIT_HAVE_TENSORRT FALSE PARENT_SCOPE)
  endif()
endfunction()

# OpenVINO: its CMake package (OpenVINOConfig.cmake). The `openvino` PyPI wheel ships it, with the headers
# and the (versioned: libopenvino.so.<N>) libraries, in <site-packages>/openvino/cmake: give that folder as
# -DOpenVINO_DIR=..., or let this ask the Python interpreter AVIT_PYTHON (default: python3 on PATH) where
# the wheel is. Link the imported target openvino::runtime (a plain -lopenvino finds no unversioned .so).
function(avit_find_openvino)
  if(TARGET openvino::runtime)
    set(AVIT_HAVE_OPENVINO TRUE PARENT_SCOPE)
    return()
  endif()
  if(NOT OpenVINO_DIR AND NOT DEFINED ENV{OpenVINO_DIR})
    if(NOT AVIT_PYTHON)
      find_program(AVIT_PYTHON NAMES python3 python)
    endif()
    if(AVIT_PYTHON)
      execute_process(
        COMMAND "${AVIT_PYTHON}" -c "import os, openvino; print(os.path.join(os.path.dirname(openvino.__file__), 'cmake'))"
        OUTPUT_VARIABLE _avit_ov_dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _avit_ov_rc)
      if(_avit_ov_rc EQUAL 0 AND EXISTS "${_avit_ov_dir}/OpenVINOConfig.cmake")
        set(OpenVINO_DIR "${_avit_ov_dir}" CACHE PATH "OpenVINO's CMake package (found through ${AVIT_PYTHON})" FORCE)
      endif()
    endif()
  endif()
  find_package(OpenVINO QUIET COMPONENTS Runtime)
  if(OpenVINO_FOUND AND TARGET openvino::runtime)
    set(AVIT_HAVE_OPENVINO TRUE PARENT_SCOPE)
    set(AVIT_OPENVINO_VERSION "${OpenVINO_VERSION}" PARENT_SCOPE)
  else()
    set(AVIT_HAVE_OPENVINO FALSE PARENT_SCOPE)
  endif()
endfunction()
