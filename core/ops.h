// The basic ops of core/: elementwise (with broadcasting), casts, reductions, matmul, softmax
// and indexing. Every op runs on CPU and CUDA with one semantics, records its backward when an
// input requires grad, and throws lowbit::Error naming the op, shapes and dtypes on bad input.
// Binary ops promote dtypes (core/dtype.h, promote_types); comparisons return u8 (0 or 1).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace lowbit {

// --- unary ---
Tensor neg(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor sign(const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor square(const Tensor& x);
Tensor reciprocal(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor pow(const Tensor& x, double exponent);
Tensor clamp(const Tensor& x, double lo, double hi);
Tensor add(const Tensor& x, double s);
// relu(a + b) in one pass, with broadcasting; the gradient of both is g where the output is > 0.
Tensor add_relu(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& x, double s);

// --- binary, broadcasting ---
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
// cond (u8, nonzero = take a) broadcast with a and b.
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, double s);
Tensor operator-(const Tensor& a, double s);
Tensor operator*(const Tensor& a, double s);
Tensor operator/(const Tensor& a, double s);
Tensor operator+(double s, const Tensor& a);
Tensor operator-(double s, const Tensor& a);
Tensor operator*(double s, const Tensor& a);

// In place (not differentiable; bump the storage version so saved tensors notice).
Tensor& add_(Tensor& self, const Tensor& other, double alpha = 1.0);
Tensor& mul_(Tensor& self, double s);

// Broadcast result shape of two shapes; throws naming both.
Shape broadcast_shapes(const Shape& a, const Shape& b);
// Sums `grad` down to `shape` (the reverse of broadcasting).
Tensor sum_to(const Tensor& grad, const Shape& shape);

// --- reductions over any dims (empty dims = all), accumulated in double (int64 for ints) ---
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
// Variance with Bessel's correction when unbiased (PyTorch's default).
Tensor var(const Tensor& x, const std::vector<int64_t>& dims = {}, bool unbiased = true,
           bool keepdim = false);
Tensor amax(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor amin(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);  // i64; first of ties
Tensor argmin(const Tensor& x, int64_t dim, bool keepdim = false);

// --- matrix products (OpenBLAS on CPU, cuBLAS on CUDA) ---
// a (M, K) or (K, M) when trans_a; b (K, N) or (N, K) when trans_b.
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// Batched: a (B, M, K), b (B, K, N) (with the same transposes).
Tensor bmm(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);
// beta * c + alpha * op(a) @ op(b); c broadcasts to (M, N).
Tensor addmm(const Tensor& c, const Tensor& a, const Tensor& b, double beta = 1.0,
             double alpha = 1.0, bool trans_a = false, bool trans_b = false);
// TF32 tensor-core math for f32 matmuls on CUDA (off by default, as PyTorch's matmul).
void set_allow_tf32(bool allow);
bool allow_tf32();

// --- softmax ---
Tensor softmax(const Tensor& x, int64_t dim = -1);
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

// --- indexing ---
// Indices (i32 or i64) must lie in [0, size along dim). Out of range: on the CPU every index is
// checked first and the op throws naming the first bad one and its position (nothing is
// written). On CUDA checking would cost a device-to-host copy and a sync per call, so the
// kernels define the result instead and never touch memory outside the tensors: gather and
// index_select write 0 where the index is bad (the element map both backends share,
// core/index_math.h), scatter_add and one_hot skip that element. Validate indices that come
// from untrusted data on the CPU.
// out[..., j, ...] = x[..., index[..., j, ...], ...] along dim; index has x's shape except
// along dim.
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
// self + scatter of src along dim: out[..., index[i], ...] += src[..., i, ...]; index and src
// share a shape that matches self's except along dim.
Tensor scatter_add(const Tensor& self, int64_t dim, const Tensor& index, const Tensor& src);
// Picks entries of a 1-D index along dim.
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
// (..., num_classes) of dtype opts.dtype; index of i32/i64 in [0, num_classes).
Tensor one_hot(const Tensor& index, int64_t num_classes, DType dtype = DType::f32);

// --- misc ---
Tensor cast(const Tensor& x, DType dtype);
// Largest |a - b| (as double) and whether every element satisfies |a-b| <= atol + rtol*|b|.
bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8);

}  // namespace lowbit
