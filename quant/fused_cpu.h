// The fused elementwise machinery, CPU half (include from .cpp files only: it uses OpenMP, which
// nvcc's host pass is not given): CpuLaunch runs an op of quant/fused.h over a contiguous tensor.
// Every channel is bound once (op.channel(c)); the elements are then walked as runs of one
// channel (a whole chunk for per-tensor, `inner` elements for per-channel), so the inner loop
// works on a struct in registers and vectorises; per-channel along the last axis (inner = 1,
// channels-last activations) goes row by row, channel by channel. Elementwise passes run over
// parallel chunks of the linear index. The backward with parameter gradients splits the elements
// into fixed blocks (cpu_reduce_blocks: the count depends on the sizes only), sums each block's
// terms in double per channel, and adds the block partials in block order, so the result does not
// depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/parallel.h"
#include "quant/fused.h"

namespace lowbit::quant {

// Number of fixed blocks the CPU reduction splits n elements of C channels into: about 16k
// elements each, at most 256, and at most 2^22 / C so the partials stay small.
inline int64_t cpu_reduce_blocks(int64_t n, int64_t c) {
  int64_t b = (n + 16383) / 16384;
  b = std::min<int64_t>(b, 256);
  b = std::min<int64_t>(b, std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(c, 1)));
  return std::max<int64_t>(b, 1);
}

struct CpuLaunch {
  static constexpr int64_t kReduceTile = 256;
  static constexpr int64_t kMinRun = 16;  // shorter runs of one channel go element by element

  // y[i] = op.channel(c).forward(x[i]); x, y contiguous of dtype T.
  template <typename T, typename Op>
  static void forward(const Tensor& x, const Tensor& y, const ChannelLayout& l, const Op& op) {
    using A = quant_acc_t<T>;
    const auto chans = bind(op, l.channels);
    const T* px = static_cast<const T*>(x.raw_data());
    T* py = static_cast<T*>(y.raw_data());
    if (l.inner == 1 && l.channels > 1) {  // per-channel along the last axis: rows x channels
      const int64_t C = l.channels;
      core::for_each_chunk(
          l.outer,
          [&](int64_t r0, int64_t r1) {
            const typename Op::Channel* __restrict k = chans.data();
            for (int64_t r = r0; r < r1; ++r) {
              const T* __restrict xs = px + r * C;
              T* __restrict ys = py + r * C;
              for (int64_t c = 0; c < C; ++c) ys[c] = T(k[c].forward(A(opmath_t<T>(xs[c]))));
            }
          },
          std::max<int64_t>(1, core::kParallelGrain / C));
      return;
    }
    core::for_each_chunk(l.numel(), [&](int64_t b, int64_t e) {
      if (l.inner < kMinRun && l.channels > 1) {  // short runs of one channel
        for_each_element(l, b, e, [&](int64_t i, int64_t c) {
          py[i] = T(chans[size_t(c)].forward(A(opmath_t<T>(px[i]))));
        });
        return;
      }
      for_each_run(l, b, e, [&](int64_t i0, int64_t i1, int64_t c) {
        const typename Op::Channel k = chans[size_t(c)];
        const T* __restrict xs = px;
        T* __restrict ys = py;
        for (int64_t i = i0; i < i1; ++i) ys[i] = T(k.forward(A(opmath_t<T>(xs[i]))));
      });
    });
  }

  // dx[i] = op.channel(c).backward(x[i], dy[i], ...) (skipped when dx is undefined); when
  // `grads` (acc dtype, (kTerms, C)) is defined, grads[k][c] = op.finish(k, c, sum over channel c
  // of term k).
  template <typename T, typename Op>
  static void backward(const Tensor& x, const Tensor& dy, const Tensor& dx, const Tensor& grads,
                       const ChannelLayout& l, const Op& op) {
    using A = quant_acc_t<T>;
    constexpr int K = Op::kTerms;
    const auto chans = bind(op, l.channels);
    const T* px = static_cast<const T*>(x.raw_data());
    const T* pg = static_cast<const T*>(dy.raw_data());
    T* pdx = dx.defined() ? static_cast<T*>(dx.raw_data()) : nullptr;
    auto map = [&] {
      if (pdx == nullptr) return;
      if (l.inner == 1 && l.channels > 1) {  // rows x channels, as in forward
        const int64_t C = l.channels;
        core::for_each_chunk(
            l.outer,
            [&](int64_t r0, int64_t r1) {
              const typename Op::Channel* __restrict k = chans.data();
              for (int64_t i = r0 * C; i < r1 * C; i += C) {
                for (int64_t c = 0; c < C; ++c) {
                  A t[K > 0 ? K : 1];
                  pdx[i + c] =
                      T(k[c].backward(A(opmath_t<T>(px[i + c])), A(opmath_t<T>(pg[i + c])), t));
                }
              }
            },
            std::max<int64_t>(1, core::kParallelGrain / C));
        return;
      }
      core::for_each_chunk(l.numel(), [&](int64_t b, int64_t e) {
        if (l.inner < kMinRun && l.channels > 1) {
          for_each_element(l, b, e, [&](int64_t i, int64_t c) {
            A t[K > 0 ? K : 1];
            pdx[i] = T(chans[size_t(c)].backward(A(opmath_t<T>(px[i])), A(opmath_t<T>(pg[i])), t));
          });
          return;
        }
        for_each_run(l, b, e, [&](int64_t i0, int64_t i1, int64_t c) {
          const typename Op::Channel k = chans[size_t(c)];
          const T* __restrict xs = px;
          const T* __restrict gs = pg;
          T* __restrict ds = pdx;
          for (int64_t i = i0; i < i1; ++i) {
            A t[K > 0 ? K : 1];
            ds[i] = T(k.backward(A(opmath_t<T>(xs[i])), A(opmath_t<T>(gs[i])), t));
          }
        });
      });
    };
    if constexpr (K == 0) {
      (void)grads;
      map();
    } else {
      if (grads.defined())
        reduce<T>(px, pg, pdx, grads, l, op, chans);
      else
        map();
    }
  }

  // Calls op(i) for i in [0, n) (per-channel parameter math: qparams, scale rounding).
  template <typename Op>
  static void channels(Device, int64_t n, const Op& op) {
    for (int64_t i = 0; i < n; ++i) op(i);
  }

 private:
  template <typename Op>
  static std::vector<typename Op::Channel> bind(const Op& op, int64_t channels) {
    std::vector<typename Op::Channel> out;
    out.reserve(size_t(channels));
    for (int64_t c = 0; c < channels; ++c) out.push_back(op.channel(c));
    return out;
  }

  // Calls f(i, c) for every element i of [b, e) with its channel c (for short runs).
  template <typename F>
  static void for_each_element(const ChannelLayout& l, int64_t b, int64_t e, const F& f) {
    int64_t c = (b / l.inner) % l.channels, r = b % l.inner;
    for (int64_t i = b; i < e; ++i) {
      f(i, c);
      if (++r == l.inner) {
        r = 0;
        if (++c == l.channels) c = 0;
      }
    }
  }

  // Calls f(i0, i1, c) for the runs [i0, i1) of one channel c that make up [b, e).
  template <typename F>
  static void for_each_run(const ChannelLayout& l, int64_t b, int64_t e, const F& f) {
    if (l.channels == 1) {
      f(b, e, int64_t(0));
      return;
    }
    int64_t c = (b / l.inner) % l.channels;
    for (int64_t i = b; i < e;) {
      const int64_t end = std::min(e, (i / l.inner + 1) * l.inner);
      f(i, end, c);
      i = end;
      if (++c == l.channels) c = 0;
    }
  }

  template <typename T, typename Op>
  static void reduce(const T* px, const T* pg, T* pdx, const Tensor& grads, const ChannelLayout& l,
                     const Op& op, const std::vector<typename Op::Channel>& chans) {
    using A = quant_acc_t<T>;
    constexpr int K = Op::kTerms;
    const int64_t n = l.numel(), C = l.channels;
    const int64_t blocks = cpu_reduce_blocks(n, C);
    const int64_t chunk = (n + blocks - 1) / blocks;
    std::vector<double> partial(size_t(blocks * K * C), 0.0);
    if (l.inner == 1 && C > 1) {
      // Per-channel along the last axis: each block is whole rows, whose terms go straight into
      // the block's per-channel sums, rows in order (a fixed order per block).
      const int64_t rchunk = (l.outer + blocks - 1) / blocks;
#pragma omp parallel for schedule(static) if (blocks > 1)
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t q0 = b * rchunk, q1 = std::min(l.outer, q0 + rchunk);
        double* __restrict acc = partial.data() + b * K * C;
        const typename Op::Channel* __restrict k = chans.data();
        for (int64_t i = q0 * C; i < q1 * C; i += C) {
          for (int64_t c = 0; c < C; ++c) {
            A t[K];
            const A g = k[c].backward(A(opmath_t<T>(px[i + c])), A(opmath_t<T>(pg[i + c])), t);
            if (pdx) pdx[i + c] = T(g);
            for (int j = 0; j < K; ++j) acc[j * C + c] += double(t[j]);
          }
        }
      }
      finish_reduce<A>(grads, op, partial, blocks, C);
      return;
    }
#pragma omp parallel for schedule(static) if (blocks > 1)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i0 = b * chunk, i1 = std::min(n, i0 + chunk);
      if (i0 >= i1) continue;
      double* acc = partial.data() + b * K * C;
      for_each_run(l, i0, i1, [&](int64_t r0, int64_t r1, int64_t c) {
        const typename Op::Channel k = chans[size_t(c)];
        // Tiles: the elementwise part fills buffers (a loop that vectorises), then the terms are
        // summed in double into four interleaved accumulators (a fixed order, four times the
        // throughput of one dependency chain).
        double sums[K][4] = {};
        for (int64_t t0 = r0; t0 < r1; t0 += kReduceTile) {
          const int64_t m = std::min(kReduceTile, r1 - t0);
          A gbuf[kReduceTile];
          A tbuf[K][kReduceTile];
          const T* __restrict xs = px + t0;
          const T* __restrict gs = pg + t0;
          for (int64_t i = 0; i < m; ++i) {
            A t[K];
            gbuf[i] = k.backward(A(opmath_t<T>(xs[i])), A(opmath_t<T>(gs[i])), t);
            for (int j = 0; j < K; ++j) tbuf[j][i] = t[j];
          }
          if (pdx) {
            T* __restrict ds = pdx + t0;
            for (int64_t i = 0; i < m; ++i) ds[i] = T(gbuf[i]);
          }
          for (int j = 0; j < K; ++j) {
            for (int64_t i = 0; i < m; ++i) sums[j][i & 3] += double(tbuf[j][i]);
          }
        }
        for (int j = 0; j < K; ++j) {
          acc[j * C + c] += (sums[j][0] + sums[j][1]) + (sums[j][2] + sums[j][3]);
        }
      });
    }
    finish_reduce<A>(grads, op, partial, blocks, C);
  }

  // grads[j][c] = op.finish(j, c, the block partials of term j, channel c, added in block order).
  template <typename A, typename Op>
  static void finish_reduce(const Tensor& grads, const Op& op, const std::vector<double>& partial,
                            int64_t blocks, int64_t C) {
    constexpr int K = Op::kTerms;
    A* out = static_cast<A*>(grads.raw_data());
    for (int j = 0; j < K; ++j) {
      for (int64_t c = 0; c < C; ++c) {
        double s = 0.0;
        for (int64_t b = 0; b < blocks; ++b) s += partial[size_t((b * K + j) * C + c)];
        out[j * C + c] = op.finish(j, c, s);
      }
    }
  }
};

}  // namespace lowbit::quant
