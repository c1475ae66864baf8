// Winograd F(2x2, 3x3) and F(4x4, 3x3) on the CPU (winograd_cpu.h). With g a 3x3 filter, d an
// (m+2) x (m+2) input tile and Y its m x m output tile (Lavin and Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016):
//   Y = A^T [ (G g G^T) .* (B^T d B) ] A,  summed over input channels inside the brackets.
// Per transformed position p ((m+2)^2 of them) the channel sum is a matrix product
//   M[p](tiles x cout) = V[p](tiles x cin) * U[p](cin x cout),
// and the weight gradient follows from the same identity: with dM = A dY A^T per tile,
//   dU[p] = sum over tiles V[p]^T dM[p],  dg = G^T dU G.
// The data gradient is the forward on dy with the filters rotated by 180 degrees and the channel
// axes swapped (stride 1, padding 1). The matrices are in Wino<m> below; every transform is
// written once, as linear combinations whose constant coefficients the compiler folds (0 drops a
// term, +-1 is an add or a subtraction).
#include "layers/winograd_cpu.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace lowbit::layers::detail {

namespace {

// The transform matrices of F(m x m, 3 x 3): BT (a x a), AT (m x a), G (a x 3), a = m + 2.
template <int M>
struct Wino;
template <>
struct Wino<2> {  // interpolation points 0, 1, -1 (and infinity)
  static constexpr int m = 2, a = 4;
  static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
  static constexpr float G[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
};
template <>
struct Wino<4> {
  // Interpolation points 0, -1, 1, 1/2, -2 (and infinity): 2-3x less rounding error than Lavin and
  // Gray's 0, +-1, +-2 at the same cost (the better-conditioned set of Barabasz et al., "Error
  // analysis and improving the accuracy of Winograd convolution for deep neural networks", 2020;
  // measured here with the test harness). Derived with the Toom-Cook construction: A^T[i][j] =
  // p_j^i, G[j][k] = p_j^k / prod_{l != j}(p_j - p_l), B^T solving the 1-D correlation identity.
  static constexpr int m = 4, a = 6;
  static constexpr float BT[6][6] = {{1, -1.5f, -2, 1.5f, 1, 0}, {0, 1, -2.5f, 0.5f, 1, 0},
                                     {0, -1, 0.5f, 2.5f, 1, 0},  {0, -2, -1, 2, 1, 0},
                                     {0, 0.5f, -1, -0.5f, 1, 0}, {0, 1, -1.5f, -2, 1.5f, 1}};
  static constexpr float AT[4][6] = {{1, 1, 1, 1, 1, 0},
                                     {0, -1, 1, 0.5f, -2, 0},
                                     {0, 1, 1, 0.25f, 4, 0},
                                     {0, -1, 1, 0.125f, -8, 1}};
  static constexpr float G[6][3] = {{1, 0, 0},
                                    {-1.0f / 3, 1.0f / 3, -1.0f / 3},
                                    {1.0f / 3, 1.0f / 3, 1.0f / 3},
                                    {-16.0f / 15, -8.0f / 15, -4.0f / 15},
                                    {1.0f / 15, -2.0f / 15, 4.0f / 15},
                                    {0, 0, 1}};
};

constexpr int64_t kRows = 8;    // tiles per block, forward and data gradient
constexpr int64_t kRowsW = 24;  // tiles per block, weight gradient (fewer accumulator loads)

// The tiling of an (n, h, w) map into m x m output tiles, row-major in (n, tile row, tile col).
struct Geo {
  int64_t n, h, w, m, th, tw, tiles;
  Geo(int64_t n_, int64_t h_, int64_t w_, int64_t m_)
      : n(n_),
        h(h_),
        w(w_),
        m(m_),
        th((h_ + m_ - 1) / m_),
        tw((w_ + m_ - 1) / m_),
        tiles(n_ * th * tw) {}
};

// Walks tiles in order from tile t without a division per tile.
struct TileCursor {
  int64_t nn, ty, tx;
  TileCursor(const Geo& g, int64_t t)
      : nn(t / (g.th * g.tw)), ty((t % (g.th * g.tw)) / g.tw), tx(t % g.tw) {}
  void next(const Geo& g) {
    if (++tx == g.tw) {
      tx = 0;
      if (++ty == g.th) {
        ty = 0;
        ++nn;
      }
    }
  }
};

// Scratch: a CPU tensor, so it comes from the CPU caching allocator (core/caching_allocator.h):
// 64-byte aligned (whole cache lines per vector store), reused from call to call without page
// faults, and an allocation failure is its error. Allocated on the calling thread, outside the
// OpenMP regions, which an exception must not leave.
Tensor scratch(size_t floats) { return empty({int64_t(floats)}); }
float* ptr(const Tensor& t) { return static_cast<float*>(t.raw_data()); }

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < ni, j < nj, in 16 x 16 blocks (a
// block's 16 source and 16 destination rows stay in L1).
void transpose(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int64_t ni,
               int64_t nj) {
  for (int64_t i0 = 0; i0 < ni; i0 += 16) {
    for (int64_t j0 = 0; j0 < nj; j0 += 16) {
      const int64_t i1 = std::min(ni, i0 + 16), j1 = std::min(nj, j0 + 16);
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = i0; i < i1; ++i) dst[j * dst_stride + i] = src[i * src_stride + j];
    }
  }
}

// ------------------------------------------------------------------ AVX-512 (runtime-checked)
// Only these functions are compiled for AVX-512F; they use raw pointers and intrinsics only, so
// no template shared with the rest of the program is instantiated with AVX-512 code. Clang
// ignores GCC's target pragma (scripts/fuzz.sh builds with clang): its attribute pragma does the
// same, lambdas' call operators included.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f")
#endif

// sum_n c[n] * x[n * xs] for N constant coefficients (the compiler folds the tests once the loop
// is unrolled): zero terms dropped, the first +1 term starts the sum, other +-1 terms are an add
// or a subtraction, the rest an FMA.
template <int N>
inline __m512 lincomb(const float* c, const __m512* x, int xs) {
  int first = -1;
#pragma GCC unroll 8
  for (int n = 0; n < N; ++n) {
    if (first < 0 && c[n] == 1.0f) first = n;
  }
  __m512 acc = first >= 0 ? x[first * xs] : _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int n = 0; n < N; ++n) {
    if (n == first || c[n] == 0.0f) continue;
    if (c[n] == 1.0f) {
      acc = _mm512_add_ps(acc, x[n * xs]);
    } else if (c[n] == -1.0f) {
      acc = _mm512_sub_ps(acc, x[n * xs]);
    } else {
      acc = _mm512_fmadd_ps(_mm512_set1_ps(c[n]), x[n * xs], acc);
    }
  }
  return acc;
}

// out = L x R^T for an (RL x N) matrix L and an (RR x N) matrix R, x N x N:
// store(i, j, sum_k sum_l L[i][k] x(k, l) R[j][l]) for i < RL, j < RR. x is read a column at a
// time and each result stored as soon as it is ready, so that few vectors are live at once.
template <int RL, int RR, int N, typename Load, typename Store>
inline void sandwich(const float (&L)[RL][N], const float (&R)[RR][N], const Load& x,
                     const Store& store) {
  __m512 t[RL][N];  // L x
#pragma GCC unroll 8
  for (int l = 0; l < N; ++l) {
    __m512 col[N];
#pragma GCC unroll 8
    for (int k = 0; k < N; ++k) col[k] = x(k, l);
#pragma GCC unroll 8
    for (int i = 0; i < RL; ++i) t[i][l] = lincomb<N>(L[i], col, 1);
  }
#pragma GCC unroll 8
  for (int i = 0; i < RL; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < RR; ++j) store(i, j, lincomb<N>(R[j], t[i], 1));
}

// One input channel's U = G g G^T for all cout filters: g holds the 9 taps as rows of cout
// (tap[ci][r][s][.]), blk gets the a*a positions as rows of cout. cout is a multiple of 16.
template <int M>
void filter_block(const float* g, int64_t cout, float* blk) {
  using W = Wino<M>;
  // G g G^T: the 3 x 3 taps between G (a x 3) on both sides.
  for (int64_t co = 0; co < cout; co += 16) {
    sandwich(
        W::G, W::G, [&](int r, int s) { return _mm512_loadu_ps(g + (r * 3 + s) * cout + co); },
        [&](int i, int j, __m512 u) { _mm512_storeu_ps(blk + (i * W::a + j) * cout + co, u); });
  }
}

// The transpose of an R x C matrix, as constexpr data for the gradient transforms.
template <int R, int C>
struct Transposed {
  float v[C][R];
  constexpr explicit Transposed(const float (&x)[R][C]) : v{} {
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < C; ++j) v[j][i] = x[i][j];
  }
};
template <int M>
struct WinoT {
  static constexpr Transposed<Wino<M>::m, Wino<M>::a> A{Wino<M>::AT};  // A (a x m)
  static constexpr Transposed<Wino<M>::a, 3> GT{Wino<M>::G};           // G^T (3 x a)
};

// dg = G^T dU G for input channel cc and all k filters: du[p][c][k] summed, out gets the 9 taps
// as rows of k (out[r][s][kk]). k is a multiple of 16.
template <int M>
void weight_grad_block(const float* du, int64_t c, int64_t k, int64_t cc, float* out) {
  using W = Wino<M>;
  for (int64_t kk = 0; kk < k; kk += 16) {
    sandwich(
        WinoT<M>::GT.v, WinoT<M>::GT.v,
        [&](int i, int j) { return _mm512_loadu_ps(du + ((i * W::a + j) * c + cc) * k + kk); },
        [&](int r, int s, __m512 o) { _mm512_storeu_ps(out + (r * 3 + s) * k + kk, o); });
  }
}

// V = B^T d B for one tile, pixel (i, j) at px(i, j) (cin floats; a zero row for the padding),
// into v's row at dst (input_block's layout, `pstride` floats between positions).
template <int M, typename Pixel>
inline void input_tile(const Pixel& px, int64_t cin, int64_t rows, int64_t pstride, float* dst) {
  using W = Wino<M>;
  constexpr int a = W::a;
  for (int64_t c0 = 0; c0 < cin; c0 += 16) {
    float* o = dst + c0 * rows;
    sandwich(
        W::BT, W::BT, [&](int i, int j) { return _mm512_loadu_ps(px(i, j) + c0); },
        [&](int i, int j, __m512 v) { _mm512_storeu_ps(o + (i * a + j) * pstride, v); });
  }
}

// table[i * N + j] = the pixel (y0 + i, x0 + j) of image nn of `t` (n, h, w, ch), or `zeros`
// (ch zeros) where that is outside the map or the tile is not real (`real` false: past count).
template <int N>
inline void patch_table(const float* t, const Geo& g, int64_t ch, int64_t nn, int64_t y0,
                        int64_t x0, bool real, const float* zeros, const float** table) {
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < N; ++j) {
      const int64_t yy = y0 + i, xx = x0 + j;
      const bool inside = real && yy >= 0 && yy < g.h && xx >= 0 && xx < g.w;
      table[i * N + j] = inside ? t + ((nn * g.h + yy) * g.w + xx) * ch : zeros;
    }
  }
}

// The input tiles [t0, t0 + count) of `in` (n, h, w, cin) into v[p][ci / 16][row][ci % 16]: blocks
// of 16 channels, so that the rows' values of one channel are 64 bytes apart (the GEMMs below
// broadcast them at constant offsets from one pointer). Pixels in the padding read `zeros` (cin
// zeros); rows past count get zeros.
template <int M>
void input_block(const float* in, const Geo& g, int64_t cin, int64_t t0, int64_t count,
                 int64_t rows, const float* zeros, float* v) {
  constexpr int a = Wino<M>::a;
  const int64_t pstride = rows * cin;
  TileCursor tc(g, t0);
  for (int64_t row = 0; row < rows; ++row, tc.next(g)) {
    const int64_t y0 = M * tc.ty - 1, x0 = M * tc.tx - 1;
    float* dst = v + row * 16;
    if (row < count && y0 >= 0 && y0 + a <= g.h && x0 >= 0 && x0 + a <= g.w) {
      // Inside the map: every pixel address from one base (a table costs more than the
      // transform at 16 channels).
      const float* base = in + ((tc.nn * g.h + y0) * g.w + x0) * cin;
      const int64_t rstride = g.w * cin;
      input_tile<M>([&](int i, int j) { return base + i * rstride + j * cin; }, cin, rows, pstride,
                    dst);
    } else {
      const float* src[a * a];
      patch_table<a>(in, g, cin, tc.nn, y0, x0, row < count, zeros, src);
      input_tile<M>([&](int i, int j) { return src[i * a + j]; }, cin, rows, pstride, dst);
    }
  }
}

// The output gradient tiles [t0, t0 + count) of dy (n, h, w, cout) as dM = A dY A^T into
// d[p][row][co]; outputs past the map's edge and rows past count are zeros.
template <int M>
void grad_block(const float* dy, const Geo& g, int64_t cout, int64_t t0, int64_t count,
                int64_t rows, const float* zeros, float* d) {
  constexpr int a = Wino<M>::a;
  const int64_t pstride = rows * cout;
  TileCursor tc(g, t0);
  for (int64_t row = 0; row < rows; ++row, tc.next(g)) {
    const float* src[M * M];
    patch_table<M>(dy, g, cout, tc.nn, M * tc.ty, M * tc.tx, row < count, zeros, src);
    float* dst = d + row * cout;
    for (int64_t c0 = 0; c0 < cout; c0 += 16) {
      sandwich(
          WinoT<M>::A.v, WinoT<M>::A.v,
          [&](int i, int j) { return _mm512_loadu_ps(src[i * M + j] + c0); },
          [&](int i, int j, __m512 v) { _mm512_storeu_ps(dst + (i * a + j) * pstride + c0, v); });
    }
  }
}

// Y = A^T M A (+ bias) for the tiles [t0, t0 + count) from m[p][row][co] into out (n, h, w, cout),
// dropping outputs past the map's edge.
template <int M>
void output_block(const float* m, const Geo& g, int64_t cout, int64_t t0, int64_t count,
                  int64_t rows, const float* bias, float* out) {
  constexpr int a = Wino<M>::a;
  const int64_t pstride = rows * cout;
  TileCursor tc(g, t0);
  for (int64_t row = 0; row < count; ++row, tc.next(g)) {
    const int64_t y0 = M * tc.ty, x0 = M * tc.tx;
    const int64_t ny = std::min<int64_t>(M, g.h - y0), nx = std::min<int64_t>(M, g.w - x0);
    float* base = out + ((tc.nn * g.h + y0) * g.w + x0) * cout;
    const float* src = m + row * cout;
    for (int64_t c0 = 0; c0 < cout; c0 += 16) {
      __m512 y[M * M];
      sandwich(
          Wino<M>::AT, Wino<M>::AT,
          [&](int i, int j) { return _mm512_loadu_ps(src + (i * a + j) * pstride + c0); },
          [&](int i, int j, __m512 v) { y[i * M + j] = v; });
      if (bias) {
        const __m512 b = _mm512_loadu_ps(bias + c0);
        for (int q = 0; q < M * M; ++q) y[q] = _mm512_add_ps(y[q], b);
      }
      if (ny == M && nx == M) {
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
          for (int j = 0; j < M; ++j)
            _mm512_storeu_ps(base + (i * g.w + j) * cout + c0, y[i * M + j]);
      } else {
        for (int i = 0; i < ny; ++i)
          for (int j = 0; j < nx; ++j)
            _mm512_storeu_ps(base + (i * g.w + j) * cout + c0, y[i * M + j]);
      }
    }
  }
}

// The register block of both GEMMs: R x KC vectors of 16 floats.
template <int KC, int R>
struct Block {
  __m512 acc[R][KC];

  // acc[r][kc] = 0, or the rows at p (stride floats apart).
  inline void zero() {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int kc = 0; kc < KC; ++kc) acc[r][kc] = _mm512_setzero_ps();
  }
  inline void load(const float* p, int64_t stride) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int kc = 0; kc < KC; ++kc) acc[r][kc] = _mm512_loadu_ps(p + r * stride + 16 * kc);
  }
  inline void store(float* p, int64_t stride) const {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int kc = 0; kc < KC; ++kc) _mm512_storeu_ps(p + r * stride + 16 * kc, acc[r][kc]);
  }
  // acc[r][kc] += a[r * a_stride] * b[16 kc, 16 kc + 16): one rank-1 update, the b vectors loaded
  // once for R rows and each a value broadcast once for KC vectors.
  inline void rank1(const float* a, int64_t a_stride, const float* b) {
    __m512 bv[KC];
#pragma GCC unroll 4
    for (int kc = 0; kc < KC; ++kc) bv[kc] = _mm512_loadu_ps(b + 16 * kc);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * a_stride]);
#pragma GCC unroll 4
      for (int kc = 0; kc < KC; ++kc) acc[r][kc] = _mm512_fmadd_ps(av, bv[kc], acc[r][kc]);
    }
  }
};

// m[row][co] = sum_ci v[row][ci] * u[ci][co] for rows [r0, r0 + R) and co [k0, k0 + 16 KC), v in
// input_block's layout (a tile row's values of one channel 16 floats apart: constant offsets).
template <int KC, int R>
inline void gemm_tile(const float* v, const float* u, float* m, int64_t cin, int64_t cout,
                      int64_t rows, int64_t r0, int64_t k0) {
  Block<KC, R> blk;
  blk.zero();
  for (int64_t cb = 0; cb < cin; cb += 16) {
    const float* vb = v + cb * rows + r0 * 16;
    const float* ub = u + cb * cout + k0;
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j, ub += cout) blk.rank1(vb + j, 16, ub);
  }
  blk.store(m + r0 * cout + k0, cout);
}

// du[ci][co] += sum_row v[row][ci] * d[row][co] for ci [c0, c0 + R) (within one block of 16) and
// co [k0, k0 + 16 KC), v in input_block's layout.
template <int KC, int R>
inline void wgemm_tile(const float* v, const float* d, float* du, int64_t cout, int64_t rows,
                       int64_t c0, int64_t k0) {
  Block<KC, R> blk;
  blk.load(du + c0 * cout + k0, cout);
  const float* vr = v + (c0 / 16) * 16 * rows + c0 % 16;
  const float* dr = d + k0;
  for (int64_t row = 0; row < rows; ++row, vr += 16, dr += cout) blk.rank1(vr, 1, dr);
  blk.store(du + c0 * cout + k0, cout);
}

// Output columns [0, cout) in GEMM register blocks: f(KC, k0) for blocks of 16 KC columns from
// k0, as many 64-wide (KC = 4, 4 rows) as fit, then 32 (8 rows) and 16 (16 rows): 16 vector
// accumulators each. cout is a multiple of 16.
template <typename F>
inline void column_blocks(int64_t cout, const F& f) {
  int64_t k0 = 0;
  for (; k0 + 64 <= cout; k0 += 64) f(std::integral_constant<int, 4>{}, k0);
  if (cout - k0 >= 32) {
    f(std::integral_constant<int, 2>{}, k0);
    k0 += 32;
  }
  if (cout - k0 >= 16) f(std::integral_constant<int, 1>{}, k0);
}

// The forward (or data gradient) over the tile blocks [b0, b1): v holds P * kRows * cin floats,
// m P * kRows * cout; zeros holds cin zeros.
template <int M>
void conv_blocks(const float* in, const float* u, const float* bias, float* out, const Geo& g,
                 int64_t cin, int64_t cout, int64_t b0, int64_t b1, const float* zeros, float* v,
                 float* m) {
  constexpr int P = Wino<M>::a * Wino<M>::a;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t t0 = blk * kRows, count = std::min(kRows, g.tiles - t0);
    input_block<M>(in, g, cin, t0, count, kRows, zeros, v);
    for (int p = 0; p < P; ++p) {
      const float* vp = v + p * kRows * cin;
      const float* up = u + p * cin * cout;
      float* mp = m + p * kRows * cout;
      column_blocks(cout, [&](auto kc, int64_t k0) {
        constexpr int KC = decltype(kc)::value, R = 16 / KC < kRows ? 16 / KC : int(kRows);
        for (int64_t r0 = 0; r0 < kRows; r0 += R)
          gemm_tile<KC, R>(vp, up, mp, cin, cout, kRows, r0, k0);
      });
    }
    output_block<M>(m, g, cout, t0, count, kRows, bias, out);
  }
}

// The weight-gradient partial du[p][ci][co] (accumulated) over the tile blocks [b0, b1): v holds
// P * kRowsW * cin floats, d P * kRowsW * cout; zeros holds max(cin, cout) zeros.
template <int M>
void weight_blocks(const float* x, const float* dy, const Geo& g, int64_t cin, int64_t cout,
                   int64_t b0, int64_t b1, const float* zeros, float* v, float* d, float* du) {
  constexpr int P = Wino<M>::a * Wino<M>::a;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t t0 = blk * kRowsW, count = std::min(kRowsW, g.tiles - t0);
    input_block<M>(x, g, cin, t0, count, kRowsW, zeros, v);
    grad_block<M>(dy, g, cout, t0, count, kRowsW, zeros, d);
    for (int p = 0; p < P; ++p) {
      const float* vp = v + p * kRowsW * cin;
      const float* dp = d + p * kRowsW * cout;
      float* dup = du + p * cin * cout;
      column_blocks(cout, [&](auto kc, int64_t k0) {
        constexpr int KC = decltype(kc)::value, R = 16 / KC;
        for (int64_t c0 = 0; c0 < cin; c0 += R)
          wgemm_tile<KC, R>(vp, dp, dup, cout, kRowsW, c0, k0);
      });
    }
  }
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// The tile size's kernels, chosen once per call.
struct Kernels {
  int m, p;
  void (*filter_block)(const float*, int64_t, float*);
  void (*weight_grad_block)(const float*, int64_t, int64_t, int64_t, float*);
  void (*conv_blocks)(const float*, const float*, const float*, float*, const Geo&, int64_t,
                      int64_t, int64_t, int64_t, const float*, float*, float*);
  void (*weight_blocks)(const float*, const float*, const Geo&, int64_t, int64_t, int64_t, int64_t,
                        const float*, float*, float*, float*);
};
template <int M>
Kernels kernels_of() {
  return {M,
          Wino<M>::a * Wino<M>::a,
          filter_block<M>,
          weight_grad_block<M>,
          conv_blocks<M>,
          weight_blocks<M>};
}
Kernels kernels(int tile) {
  LOWBIT_CHECK(tile == 2 || tile == 4, "winograd (cpu): tile ", tile, " is not 2 or 4");
  LOWBIT_CHECK(wino_cpu_supported(),
               "winograd (cpu): this CPU has no AVX-512F; use cpu_conv: direct");
  return tile == 4 ? kernels_of<4>() : kernels_of<2>();
}

// U = G g G^T for every filter: u[p][ci][co]. The forward's g is weight[co][.][.][ci]; flipped
// (data gradient, ci runs over k and co over c) g[r][s] = weight[ci][2-r][2-s][co]. The taps are
// first laid out as tap[ci][r][s][co], then each ci's P x cout block of U is computed along co
// (vectorised) into a small buffer and copied row by row: no loop walks many arrays 16 KiB apart
// at once (those share L1 sets and thrashed it: 0.27 ms for 64 x 64 filters).
void transform_filters(const Kernels& kn, const float* wt, int64_t c, int64_t k, bool flip,
                       float* __restrict u, float* __restrict tap) {
  const int64_t cin = flip ? k : c, cout = flip ? c : k;
  if (flip) {  // tap[kk][2-r][2-s][cc]: rows of weight, reordered
    for (int64_t kk = 0; kk < k; ++kk) {
      for (int rs = 0; rs < 9; ++rs) {
        std::memcpy(tap + (kk * 9 + (8 - rs)) * cout, wt + (kk * 9 + rs) * c,
                    size_t(c) * sizeof(float));
      }
    }
  } else {  // tap[cc][r][s][kk]: a transpose per tap
    for (int rs = 0; rs < 9; ++rs) transpose(wt + rs * c, 9 * c, tap + rs * cout, 9 * cout, k, c);
  }
  // Input channels in parallel (at 256 x 256 filters this is a millisecond), each thread with its
  // own P x cout block behind the taps.
#pragma omp parallel for num_threads(cin* cout >= 4096 ? omp_get_max_threads() : 1) schedule(static)
  for (int64_t ci = 0; ci < cin; ++ci) {
    float* blk = tap + 9 * cin * cout + int64_t(omp_get_thread_num()) * kn.p * cout;
    kn.filter_block(tap + ci * 9 * cout, cout, blk);
    for (int p = 0; p < kn.p; ++p) {
      std::memcpy(u + (p * cin + ci) * cout, blk + p * cout, size_t(cout) * sizeof(float));
    }
  }
}

// Floats of scratch that the forward and data gradient's filters use: U, the taps, one U block
// per thread.
size_t filter_scratch_floats(const Kernels& kn, int64_t c, int64_t k) {
  return size_t((kn.p + 9) * c * k + int64_t(omp_get_max_threads()) * kn.p * std::max(c, k));
}

// Blocks [b0, b1) of thread t of nt over `blocks`: contiguous shares that differ by at most one.
void share(int64_t blocks, int t, int nt, int64_t& b0, int64_t& b1) {
  b0 = blocks * t / nt;
  b1 = blocks * (t + 1) / nt;
}

int threads_for(int64_t blocks) {
  return int(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), blocks)));
}

void run_conv(const Kernels& kn, const float* in, const float* u, const float* bias, float* out,
              const Geo& g, int64_t cin, int64_t cout) {
  const int64_t blocks = (g.tiles + kRows - 1) / kRows;
  const int nt = threads_for(blocks);
  const size_t nv = size_t(kn.p * kRows * cin), nm = size_t(kn.p * kRows * cout);
  const Tensor buf = scratch(size_t(nt) * (nv + nm));  // per thread: v, then m
  const std::vector<float> zeros(size_t(cin), 0.0f);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    int64_t b0, b1;
    share(blocks, t, omp_get_num_threads(), b0, b1);
    float* v = ptr(buf) + size_t(t) * (nv + nm);
    if (b0 < b1) kn.conv_blocks(in, u, bias, out, g, cin, cout, b0, b1, zeros.data(), v, v + nv);
  }
}

}  // namespace

bool wino_cpu_supported() {
  static const bool ok = [] {
    __builtin_cpu_init();  // in case this runs before libgcc's own initialisation
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return ok;
}

bool wino_applies(int64_t c, int64_t k, int64_t r, int64_t s, int64_t stride_h, int64_t stride_w,
                  int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w, int64_t groups) {
  return r == 3 && s == 3 && stride_h == 1 && stride_w == 1 && pad_h == 1 && pad_w == 1 &&
         dil_h == 1 && dil_w == 1 && groups == 1 && c > 0 && k > 0 && c % 16 == 0 && k % 16 == 0 &&
         wino_cpu_supported();
}

void wino_forward(int tile, const float* x, const float* weight, const float* bias, float* y,
                  int64_t n, int64_t h, int64_t w, int64_t c, int64_t k) {
  const Kernels kn = kernels(tile);
  const Tensor filters = scratch(filter_scratch_floats(kn, c, k));
  float* u = ptr(filters);
  transform_filters(kn, weight, c, k, /*flip=*/false, u, u + kn.p * c * k);
  run_conv(kn, x, u, bias, y, Geo(n, h, w, kn.m), c, k);
}

void wino_backward_data(int tile, const float* dy, const float* weight, float* dx, int64_t n,
                        int64_t h, int64_t w, int64_t c, int64_t k) {
  const Kernels kn = kernels(tile);
  const Tensor filters = scratch(filter_scratch_floats(kn, c, k));
  float* u = ptr(filters);
  transform_filters(kn, weight, c, k, /*flip=*/true, u, u + kn.p * c * k);
  run_conv(kn, dy, u, nullptr, dx, Geo(n, h, w, kn.m), k, c);
}

void wino_backward_weights(int tile, const float* x, const float* dy, float* dweight, float* dbias,
                           int64_t n, int64_t h, int64_t w, int64_t c, int64_t k) {
  const Kernels kn = kernels(tile);
  const Geo g(n, h, w, kn.m);
  const int64_t blocks = (g.tiles + kRowsW - 1) / kRowsW;
  const int nt = threads_for(blocks);
  const size_t ndu = size_t(kn.p * c * k), nbuf = size_t(kn.p * kRowsW * (c + k));
  const Tensor dub = scratch(size_t(nt) * ndu + size_t(9 * c * k));  // partials, then the taps
  const Tensor buf = scratch(size_t(nt) * nbuf);                     // per thread: v, then d
  float* du = ptr(dub);
  std::vector<double> db(dbias ? size_t(nt) * size_t(k) : 0, 0.0);
  const std::vector<float> zeros(size_t(std::max(c, k)), 0.0f);
  int team = 1;  // the threads the runtime started (at most nt), each with its zeroed partial
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    if (t == 0) team = omp_get_num_threads();
    float* part = du + size_t(t) * ndu;
    std::memset(part, 0, ndu * sizeof(float));
    int64_t b0, b1;
    share(blocks, t, omp_get_num_threads(), b0, b1);
    float* v = ptr(buf) + size_t(t) * nbuf;
    if (b0 < b1)
      kn.weight_blocks(x, dy, g, c, k, b0, b1, zeros.data(), v, v + kn.p * kRowsW * c, part);
    if (dbias) {  // the same share of pixel rows, summed in double
      int64_t r0, r1;
      share(n * h * w, t, omp_get_num_threads(), r0, r1);
      double* acc = db.data() + size_t(t) * size_t(k);
      for (int64_t row = r0; row < r1; ++row) {
        const float* g_row = dy + row * k;
        for (int64_t kk = 0; kk < k; ++kk) acc[kk] += double(g_row[kk]);
      }
    }
  }
  // Partials in thread order (each element summed over the threads in order, chunks of elements
  // in parallel: the same bits as one thread summing them), then dg = G^T dU G per input channel.
  const int64_t chunks = (int64_t(ndu) + 4095) / 4096;
#pragma omp parallel for num_threads(team) schedule(static)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const size_t i0 = size_t(ch) * 4096, i1 = std::min(ndu, i0 + 4096);
    for (int t = 1; t < team; ++t) {
      const float* part = du + size_t(t) * ndu;
      for (size_t i = i0; i < i1; ++i) du[i] += part[i];
    }
  }
  float* taps = du + size_t(nt) * ndu;  // taps[cc][r][s][kk]
#pragma omp parallel for num_threads(team) schedule(static)
  for (int64_t cc = 0; cc < c; ++cc) kn.weight_grad_block(du, c, k, cc, taps + cc * 9 * k);
  for (int rs = 0; rs < 9; ++rs) transpose(taps + rs * k, 9 * k, dweight + rs * c, 9 * c, c, k);
  if (dbias) {
    for (int64_t kk = 0; kk < k; ++kk) {
      double s = 0.0;
      for (int t = 0; t < nt; ++t) s += db[size_t(t) * size_t(k) + size_t(kk)];
      dbias[kk] = float(s);
    }
  }
}

}  // namespace lowbit::layers::detail
