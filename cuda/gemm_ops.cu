// gemm_stub on cuBLAS. GemmArgs is row-major; cuBLAS is column-major. A row-major matrix with
// row stride ld is, read column-major with leading dimension ld, its transpose, so
//   C = op(A) @ op(B)  (row-major, m x n)   <=>   C^T = op(B)^T @ op(A)^T  (column-major, n x m)
// and the call passes B first, A second, swaps m and n, and keeps each operand's transpose flag.
// f32 computes in f32 (TF32 tensor cores only when args.allow_tf32), f64 in f64, bf16/f16
// inputs and outputs with f32 accumulation. Sizes go through the 64-bit cuBLAS API.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/kernels.h"
#include "cuda/check.h"
#include "cuda/handles.h"
#include "cuda/runtime.h"

namespace lowbit::cuda {

namespace {

struct GemmTypes {
  cudaDataType_t data;
  cublasComputeType_t compute;
  bool double_scalars;  // alpha/beta as double (f64) or float (the others)
};

GemmTypes gemm_types(DType t, bool allow_tf32) {
  switch (t) {
    case DType::f32:
      return {CUDA_R_32F, allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, false};
    case DType::f64:
      return {CUDA_R_64F, CUBLAS_COMPUTE_64F, true};
    case DType::bf16:
      return {CUDA_R_16BF, CUBLAS_COMPUTE_32F, false};
    case DType::f16:
      return {CUDA_R_16F, CUBLAS_COMPUTE_32F, false};
    default:
      LOWBIT_FAIL("gemm (CUDA): dtype ", t, " is not supported (f32, f64, bf16, f16)");
  }
}

void gemm_cuda(const core::GemmArgs& g) {
  LOWBIT_CHECK(g.a.dtype() == g.b.dtype() && g.b.dtype() == g.c.dtype(),
               "gemm (CUDA): dtypes differ: a ", g.a.dtype(), ", b ", g.b.dtype(), ", c ",
               g.c.dtype());
  LOWBIT_CHECK(g.m >= 0 && g.n >= 0 && g.k >= 0 && g.batch >= 0, "gemm (CUDA): negative size m ",
               g.m, " n ", g.n, " k ", g.k, " batch ", g.batch);
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  // cuBLAS's leading-dimension rules, restated for the row-major operands.
  const int64_t a_cols = g.trans_a ? g.m : g.k;  // row length of A as stored
  const int64_t b_cols = g.trans_b ? g.k : g.n;
  LOWBIT_CHECK(
      g.lda >= (a_cols > 1 ? a_cols : 1) && g.ldb >= (b_cols > 1 ? b_cols : 1) && g.ldc >= g.n,
      "gemm (CUDA): row strides too small: lda ", g.lda, " (A row ", a_cols, "), ldb ", g.ldb,
      " (B row ", b_cols, "), ldc ", g.ldc, " (C row ", g.n, ")");
  const GemmTypes types = gemm_types(g.c.dtype(), g.allow_tf32);
  const int device = g.c.device().index;
  DeviceGuard guard(device);
  cublasHandle_t handle = cublas_handle(device);

  const double alpha_d = g.alpha, beta_d = g.beta;
  const float alpha_f = float(g.alpha), beta_f = float(g.beta);
  const void* alpha = types.double_scalars ? static_cast<const void*>(&alpha_d) : &alpha_f;
  const void* beta = types.double_scalars ? static_cast<const void*>(&beta_d) : &beta_f;

  const cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(
      handle, op_b, op_a, g.n, g.m, g.k, alpha, g.b.raw_data(), types.data, g.ldb, g.stride_b,
      g.a.raw_data(), types.data, g.lda, g.stride_a, beta, g.c.raw_data(), types.data, g.ldc,
      g.stride_c, g.batch, types.compute, CUBLAS_GEMM_DEFAULT));
}

}  // namespace

LOWBIT_REGISTER_KERNEL(core::gemm_stub, cuda, gemm_cuda);

}  // namespace lowbit::cuda
