// Winograd F(2x2, 3x3) on the CPU (winograd_cpu.h). With g a 3x3 filter, d a 4x4 input tile and
// Y its 2x2 output tile (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks"):
//   Y = A^T [ (G g G^T) .* (B^T d B) ] A,  summed over input channels inside the brackets, with
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// Per transformed position p (16 of them) the channel sum is a matrix product
//   M[p](tiles x cout) = V[p](tiles x cin) * U[p](cin x cout),
// and the weight gradient follows from the same identity: with dM = A dY A^T per tile,
//   dU[p] = sum over tiles V[p]^T dM[p],  dg = G^T dU G.
// The data gradient is the forward on dy with the filters rotated by 180 degrees and the channel
// axes swapped (stride 1, padding 1).
#include "layers/winograd_cpu.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <new>
#include <type_traits>
#include <vector>

namespace lowbit::layers::detail {

namespace {

constexpr int kP = 16;          // transformed positions of a 4x4 tile
constexpr int64_t kRows = 8;   // tiles per block, forward and data gradient
constexpr int64_t kRowsW = 24;  // tiles per block, weight gradient (fewer accumulator loads)

// The tiling of an (n, h, w) map into 2x2 output tiles, row-major in (n, tile row, tile col).
struct Geo {
  int64_t n, h, w, th, tw, tiles;
  Geo(int64_t n_, int64_t h_, int64_t w_)
      : n(n_), h(h_), w(w_), th((h_ + 1) / 2), tw((w_ + 1) / 2), tiles(n_ * th * tw) {}
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

// Per-thread scratch, 64-byte aligned (whole cache lines per vector store), that lives as long as
// the thread (OpenMP's pool threads persist): no allocation or page fault per call. Two slots so
// that a caller's filters (slot 1) survive its own use of slot 0 inside the parallel region.
float* scratch(size_t floats, int slot = 0) {
  struct Buf {
    float* p = nullptr;
    size_t n = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf bufs[2];
  Buf& b = bufs[slot];
  if (b.n < floats) {
    std::free(b.p);
    const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    b.p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (b.p == nullptr) throw std::bad_alloc();
    b.n = floats;
  }
  return b.p;
}

// U = G g G^T for every filter: u[p][ci][co] with p = 4*i + j. The forward's g is weight[co][.][.][ci];
// flipped (data gradient, ci runs over k and co over c) g[r][s] = weight[ci][2-r][2-s][co].
// The taps are first laid out as tap[ci][r][s][co], then each ci's 16 x cout block of U is
// computed along co (vectorised) into a small buffer and copied row by row: no loop walks many
// arrays 16 KiB apart at once (those share L1 sets and thrashed it, 0.27 ms for 64 x 64 filters).
// tap: filter_scratch_floats(c, k) - kP * c * k floats of scratch.
void filter_block(const float* g, int64_t cout, float* blk);

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

void transform_filters(const float* wt, int64_t c, int64_t k, bool flip, float* __restrict u,
                       float* __restrict tap) {
  const int64_t cin = flip ? k : c, cout = flip ? c : k;
  if (flip) {  // tap[kk][2-r][2-s][cc]: rows of weight, reordered
    for (int64_t kk = 0; kk < k; ++kk) {
      for (int rs = 0; rs < 9; ++rs) {
        std::memcpy(tap + (kk * 9 + (8 - rs)) * cout, wt + (kk * 9 + rs) * c, size_t(c) * sizeof(float));
      }
    }
  } else {  // tap[cc][r][s][kk]: a transpose per tap
    for (int rs = 0; rs < 9; ++rs) transpose(wt + rs * c, 9 * c, tap + rs * cout, 9 * cout, k, c);
  }
  float* __restrict blk = tap + 9 * cin * cout;  // 16 x cout
  for (int64_t ci = 0; ci < cin; ++ci) {
    filter_block(tap + ci * 9 * cout, cout, blk);
    for (int p = 0; p < kP; ++p) {
      std::memcpy(u + (p * cin + ci) * cout, blk + p * cout, size_t(cout) * sizeof(float));
    }
  }
}

// Floats of scratch slot 1 that the forward and data gradient use: U, the taps, one U block.
size_t filter_scratch_floats(int64_t c, int64_t k) {
  return size_t((kP + 9) * c * k + kP * std::max(c, k));
}

// ------------------------------------------------------------------ AVX-512 (runtime-checked)
// Only these functions are compiled for AVX-512F; they use raw pointers and intrinsics only, so
// no template shared with the rest of the program is instantiated with AVX-512 code.
#pragma GCC push_options
#pragma GCC target("avx512f")

// One input channel's U = G g G^T for all cout filters: g holds the 9 taps as rows of cout
// (tap[ci][r][s][.]), blk gets the 16 positions as rows of cout. cout is a multiple of 16.
void filter_block(const float* g, int64_t cout, float* blk) {
  const __m512 half = _mm512_set1_ps(0.5f);
  for (int64_t co = 0; co < cout; co += 16) {
    __m512 t[4][3];  // G g
    for (int s = 0; s < 3; ++s) {
      const __m512 g0 = _mm512_loadu_ps(g + s * cout + co);
      const __m512 g1 = _mm512_loadu_ps(g + (3 + s) * cout + co);
      const __m512 g2 = _mm512_loadu_ps(g + (6 + s) * cout + co);
      t[0][s] = g0;
      t[1][s] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(g0, g1), g2));
      t[2][s] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(g0, g1), g2));
      t[3][s] = g2;
    }
    for (int i = 0; i < 4; ++i) {  // (G g) G^T
      float* o = blk + i * 4 * cout + co;
      _mm512_storeu_ps(o, t[i][0]);
      _mm512_storeu_ps(o + cout, _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(t[i][0], t[i][1]), t[i][2])));
      _mm512_storeu_ps(o + 2 * cout, _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(t[i][0], t[i][1]), t[i][2])));
      _mm512_storeu_ps(o + 3 * cout, t[i][2]);
    }
  }
}

// dg = G^T dU G for input channel cc and all k filters: du[p][c][k] summed, out gets the 9 taps
// as rows of k (out[r][s][kk]). k is a multiple of 16.
void weight_grad_block(const float* du, int64_t c, int64_t k, int64_t cc, float* out) {
  const __m512 half = _mm512_set1_ps(0.5f);
  for (int64_t kk = 0; kk < k; kk += 16) {
    __m512 z[4][4];
    for (int p = 0; p < kP; ++p) z[p / 4][p % 4] = _mm512_loadu_ps(du + (p * c + cc) * k + kk);
    __m512 t[3][4];  // G^T Z
    for (int j = 0; j < 4; ++j) {
      t[0][j] = _mm512_add_ps(z[0][j], _mm512_mul_ps(half, _mm512_add_ps(z[1][j], z[2][j])));
      t[1][j] = _mm512_mul_ps(half, _mm512_sub_ps(z[1][j], z[2][j]));
      t[2][j] = _mm512_add_ps(_mm512_mul_ps(half, _mm512_add_ps(z[1][j], z[2][j])), z[3][j]);
    }
    for (int r = 0; r < 3; ++r) {  // (G^T Z) G
      float* o = out + r * 3 * k + kk;
      _mm512_storeu_ps(o, _mm512_add_ps(t[r][0], _mm512_mul_ps(half, _mm512_add_ps(t[r][1], t[r][2]))));
      _mm512_storeu_ps(o + k, _mm512_mul_ps(half, _mm512_sub_ps(t[r][1], t[r][2])));
      _mm512_storeu_ps(o + 2 * k, _mm512_add_ps(_mm512_mul_ps(half, _mm512_add_ps(t[r][1], t[r][2])), t[r][3]));
    }
  }
}

// V = B^T d B for one 4x4 tile, pixel (i, j) at px(i, j) (cin floats; a zero row for the
// padding), into v's row at dst (input_block's layout, `pstride` floats between positions). One
// column of the tile at a time, so that only 4 pixel addresses are live.
template <typename Pixel>
inline void input_tile(const Pixel& px, int64_t cin, int64_t rows, int64_t pstride, float* dst) {
  for (int64_t c0 = 0; c0 < cin; c0 += 16) {
    __m512 t[4][4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {  // B^T d, one column at a time
      const __m512 d0 = _mm512_loadu_ps(px(0, j) + c0), d1 = _mm512_loadu_ps(px(1, j) + c0);
      const __m512 d2 = _mm512_loadu_ps(px(2, j) + c0), d3 = _mm512_loadu_ps(px(3, j) + c0);
      t[0][j] = _mm512_sub_ps(d0, d2);
      t[1][j] = _mm512_add_ps(d1, d2);
      t[2][j] = _mm512_sub_ps(d2, d1);
      t[3][j] = _mm512_sub_ps(d1, d3);
    }
    float* o = dst + c0 * rows;
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i, o += 4 * pstride) {  // (B^T d) B
      _mm512_storeu_ps(o, _mm512_sub_ps(t[i][0], t[i][2]));
      _mm512_storeu_ps(o + pstride, _mm512_add_ps(t[i][1], t[i][2]));
      _mm512_storeu_ps(o + 2 * pstride, _mm512_sub_ps(t[i][2], t[i][1]));
      _mm512_storeu_ps(o + 3 * pstride, _mm512_sub_ps(t[i][1], t[i][3]));
    }
  }
}

// The input tiles [t0, t0 + count) of `in` (n, h, w, cin) into v[p][ci / 16][row][ci % 16]: blocks
// of 16 channels, so that the 16 rows' values of one channel are 64 bytes apart (the GEMMs below
// broadcast them at constant offsets from one pointer). Pixels in the padding read `zeros` (cin
// zeros); rows past count get zeros.
void input_block(const float* in, const Geo& g, int64_t cin, int64_t t0, int64_t count,
                 int64_t rows, const float* zeros, float* v) {
  const int64_t pstride = rows * cin;
  TileCursor tc(g, t0);
  for (int64_t row = 0; row < rows; ++row, tc.next(g)) {
    const int64_t y0 = 2 * tc.ty - 1, x0 = 2 * tc.tx - 1;
    float* dst = v + row * 16;
    if (row < count && y0 >= 0 && y0 + 3 < g.h && x0 >= 0 && x0 + 3 < g.w) {
      // Inside the map: every pixel address from one base (a table costs more than the
      // transform at 16 channels).
      const float* base = in + ((tc.nn * g.h + y0) * g.w + x0) * cin;
      const int64_t rstride = g.w * cin;
      input_tile([&](int i, int j) { return base + i * rstride + j * cin; }, cin, rows, pstride, dst);
    } else {
      const float* src[16];
      for (int i = 0; i < 4; ++i) {
        for (int j = 0; j < 4; ++j) {
          const int64_t yy = y0 + i, xx = x0 + j;
          const bool inside = row < count && yy >= 0 && yy < g.h && xx >= 0 && xx < g.w;
          src[i * 4 + j] = inside ? in + ((tc.nn * g.h + yy) * g.w + xx) * cin : zeros;
        }
      }
      input_tile([&](int i, int j) { return src[i * 4 + j]; }, cin, rows, pstride, dst);
    }
  }
}

// The output gradient tiles [t0, t0 + count) of dy (n, h, w, cout) as dM = A dY A^T into
// d[p][row][co]; outputs past the map's edge and rows past count are zeros.
void grad_block(const float* dy, const Geo& g, int64_t cout, int64_t t0, int64_t count,
                int64_t rows, float* d) {
  const int64_t pstride = rows * cout;
  const __m512 zero = _mm512_setzero_ps();
  TileCursor tc(g, t0);
  for (int64_t row = 0; row < rows; ++row, tc.next(g)) {
    const int64_t y0 = 2 * tc.ty, x0 = 2 * tc.tx;
    const float* base = dy + ((tc.nn * g.h + y0) * g.w + x0) * cout;
    const bool in_row = row < count, has_y1 = y0 + 1 < g.h, has_x1 = x0 + 1 < g.w;
    float* dst = d + row * cout;
    for (int64_t c0 = 0; c0 < cout; c0 += 16) {
      const float* p = base + c0;
      const __m512 y00 = in_row ? _mm512_loadu_ps(p) : zero;
      const __m512 y01 = in_row && has_x1 ? _mm512_loadu_ps(p + cout) : zero;
      const __m512 y10 = in_row && has_y1 ? _mm512_loadu_ps(p + g.w * cout) : zero;
      const __m512 y11 = in_row && has_y1 && has_x1 ? _mm512_loadu_ps(p + (g.w + 1) * cout) : zero;
      __m512 s[4][2];  // A dY
      s[0][0] = y00;
      s[0][1] = y01;
      s[1][0] = _mm512_add_ps(y00, y10);
      s[1][1] = _mm512_add_ps(y01, y11);
      s[2][0] = _mm512_sub_ps(y00, y10);
      s[2][1] = _mm512_sub_ps(y01, y11);
      s[3][0] = _mm512_sub_ps(zero, y10);
      s[3][1] = _mm512_sub_ps(zero, y11);
      float* o = dst + c0;
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i, o += 4 * pstride) {  // (A dY) A^T
        _mm512_storeu_ps(o, s[i][0]);
        _mm512_storeu_ps(o + pstride, _mm512_add_ps(s[i][0], s[i][1]));
        _mm512_storeu_ps(o + 2 * pstride, _mm512_sub_ps(s[i][0], s[i][1]));
        _mm512_storeu_ps(o + 3 * pstride, _mm512_sub_ps(zero, s[i][1]));
      }
    }
  }
}

// Y = A^T M A (+ bias) for the tiles [t0, t0 + count) from m[p][row][co] into out (n, h, w, cout),
// dropping outputs past the map's edge.
void output_block(const float* m, const Geo& g, int64_t cout, int64_t t0, int64_t count,
                  int64_t rows, const float* bias, float* out) {
  const int64_t pstride = rows * cout;
  TileCursor tc(g, t0);
  for (int64_t row = 0; row < count; ++row, tc.next(g)) {
    const int64_t y0 = 2 * tc.ty, x0 = 2 * tc.tx;
    float* base = out + ((tc.nn * g.h + y0) * g.w + x0) * cout;
    const bool has_y1 = y0 + 1 < g.h, has_x1 = x0 + 1 < g.w;
    const float* src = m + row * cout;
    for (int64_t c0 = 0; c0 < cout; c0 += 16) {
      __m512 s[2][4];
      const float* q = src + c0;
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j, q += pstride) {  // A^T M
        const __m512 m0 = _mm512_loadu_ps(q), m1 = _mm512_loadu_ps(q + 4 * pstride);
        const __m512 m2 = _mm512_loadu_ps(q + 8 * pstride), m3 = _mm512_loadu_ps(q + 12 * pstride);
        s[0][j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
        s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
      }
      __m512 y[2][2];
#pragma GCC unroll 2
      for (int i = 0; i < 2; ++i) {  // (A^T M) A
        y[i][0] = _mm512_add_ps(_mm512_add_ps(s[i][0], s[i][1]), s[i][2]);
        y[i][1] = _mm512_sub_ps(_mm512_sub_ps(s[i][1], s[i][2]), s[i][3]);
      }
      if (bias) {
        const __m512 b = _mm512_loadu_ps(bias + c0);
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2; ++j) y[i][j] = _mm512_add_ps(y[i][j], b);
      }
      float* p = base + c0;
      _mm512_storeu_ps(p, y[0][0]);
      if (has_x1) _mm512_storeu_ps(p + cout, y[0][1]);
      if (has_y1) _mm512_storeu_ps(p + g.w * cout, y[1][0]);
      if (has_y1 && has_x1) _mm512_storeu_ps(p + (g.w + 1) * cout, y[1][1]);
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

// The forward (or data gradient) over the tile blocks [b0, b1): v holds kP * kRows * cin floats,
// m kP * kRows * cout; zeros holds cin zeros.
void conv_blocks(const float* in, const float* u, const float* bias, float* out, const Geo& g,
                 int64_t cin, int64_t cout, int64_t b0, int64_t b1, const float* zeros,
                 float* v, float* m) {
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t t0 = blk * kRows, count = std::min(kRows, g.tiles - t0);
    input_block(in, g, cin, t0, count, kRows, zeros, v);
    for (int p = 0; p < kP; ++p) {
      const float* vp = v + p * kRows * cin;
      const float* up = u + p * cin * cout;
      float* mp = m + p * kRows * cout;
      column_blocks(cout, [&](auto kc, int64_t k0) {
        constexpr int KC = decltype(kc)::value, R = 16 / KC < kRows ? 16 / KC : int(kRows);
        for (int64_t r0 = 0; r0 < kRows; r0 += R) gemm_tile<KC, R>(vp, up, mp, cin, cout, kRows, r0, k0);
      });
    }
    output_block(m, g, cout, t0, count, kRows, bias, out);
  }
}

// The weight-gradient partial du[p][ci][co] (accumulated) over the tile blocks [b0, b1): v holds
// kP * kRowsW * cin floats, d kP * kRowsW * cout; zeros holds cin zeros.
void weight_blocks(const float* x, const float* dy, const Geo& g, int64_t cin, int64_t cout,
                   int64_t b0, int64_t b1, const float* zeros, float* v, float* d, float* du) {
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t t0 = blk * kRowsW, count = std::min(kRowsW, g.tiles - t0);
    input_block(x, g, cin, t0, count, kRowsW, zeros, v);
    grad_block(dy, g, cout, t0, count, kRowsW, d);
    for (int p = 0; p < kP; ++p) {
      const float* vp = v + p * kRowsW * cin;
      const float* dp = d + p * kRowsW * cout;
      float* dup = du + p * cin * cout;
      column_blocks(cout, [&](auto kc, int64_t k0) {
        constexpr int KC = decltype(kc)::value, R = 16 / KC;
        for (int64_t c0 = 0; c0 < cin; c0 += R) wgemm_tile<KC, R>(vp, dp, dup, cout, kRowsW, c0, k0);
      });
    }
  }
}

#pragma GCC pop_options

// Blocks [b0, b1) of thread t of nt over `blocks` (contiguous, equal shares).
void share(int64_t blocks, int t, int nt, int64_t& b0, int64_t& b1) {
  const int64_t chunk = (blocks + nt - 1) / nt;
  b0 = std::min(blocks, int64_t(t) * chunk);
  b1 = std::min(blocks, b0 + chunk);
}

int threads_for(int64_t blocks) {
  return int(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), blocks)));
}

void run_conv(const float* in, const float* u, const float* bias, float* out, const Geo& g,
              int64_t cin, int64_t cout) {
  const int64_t blocks = (g.tiles + kRows - 1) / kRows;
  const size_t nv = size_t(kP * kRows * cin), nm = size_t(kP * kRows * cout);
  const std::vector<float> zeros(size_t(cin), 0.0f);
#pragma omp parallel num_threads(threads_for(blocks))
  {
    int64_t b0, b1;
    share(blocks, omp_get_thread_num(), omp_get_num_threads(), b0, b1);
    if (b0 < b1) {
      float* v = scratch(nv + nm);
      conv_blocks(in, u, bias, out, g, cin, cout, b0, b1, zeros.data(), v, v + nv);
    }
  }
}

}  // namespace

bool wino_f2_cpu_supported() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

bool wino_f2_applies(int64_t c, int64_t k, int64_t r, int64_t s, int64_t stride_h,
                     int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w,
                     int64_t groups) {
  return r == 3 && s == 3 && stride_h == 1 && stride_w == 1 && pad_h == 1 && pad_w == 1 &&
         dil_h == 1 && dil_w == 1 && groups == 1 && c > 0 && k > 0 && c % 16 == 0 &&
         k % 16 == 0 && wino_f2_cpu_supported();
}

void wino_f2_forward(const float* x, const float* weight, const float* bias, float* y, int64_t n,
                     int64_t h, int64_t w, int64_t c, int64_t k) {
  float* u = scratch(filter_scratch_floats(c, k), 1);
  transform_filters(weight, c, k, /*flip=*/false, u, u + kP * c * k);
  run_conv(x, u, bias, y, Geo(n, h, w), c, k);
}

void wino_f2_backward_data(const float* dy, const float* weight, float* dx, int64_t n, int64_t h,
                           int64_t w, int64_t c, int64_t k) {
  float* u = scratch(filter_scratch_floats(c, k), 1);
  transform_filters(weight, c, k, /*flip=*/true, u, u + kP * c * k);
  run_conv(dy, u, nullptr, dx, Geo(n, h, w), k, c);
}

void wino_f2_backward_weights(const float* x, const float* dy, float* dweight, float* dbias,
                              int64_t n, int64_t h, int64_t w, int64_t c, int64_t k) {
  const Geo g(n, h, w);
  const int64_t blocks = (g.tiles + kRowsW - 1) / kRowsW;
  const int nt = threads_for(blocks);
  const size_t ndu = size_t(kP * c * k), nbuf = size_t(kP * kRowsW * (c + k));
  float* du = scratch(size_t(nt) * ndu + size_t(9 * c * k), 1);  // partials, then the taps
  std::vector<double> db(dbias ? size_t(nt) * size_t(k) : 0, 0.0);
  const std::vector<float> zeros(size_t(c), 0.0f);
  int team = 1;  // the threads the runtime started (at most nt), each with its zeroed partial
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    if (t == 0) team = omp_get_num_threads();
    float* part = du + size_t(t) * ndu;
    std::memset(part, 0, ndu * sizeof(float));
    int64_t b0, b1;
    share(blocks, t, omp_get_num_threads(), b0, b1);
    if (b0 < b1) {
      float* v = scratch(nbuf);
      weight_blocks(x, dy, g, c, k, b0, b1, zeros.data(), v, v + kP * kRowsW * c, part);
    }
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
  // Partials in thread order, then dg = G^T dU G per input channel.
  for (int t = 1; t < team; ++t) {
    const float* part = du + size_t(t) * ndu;
    for (size_t i = 0; i < ndu; ++i) du[i] += part[i];
  }
  float* taps = du + size_t(nt) * ndu;  // taps[cc][r][s][kk]
  for (int64_t cc = 0; cc < c; ++cc) weight_grad_block(du, c, k, cc, taps + cc * 9 * k);
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
