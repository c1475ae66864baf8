// matmul, bmm and addmm over gemm_stub (OpenBLAS on CPU, cuBLAS on CUDA). A transposed view is
// passed to BLAS as a transpose flag rather than copied; other strided inputs are made
// contiguous first. The CPU path computes 16-bit floats in f32 (convert, sgemm, convert back).
#include <cblas.h>

#include <atomic>

#include "core/autograd.h"
#include "core/kernels.h"
#include "core/ops.h"

namespace lowbit {

namespace core {

LOWBIT_DEFINE_STUB(gemm_stub);

namespace {
void gemm_cpu(const GemmArgs& g) {
  const CBLAS_TRANSPOSE ta = g.trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = g.trans_b ? CblasTrans : CblasNoTrans;
  if (g.a.dtype() == DType::f32) {
    const float* a = static_cast<const float*>(g.a.raw_data());
    const float* b = static_cast<const float*>(g.b.raw_data());
    float* c = static_cast<float*>(g.c.raw_data());
    for (int64_t p = 0; p < g.batch; ++p) {
      cblas_sgemm(CblasRowMajor, ta, tb, int(g.m), int(g.n), int(g.k), float(g.alpha),
                  a + p * g.stride_a, int(g.lda), b + p * g.stride_b, int(g.ldb), float(g.beta),
                  c + p * g.stride_c, int(g.ldc));
    }
  } else if (g.a.dtype() == DType::f64) {
    const double* a = static_cast<const double*>(g.a.raw_data());
    const double* b = static_cast<const double*>(g.b.raw_data());
    double* c = static_cast<double*>(g.c.raw_data());
    for (int64_t p = 0; p < g.batch; ++p) {
      cblas_dgemm(CblasRowMajor, ta, tb, int(g.m), int(g.n), int(g.k), g.alpha, a + p * g.stride_a,
                  int(g.lda), b + p * g.stride_b, int(g.ldb), g.beta, c + p * g.stride_c,
                  int(g.ldc));
    }
  } else {
    LOWBIT_FAIL("gemm (cpu): dtype ", g.a.dtype(), " is not supported (f32, f64)");
  }
}
}  // namespace

LOWBIT_REGISTER_KERNEL(gemm_stub, cpu, gemm_cpu);

}  // namespace core

namespace {

std::atomic<bool> g_allow_tf32{false};

// A matrix operand (rows x cols as stored, batch dim optional) in a layout BLAS can read:
// row-major with a leading dimension, possibly flagged transposed.
struct Operand {
  Tensor t;
  bool trans;
  int64_t ld;
  int64_t batch_stride;
};

Operand blas_operand(const Tensor& x, bool trans) {
  const int64_t nd = x.dim();
  const int64_t rows = x.size(nd - 2), cols = x.size(nd - 1);
  const int64_t rs = x.stride(nd - 2), cs = x.stride(nd - 1);
  const int64_t bs = nd == 3 ? x.stride(0) : 0;
  if ((cs == 1 || cols == 1) && rs >= std::max<int64_t>(cols, 1)) return {x, trans, rs, bs};
  if ((rs == 1 || rows == 1) && cs >= std::max<int64_t>(rows, 1)) {
    // Stored transposed: a (rows x cols) view of a row-major (cols x rows) matrix.
    return {x, !trans, cs, bs};
  }
  Tensor c = x.contiguous();
  return {c, trans, std::max<int64_t>(cols, 1), nd == 3 ? rows * cols : 0};
}

Tensor gemm_raw(const Tensor& a_in, const Tensor& b_in, bool ta, bool tb, const Tensor& c_init,
                double alpha, double beta, const char* name) {
  LOWBIT_CHECK(a_in.defined() && b_in.defined(), name, ": the ",
               a_in.defined() ? "second" : "first", " operand is undefined");
  LOWBIT_CHECK(a_in.device() == b_in.device(), name, ": tensors on different devices, ",
               a_in.device(), " and ", b_in.device());
  LOWBIT_CHECK(a_in.dtype() == b_in.dtype(), name, ": dtypes differ, ", a_in.dtype(), " and ",
               b_in.dtype());
  LOWBIT_CHECK(is_floating(a_in.dtype()), name, ": dtype ", a_in.dtype(),
               " is not supported (f32, f64, bf16, f16)");
  const bool batched = a_in.dim() == 3;
  const int64_t nd = batched ? 3 : 2;
  LOWBIT_CHECK(a_in.dim() == nd && b_in.dim() == nd, name, ": wants ", nd, "-D operands, got ",
               a_in.shape(), " and ", b_in.shape());
  const int64_t m = ta ? a_in.size(-1) : a_in.size(-2);
  const int64_t k = ta ? a_in.size(-2) : a_in.size(-1);
  const int64_t kb = tb ? b_in.size(-1) : b_in.size(-2);
  const int64_t n = tb ? b_in.size(-2) : b_in.size(-1);
  LOWBIT_CHECK(k == kb, name, ": inner dims differ: ", a_in.shape(), (ta ? "^T" : ""), " @ ",
               b_in.shape(), (tb ? "^T" : ""));
  const int64_t batch = batched ? a_in.size(0) : 1;
  if (batched) {
    LOWBIT_CHECK(b_in.size(0) == batch, name, ": batch sizes differ: ", a_in.shape(), " and ",
                 b_in.shape());
  }
  const Device dev = a_in.device();
  const DType t = a_in.dtype();
  // The CPU computes 16-bit floats in f32.
  const bool upcast = dev.is_cpu() && (t == DType::bf16 || t == DType::f16);
  const DType ct = upcast ? DType::f32 : t;
  Tensor a = a_in.detach().to(ct), b = b_in.detach().to(ct);
  Shape out_shape = batched ? Shape{batch, m, n} : Shape{m, n};
  Tensor c;
  if (c_init.defined()) {
    c = empty(out_shape, TensorOptions(ct, dev));
    c.copy_(c_init.detach().to(ct));
  } else {
    c = empty(out_shape, TensorOptions(ct, dev));
    beta = 0.0;
  }
  if (c.numel() > 0) {
    if (k == 0) {
      if (beta == 0.0)
        c.fill_(0.0);
      else
        mul_(c, beta);
    } else {
      Operand oa = blas_operand(a, ta), ob = blas_operand(b, tb);
      core::GemmArgs g;
      g.trans_a = oa.trans;
      g.trans_b = ob.trans;
      g.m = m;
      g.n = n;
      g.k = k;
      g.batch = batch;
      g.alpha = alpha;
      g.beta = beta;
      g.a = oa.t;
      g.b = ob.t;
      g.c = c;
      g.lda = oa.ld;
      g.ldb = ob.ld;
      g.ldc = n;
      g.stride_a = oa.batch_stride;
      g.stride_b = ob.batch_stride;
      g.stride_c = batched ? m * n : 0;
      g.allow_tf32 = g_allow_tf32.load();
      core::gemm_stub(dev, g);
      c.storage()->bump_version();
    }
  }
  return upcast ? c.to(t) : c;
}

// Gradients of y = alpha * op(A) @ op(B) (see the derivation in docs/autograd.md).
std::vector<Tensor> gemm_grads(const Tensor& g, const Tensor& a, const Tensor& b, bool ta, bool tb,
                               double alpha, bool batched) {
  auto mm = [batched](const Tensor& x, const Tensor& y, bool tx, bool ty) {
    return batched ? bmm(x, y, tx, ty) : matmul(x, y, tx, ty);
  };
  Tensor ga = ta ? mm(b, g, tb, true) : mm(g, b, false, !tb);
  Tensor gb = tb ? mm(g, a, true, ta) : mm(a, g, !ta, false);
  if (alpha != 1.0) {
    ga = ga * alpha;
    gb = gb * alpha;
  }
  return {ga, gb};
}

}  // namespace

void set_allow_tf32(bool allow) { g_allow_tf32 = allow; }
bool allow_tf32() { return g_allow_tf32.load(); }

Tensor matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  LOWBIT_CHECK(a.defined() && a.dim() == 2 && b.defined() && b.dim() == 2,
               "matmul: wants 2-D operands, got ", a.defined() ? shape_str(a.shape()) : "undefined",
               " and ", b.defined() ? shape_str(b.shape()) : "undefined");
  Tensor y = gemm_raw(a, b, ta, tb, Tensor(), 1.0, 0.0, "matmul");
  if (autograd::any_requires_grad({a, b})) {
    autograd::SavedTensor sa(a, "matmul"), sb(b, "matmul");
    autograd::record("matmul", {a, b}, y, [sa, sb, ta, tb](const Tensor& g) {
      return gemm_grads(g, sa.unpack(), sb.unpack(), ta, tb, 1.0, false);
    });
  }
  return y;
}

Tensor bmm(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  LOWBIT_CHECK(a.defined() && a.dim() == 3 && b.defined() && b.dim() == 3,
               "bmm: wants 3-D operands (B, M, K), got ",
               a.defined() ? shape_str(a.shape()) : "undefined", " and ",
               b.defined() ? shape_str(b.shape()) : "undefined");
  Tensor y = gemm_raw(a, b, ta, tb, Tensor(), 1.0, 0.0, "bmm");
  if (autograd::any_requires_grad({a, b})) {
    autograd::SavedTensor sa(a, "bmm"), sb(b, "bmm");
    autograd::record("bmm", {a, b}, y, [sa, sb, ta, tb](const Tensor& g) {
      return gemm_grads(g, sa.unpack(), sb.unpack(), ta, tb, 1.0, true);
    });
  }
  return y;
}

Tensor addmm(const Tensor& c, const Tensor& a, const Tensor& b, double beta, double alpha, bool ta,
             bool tb) {
  LOWBIT_CHECK(c.defined(), "addmm: the added tensor c is undefined");
  LOWBIT_CHECK(a.defined() && a.dim() == 2 && b.defined() && b.dim() == 2,
               "addmm: wants 2-D a and b, got ", a.defined() ? shape_str(a.shape()) : "undefined",
               " and ", b.defined() ? shape_str(b.shape()) : "undefined");
  const int64_t m = ta ? a.size(1) : a.size(0);
  const int64_t n = tb ? b.size(0) : b.size(1);
  const Shape out_shape{m, n};
  bool bias_ok = c.dim() <= 2;
  for (int64_t i = 1; bias_ok && i <= c.dim(); ++i) {
    bias_ok = c.size(-i) == out_shape[size_t(2 - i)] || c.size(-i) == 1;
  }
  LOWBIT_CHECK(bias_ok, "addmm: bias of shape ", c.shape(), " does not broadcast to the product's ",
               out_shape, " (", a.shape(), (ta ? "^T" : ""), " @ ", b.shape(), (tb ? "^T" : ""),
               ")");
  Tensor c_full = c.detach().expand(out_shape);
  Tensor y = gemm_raw(a, b, ta, tb, c_full, alpha, beta, "addmm");
  if (autograd::any_requires_grad({c, a, b})) {
    autograd::SavedTensor sa(a, "addmm"), sb(b, "addmm");
    Shape c_shape = c.shape();
    DType c_dtype = c.dtype();
    autograd::record("addmm", {c, a, b}, y, [=](const Tensor& g) {
      auto gr = gemm_grads(g, sa.unpack(), sb.unpack(), ta, tb, alpha, false);
      return std::vector<Tensor>{(sum_to(g, c_shape) * beta).to(c_dtype), gr[0], gr[1]};
    });
  }
  return y;
}

}  // namespace lowbit
