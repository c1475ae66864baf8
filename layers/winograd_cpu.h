// lowbit's own CPU convolutions: Winograd F(2x2, 3x3) and F(4x4, 3x3) (Lavin and Gray, 2016) for
// dense 3x3, stride-1, padding-1 f32 convolutions on NHWC activations with KRSC weights: forward,
// data gradient and weight gradient, written with AVX-512 intrinsics.
//
// Why hand-written: oneDNN's Winograd (F(4x4, 3x3)) materialises its transformed tensors (2.25x
// the activations) in a blocked layout, and the reorders to and from NHWC eat what it saves in a
// training step (docs/benchmarks.md). Here each thread transforms a block of 8 tiles into a
// buffer that stays in L1, multiplies it by the transformed filters and transforms it back
// straight into the NHWC output: no tensor besides the input and output is written. F(2x2, 3x3)
// needs 2.25x fewer multiplies than the direct sum, F(4x4, 3x3) 4x. docs/benchmarks.md has the
// timings, docs/design.md ("CPU convolutions") the design.
//
// Applies to channel counts that are multiples of 16 on CPUs with AVX-512F; conv2d.cpp falls
// back to oneDNN elsewhere. The results differ from the direct sum by rounding only: F(2x2, 3x3)
// by about twice the direct sum's error, F(4x4, 3x3) (coefficients up to 8 and 1/15) by 5-20
// times it, about 1-3e-6 of the largest output (tests compare both against naive loops in
// double). Forward and data gradient are the same for any thread count; the weight gradient sums
// per-thread partials in thread order, so it depends on the thread count only.
#pragma once

#include <cstdint>

namespace lowbit::layers::detail {

// True when the CPU executing this has AVX-512F.
bool wino_cpu_supported();
// True for a convolution these kernels compute: 3x3, stride 1, padding 1, dilation 1, groups 1,
// c and k multiples of 16 (and the CPU supported).
bool wino_applies(int64_t c, int64_t k, int64_t r, int64_t s, int64_t stride_h, int64_t stride_w,
                  int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w, int64_t groups);

// `tile` is the output tile: 2 for F(2x2, 3x3), 4 for F(4x4, 3x3).
// x (n, h, w, c), weight (k, 3, 3, c), bias (k) or null, y (n, h, w, k); all contiguous f32.
void wino_forward(int tile, const float* x, const float* weight, const float* bias, float* y,
                  int64_t n, int64_t h, int64_t w, int64_t c, int64_t k);
// dx (n, h, w, c) from dy (n, h, w, k): the forward on dy with the filters rotated by 180
// degrees and their channel axes swapped.
void wino_backward_data(int tile, const float* dy, const float* weight, float* dx, int64_t n,
                        int64_t h, int64_t w, int64_t c, int64_t k);
// dweight (k, 3, 3, c) and, when dbias is not null, dbias (k) from x and dy.
void wino_backward_weights(int tile, const float* x, const float* dy, float* dweight, float* dbias,
                           int64_t n, int64_t h, int64_t w, int64_t c, int64_t k);

}  // namespace lowbit::layers::detail
