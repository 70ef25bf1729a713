# libavit_cuda_kernels.so: the four plugin .cu files, unchanged, plus avit_cuda_kernels.cu (C ABI over the
# same launch functions the IPluginV3 enqueue calls). No TensorRT. Included by plugins/CMakeLists.txt
# with -DAVIT_BUILD_CUDA_TEST=ON; tests/test_plugin_cuda.py builds the same sources with one nvcc line.
if(NOT CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 80 90)
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
add_library(avit_cuda_kernels SHARED
  ${CMAKE_CURRENT_LIST_DIR}/avit_cuda_kernels.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/entropy_select/entropy_select.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/keep_ratio_select/keep_ratio_select.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/token_gather/token_gather.cu
  ${CMAKE_CURRENT_SOURCE_DIR}/token_scatter/token_scatter.cu
)
target_include_directories(avit_cuda_kernels PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_compile_options(avit_cuda_kernels PRIVATE -Xcompiler=-Wall,-Wextra -Werror=all-warnings)
