// Error checks for the CUDA runtime, cuDNN, cuBLAS and NCCL, for cuda/ sources only (it pulls in
// the libraries' headers). The four macros share one templated body: a status, the library's
// success value and its to-string function; a failure throws lowbit::Error with file:line, the
// call text and the library's message. The _WARN twins print to stderr instead, for destructors.
// A failed CUDA runtime call also clears the runtime's "last error", so a later
// LOWBIT_LAUNCH_CHECK() reports its own launch, not an old failure that was already thrown.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <nccl.h>

#include <cstdio>
#include <string>

#include "core/error.h"

namespace lowbit::cuda::detail {

// Library message for a CUDA runtime status ("cudaErrorMemoryAllocation: out of memory"). Clears
// the non-sticky last error as a side effect (see the top of the file).
inline std::string cuda_status_string(cudaError_t status) {
  (void)cudaGetLastError();
  return std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
}
inline std::string cudnn_status_string(cudnnStatus_t status) { return cudnnGetErrorString(status); }
inline std::string cublas_status_string(cublasStatus_t status) {
  return std::string(cublasGetStatusName(status)) + ": " + cublasGetStatusString(status);
}
inline std::string nccl_status_string(ncclResult_t status) {
  const char* last = ncclGetLastError(nullptr);
  std::string msg = ncclGetErrorString(status);
  if (last && *last) msg += std::string(" (") + last + ")";
  return msg;
}

// The one body behind every *_CHECK and *_CHECK_WARN macro. Returns true on success.
template <typename Status, typename ToString>
bool check_status(Status status, Status success, ToString to_string, const char* library,
                  const char* call, const char* file, int line, bool throw_on_error) {
  if (status == success) return true;
  const char* base = file;
  for (const char* p = file; *p; ++p) {
    if (*p == '/') base = p + 1;
  }
  std::string msg = str_cat(base, ":", line, ": ", library, " error ", static_cast<int>(status),
                            " in ", call, ": ", to_string(status));
  if (throw_on_error) throw Error(msg);
  std::fprintf(stderr, "lowbit warning: %s\n", msg.c_str());
  return false;
}

}  // namespace lowbit::cuda::detail

#define LOWBIT_STATUS_CHECK_GEN(call, success, to_string, library, throw_on_error)                 \
  ::lowbit::cuda::detail::check_status((call), (success), (to_string), (library), #call, __FILE__, \
                                       __LINE__, (throw_on_error))

#define CUDA_CHECK(call)                                                                       \
  (void)LOWBIT_STATUS_CHECK_GEN(call, cudaSuccess, ::lowbit::cuda::detail::cuda_status_string, \
                                "CUDA", true)
#define CUDNN_CHECK(call)                                   \
  (void)LOWBIT_STATUS_CHECK_GEN(call, CUDNN_STATUS_SUCCESS, \
                                ::lowbit::cuda::detail::cudnn_status_string, "cuDNN", true)
#define CUBLAS_CHECK(call)                                   \
  (void)LOWBIT_STATUS_CHECK_GEN(call, CUBLAS_STATUS_SUCCESS, \
                                ::lowbit::cuda::detail::cublas_status_string, "cuBLAS", true)
#define NCCL_CHECK(call)                                                                       \
  (void)LOWBIT_STATUS_CHECK_GEN(call, ncclSuccess, ::lowbit::cuda::detail::nccl_status_string, \
                                "NCCL", true)

// Non-throwing forms for destructors: print "lowbit warning: ..." to stderr, return false.
#define CUDA_CHECK_WARN(call)                                                                    \
  LOWBIT_STATUS_CHECK_GEN(call, cudaSuccess, ::lowbit::cuda::detail::cuda_status_string, "CUDA", \
                          false)
#define CUDNN_CHECK_WARN(call)                                                                     \
  LOWBIT_STATUS_CHECK_GEN(call, CUDNN_STATUS_SUCCESS, ::lowbit::cuda::detail::cudnn_status_string, \
                          "cuDNN", false)
#define CUBLAS_CHECK_WARN(call)                        \
  LOWBIT_STATUS_CHECK_GEN(call, CUBLAS_STATUS_SUCCESS, \
                          ::lowbit::cuda::detail::cublas_status_string, "cuBLAS", false)
#define NCCL_CHECK_WARN(call)                                                                    \
  LOWBIT_STATUS_CHECK_GEN(call, ncclSuccess, ::lowbit::cuda::detail::nccl_status_string, "NCCL", \
                          false)

// After every kernel launch: reports launch-configuration errors without synchronising.
#define LOWBIT_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())
