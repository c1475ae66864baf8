// lowbit's own CPU convolution: Winograd F(2x2, 3x3) (Lavin and Gray, 2016) for dense 3x3,
// stride-1, padding-1 f32 convolutions on NHWC activations with KRSC weights, forward, data
// gradient and weight gradient, written with AVX-512 intrinsics.
//
// Why hand-written: oneDNN's Winograd (F(4x4, 3x3)) materialises its transformed tensors (2.25x
// the activations) in a blocked layout, and the reorders to and from NHWC eat what it saves in a
// training step (docs/benchmarks.md). Here each thread transforms a block of 16 tiles into a
// buffer that stays in L1/L2, multiplies it by the transformed filters and transforms it back
// straight into the NHWC output: 2.25x fewer multiplies than the direct sum and no tensor besides
// the input and output. docs/benchmarks.md, "lowbit's Winograd F(2x2, 3x3)", has the timings.
//
// Applies to channel counts that are multiples of 16 on CPUs with AVX-512F; conv2d.cpp falls
// back to oneDNN elsewhere. The results differ from the direct sum by rounding only (the
// transforms add and subtract up to 4 terms before and after the channel sums; tests compare
// against naive loops). Forward and data gradient are the same for any thread count; the weight
// gradient sums per-thread partials in thread order, so it depends on the thread count only.
#pragma once

#include <cstdint>

namespace lowbit::layers::detail {

// True when the CPU executing this has AVX-512F.
bool wino_f2_cpu_supported();
// True for a convolution this kernel computes: 3x3, stride 1, padding 1, dilation 1, groups 1,
// c and k multiples of 16 (and the CPU supported).
bool wino_f2_applies(int64_t c, int64_t k, int64_t r, int64_t s, int64_t stride_h,
                     int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
                     int64_t groups);

// x (n, h, w, c), weight (k, 3, 3, c), bias (k) or null, y (n, h, w, k); all contiguous f32.
void wino_f2_forward(const float* x, const float* weight, const float* bias, float* y, int64_t n,
                     int64_t h, int64_t w, int64_t c, int64_t k);
// dx (n, h, w, c) from dy (n, h, w, k): the forward on dy with the filters rotated by 180
// degrees and their channel axes swapped.
void wino_f2_backward_data(const float* dy, const float* weight, float* dx, int64_t n, int64_t h,
                           int64_t w, int64_t c, int64_t k);
// dweight (k, 3, 3, c) and, when dbias is not null, dbias (k) from x and dy.
void wino_f2_backward_weights(const float* x, const float* dy, float* dweight, float* dbias,
                              int64_t n, int64_t h, int64_t w, int64_t c, int64_t k);

}  // namespace lowbit::layers::detail
