// Conv2d: shape checks, the oneDNN CPU kernels (primitives cached per geometry), autograd and
// device dispatch. The cuDNN kernels are in conv2d.cu.
#include "layers/conv2d.h"

#include <atomic>
#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <sstream>
#include <tuple>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "layers/winograd_cpu.h"

namespace lowbit::layers {

ConvShape conv2d_shape(const Tensor& x, const Tensor& w, const Conv2dOptions& o) {
  LOWBIT_CHECK(x.defined() && x.dim() == 4, "conv2d wants NHWC input (4-D), got ",
               x.defined() ? shape_str(x.shape()) : "undefined");
  LOWBIT_CHECK(w.defined() && w.dim() == 4, "conv2d wants a KRSC weight (4-D), got ",
               w.defined() ? shape_str(w.shape()) : "undefined");
  ConvShape s{};
  s.n = x.size(0);
  s.h = x.size(1);
  s.w = x.size(2);
  s.c = x.size(3);
  s.k = w.size(0);
  s.r = w.size(1);
  s.s = w.size(2);
  s.groups = o.groups;
  s.stride_h = o.stride[0];
  s.stride_w = o.stride[1];
  s.pad_h = o.padding[0];
  s.pad_w = o.padding[1];
  s.dil_h = o.dilation[0];
  s.dil_w = o.dilation[1];
  LOWBIT_CHECK(o.groups >= 1 && s.c % o.groups == 0 && s.k % o.groups == 0, "conv2d: groups ",
               o.groups, " must divide input channels ", s.c, " and filters ", s.k);
  LOWBIT_CHECK(w.size(3) * o.groups == s.c, "conv2d: input has ", s.c, " channels but the weight ",
               w.shape(), " with groups ", o.groups, " expects ", w.size(3) * o.groups);
  LOWBIT_CHECK(s.stride_h > 0 && s.stride_w > 0, "conv2d: stride ", s.stride_h, "x", s.stride_w,
               " must be positive in both dims");
  LOWBIT_CHECK(s.dil_h > 0 && s.dil_w > 0, "conv2d: dilation ", s.dil_h, "x", s.dil_w,
               " must be positive in both dims");
  LOWBIT_CHECK(s.pad_h >= 0 && s.pad_w >= 0, "conv2d: padding ", s.pad_h, "x", s.pad_w,
               " must be non-negative in both dims");
  s.p = conv_out_size(s.h, s.r, s.stride_h, s.pad_h, s.dil_h);
  s.q = conv_out_size(s.w, s.s, s.stride_w, s.pad_w, s.dil_w);
  LOWBIT_CHECK(s.p > 0 && s.q > 0, "conv2d: input ", x.shape(), " is too small for kernel ", s.r,
               "x", s.s, " with padding ", s.pad_h, "x", s.pad_w, " and dilation ", s.dil_h, "x",
               s.dil_w, " (output ", s.p, "x", s.q, ")");
  return s;
}

std::string conv2d_shape_str(const ConvShape& s) {
  return str_cat("N=", s.n, " H=", s.h, " W=", s.w, " C=", s.c, " -> K=", s.k, " R=", s.r,
                 " S=", s.s, " stride=", s.stride_h, "x", s.stride_w, " padding=", s.pad_h, "x",
                 s.pad_w, " dilation=", s.dil_h, "x", s.dil_w, " groups=", s.groups);
}

std::string conv2d_nondeterministic_note(const ConvShape& s, DType t, const char* direction,
                                         const char* algo) {
  return str_cat("conv2d (cuda): cuDNN has no deterministic ", direction, " algorithm for ",
                 conv2d_shape_str(s), " (", dtype_name(t), "); using ", algo,
                 ", which may differ from run to run");
}

// ---------------------------------------------------------------------------- oneDNN

namespace {

using dnnl::memory;

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, DType>;

Key key_of(const ConvShape& s, bool bias, DType t) {
  return Key{s.n,        s.h,     s.w,     s.c,     s.k,     s.r,      s.s,  s.stride_h,
             s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w, s.groups, bias, t};
}

struct Descs {
  memory::desc src, weights, bias, dst;  // the user layouts: nhwc, (g)ohwi, x
  memory::dims strides, dilates, pad_l, pad_r;
  dnnl::algorithm algo = dnnl::algorithm::convolution_direct;
  // Winograd kernels want blocked activations: the primitives then pick the layouts (`any`).
  memory::desc act(const memory::desc& md) const;
};

// Every tensor of one convolution has the same dtype: f32, or bf16 (autocast; oneDNN accumulates
// in f32 and rounds once on the way out).
Descs make_descs(const ConvShape& s, bool with_bias, DType t) {
  using tag = memory::format_tag;
  const memory::data_type dt = t == DType::bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  Descs d;
  d.src = memory::desc({s.n, s.c, s.h, s.w}, dt, tag::nhwc);
  d.dst = memory::desc({s.n, s.k, s.p, s.q}, dt, tag::nhwc);
  if (s.groups == 1) {
    d.weights = memory::desc({s.k, s.c, s.r, s.s}, dt, tag::ohwi);
  } else {
    d.weights = memory::desc({s.groups, s.k / s.groups, s.c / s.groups, s.r, s.s}, dt, tag::gohwi);
  }
  d.bias = with_bias ? memory::desc({s.k}, dt, tag::x) : memory::desc();
  d.strides = {s.stride_h, s.stride_w};
  d.dilates = {s.dil_h - 1, s.dil_w - 1};  // oneDNN counts dilation from 0
  d.pad_l = {s.pad_h, s.pad_w};
  // Right padding so that the output size matches exactly (PyTorch drops the remainder).
  d.pad_r = {(s.p - 1) * s.stride_h + s.dil_h * (s.r - 1) + 1 - s.h - s.pad_h,
             (s.q - 1) * s.stride_w + s.dil_w * (s.s - 1) + 1 - s.w - s.pad_w};
  return d;
}

// The same shapes with format `any`: used for the weights, so oneDNN picks its blocked weight
// layout (pinning OHWI too selects the slow reference kernel). Activations stay NHWC, which
// oneDNN's brgemm/jit kernels read directly (docs/design.md).
memory::desc any_of(const memory::desc& md) {
  return md ? memory::desc(md.dims(), md.data_type(), memory::format_tag::any) : md;
}

memory::desc Descs::act(const memory::desc& md) const {
  return algo == dnnl::algorithm::convolution_winograd ? any_of(md) : md;
}

std::mutex g_cache_mu;

dnnl::convolution_forward::primitive_desc forward_pd(const Descs& d, bool with_bias) {
  using namespace dnnl;
  auto desc = with_bias ? convolution_forward::desc(
                              prop_kind::forward_training, d.algo, d.act(d.src), any_of(d.weights),
                              d.bias, d.act(d.dst), d.strides, d.dilates, d.pad_l, d.pad_r)
                        : convolution_forward::desc(prop_kind::forward_training, d.algo,
                                                    d.act(d.src), any_of(d.weights), d.act(d.dst),
                                                    d.strides, d.dilates, d.pad_l, d.pad_r);
  return convolution_forward::primitive_desc(desc, cpu_engine());
}

// The element strides of a blocked layout whose every inner block spans its whole dimension
// (nChw16c with 16 channels is NHWC byte for byte); empty when the layout is not linear.
std::vector<int64_t> linear_strides(const memory::desc& md) {
  const dnnl_memory_desc_t& d = md.data;
  if (d.format_kind != dnnl_blocked || d.offset0 != 0 || d.extra.flags != 0) return {};
  const dnnl_blocking_desc_t& b = d.format_desc.blocking;
  std::vector<int64_t> st(b.strides, b.strides + d.ndims);
  int64_t inner = 1;
  for (int i = b.inner_nblks - 1; i >= 0; --i) {
    const int dim = int(b.inner_idxs[i]);
    if (b.inner_blks[i] != d.padded_dims[dim] || d.padded_dims[dim] != d.dims[dim]) return {};
    st[size_t(dim)] = inner;
    inner *= b.inner_blks[i];
  }
  for (int i = 0; i < d.ndims; ++i) {
    if (d.padded_dims[i] != d.dims[i]) return {};
  }
  return st;
}

// Whether two descriptions put every element at the same byte (so no reorder is needed).
bool same_bytes(const memory::desc& a, const memory::desc& b) {
  if (a == b) return true;
  if (a.dims() != b.dims() || a.data_type() != b.data_type()) return false;
  const auto sa = linear_strides(a), sb = linear_strides(b);
  if (sa.empty() || sb.empty()) return false;
  for (size_t i = 0; i < sa.size(); ++i) {
    if (a.dims()[i] > 1 && sa[i] != sb[i]) return false;
  }
  return true;
}

// Memory in the primitive's layout for a tensor in the user layout: the user buffer itself when
// the layouts put every element at the same byte, else a buffer the entry owns plus a reorder.
struct Staged {
  memory::desc user, prim;
  bool same = true;
  mutable memory buffer;  // in `prim` layout, when !same
  Staged() = default;
  Staged(const memory::desc& u, const memory::desc& p) : user(u), prim(p), same(same_bytes(u, p)) {
    if (!same) buffer = memory(p, cpu_engine());
  }
  // Memory to hand the primitive for input data at `ptr`, reordered in when needed.
  memory in(void* ptr, dnnl::stream& strm) const {
    if (same) return memory(prim, cpu_engine(), ptr);
    memory um(user, cpu_engine(), ptr);
    dnnl::reorder(um, buffer).execute(strm, um, buffer);
    return buffer;
  }
  // Memory for the primitive to write output into; call out_done after executing.
  memory out(void* ptr) const { return same ? memory(prim, cpu_engine(), ptr) : buffer; }
  void out_done(void* ptr, dnnl::stream& strm) const {
    if (same) return;
    memory um(user, cpu_engine(), ptr);
    dnnl::reorder(buffer, um).execute(strm, buffer, um);
  }
};

struct FwdEntry {
  dnnl::convolution_forward prim;
  Staged src, weights, dst;
  memory::desc bias;
  std::string impl;  // oneDNN's name of the kernel, e.g. "jit_wino_4x3:avx512_core"
};
struct BwdEntry {
  dnnl::convolution_backward_data prim_data;
  Staged data_dst, data_weights, data_src;
  dnnl::convolution_backward_weights prim_weights;
  Staged w_src, w_dst, w_weights;
  memory::desc bias;
  std::string impl;  // "<data gradient kernel>, <weight gradient kernel>"
};

// oneDNN throws dnnl::error when no kernel implements a primitive (bf16 on a CPU without
// AVX-512); say which convolution and dtype, and what to do.
[[noreturn]] void no_kernel(const ConvShape& s, DType t, const dnnl::error& e) {
  LOWBIT_FAIL("conv2d (cpu): oneDNN has no ", t, " kernel for ", s.n, "x", s.h, "x", s.w, "x", s.c,
              " -> ", s.k, " filters ", s.r, "x", s.s, " on this CPU (", e.what(), ")",
              t == DType::bf16 ? "; bf16 needs AVX-512 (avx512_core); use amp: off" : "");
}

std::atomic<CpuConvAlgo> g_algo{CpuConvAlgo::auto_};

// Winograd F(4x4, 3x3) (oneDNN's jit_wino_4x3, AVX-512 only) applies to dense 3x3 stride-1 f32
// convolutions; it wants blocked (nChw16c) activations.
bool winograd_candidate(const ConvShape& s, DType t, CpuConvAlgo algo) {
  return algo == CpuConvAlgo::winograd && t == DType::f32 && s.groups == 1 && s.r == 3 &&
         s.s == 3 && s.stride_h == 1 && s.stride_w == 1 && s.dil_h == 1 && s.dil_w == 1;
}

// auto takes lowbit's Winograd only up to the channel counts it was measured on (16-256,
// docs/benchmarks.md): beyond them its transformed filters (36 c k floats, 9.4 MB at 256 x 256)
// leave the cache and its per-thread weight-gradient partials (as large) grow with c k;
// winograd_f4/f2 take it anyway.
constexpr int64_t kAutoWinoMaxChannels = 256;

// lowbit's Winograd (winograd_cpu.h) where it applies: the output tile it takes (4 for
// F(4x4, 3x3) under auto and winograd_f4, 2 for F(2x2, 3x3) under winograd_f2), 0 for oneDNN.
int wino_tile(const ConvShape& s, DType t) {
  const CpuConvAlgo algo = g_algo.load();
  const bool auto_fits = s.c <= kAutoWinoMaxChannels && s.k <= kAutoWinoMaxChannels;
  int tile = 0;
  if (algo == CpuConvAlgo::winograd_f2) tile = 2;
  if (algo == CpuConvAlgo::winograd_f4 || (algo == CpuConvAlgo::auto_ && auto_fits)) tile = 4;
  const bool applies = tile != 0 && t == DType::f32 &&
                       detail::wino_applies(s.c, s.k, s.r, s.s, s.stride_h, s.stride_w, s.pad_h,
                                            s.pad_w, s.dil_h, s.dil_w, s.groups);
  return applies ? tile : 0;
}
std::string wino_name(int tile) {
  return tile == 2 ? "lowbit_wino_f2x2:avx512f" : "lowbit_wino_f4x4:avx512f";
}

FwdEntry& forward_entry(const ConvShape& s, bool with_bias, DType t) {
  static std::map<std::pair<Key, CpuConvAlgo>, std::unique_ptr<FwdEntry>> cache;
  const CpuConvAlgo algo = g_algo.load();
  std::lock_guard<std::mutex> lock(g_cache_mu);
  auto& slot = cache[{key_of(s, with_bias, t), algo}];
  if (slot) return *slot;
  auto build = [&](dnnl::algorithm how) {
    Descs d = make_descs(s, with_bias, t);
    d.algo = how;
    auto pd = forward_pd(d, with_bias);
    return std::unique_ptr<FwdEntry>(
        new FwdEntry{dnnl::convolution_forward(pd), Staged(d.src, pd.src_desc()),
                     Staged(d.weights, pd.weights_desc()), Staged(d.dst, pd.dst_desc()), d.bias,
                     std::string(pd.impl_info_str())});
  };
  if (winograd_candidate(s, t, algo)) {
    try {
      slot = build(dnnl::algorithm::convolution_winograd);
    } catch (const dnnl::error&) {
    }
  }
  if (!slot) try {
      slot = build(dnnl::algorithm::convolution_direct);
    } catch (const dnnl::error& e) {
      no_kernel(s, t, e);
    }
  return *slot;
}

BwdEntry& backward_entry(const ConvShape& s, bool with_bias, DType t) {
  using namespace dnnl;
  static std::map<std::pair<Key, CpuConvAlgo>, std::unique_ptr<BwdEntry>> cache;
  const CpuConvAlgo algo = g_algo.load();
  std::lock_guard<std::mutex> lock(g_cache_mu);
  auto& slot = cache[{key_of(s, with_bias, t), algo}];
  if (slot) return *slot;
  auto build = [&](algorithm how) {
    Descs d = make_descs(s, with_bias, t);
    d.algo = how;
    auto hint = forward_pd(d, with_bias);
    convolution_backward_data::desc dd(d.algo, d.act(d.src), any_of(d.weights), d.act(d.dst),
                                       d.strides, d.dilates, d.pad_l, d.pad_r);
    convolution_backward_data::primitive_desc dpd(dd, cpu_engine(), hint);
    auto wd = with_bias
                  ? convolution_backward_weights::desc(d.algo, d.act(d.src), any_of(d.weights),
                                                       d.bias, d.act(d.dst), d.strides, d.dilates,
                                                       d.pad_l, d.pad_r)
                  : convolution_backward_weights::desc(d.algo, d.act(d.src), any_of(d.weights),
                                                       d.act(d.dst), d.strides, d.dilates, d.pad_l,
                                                       d.pad_r);
    convolution_backward_weights::primitive_desc wpd(wd, cpu_engine(), hint);
    return std::unique_ptr<BwdEntry>(
        new BwdEntry{convolution_backward_data(dpd), Staged(d.dst, dpd.diff_dst_desc()),
                     Staged(d.weights, dpd.weights_desc()), Staged(d.src, dpd.diff_src_desc()),
                     convolution_backward_weights(wpd), Staged(d.src, wpd.src_desc()),
                     Staged(d.dst, wpd.diff_dst_desc()), Staged(d.weights, wpd.diff_weights_desc()),
                     d.bias, std::string(dpd.impl_info_str()) + ", " + wpd.impl_info_str()});
  };
  if (winograd_candidate(s, t, algo)) {
    try {
      slot = build(algorithm::convolution_winograd);
    } catch (const dnnl::error&) {
    }
  }
  if (!slot) try {
      slot = build(algorithm::convolution_direct);
    } catch (const dnnl::error& e) {
      no_kernel(s, t, e);
    }
  return *slot;
}

void check_cpu_dtype(const Tensor& t, const char* what) {
  LOWBIT_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, "conv2d (cpu): ", what,
               " has dtype ", t.dtype(), "; the CPU convolution supports f32 and bf16");
  LOWBIT_CHECK(t.is_contiguous(), "conv2d (cpu): ", what, " must be contiguous");
}

// One convolution at a time per process on the CPU: the cached staging buffers are shared.
std::mutex g_exec_mu;

}  // namespace

void set_cpu_conv_algo(CpuConvAlgo algo) { g_algo.store(algo); }
CpuConvAlgo cpu_conv_algo() { return g_algo.load(); }

const char* cpu_conv_algo_name(CpuConvAlgo algo) {
  switch (algo) {
    case CpuConvAlgo::auto_:
      return "auto";
    case CpuConvAlgo::direct:
      return "direct";
    case CpuConvAlgo::winograd:
      return "winograd";
    case CpuConvAlgo::winograd_f2:
      return "winograd_f2";
    case CpuConvAlgo::winograd_f4:
      return "winograd_f4";
  }
  return "?";
}

CpuConvAlgo parse_cpu_conv_algo(const std::string& name, const std::string& what) {
  for (CpuConvAlgo a : {CpuConvAlgo::auto_, CpuConvAlgo::direct, CpuConvAlgo::winograd,
                        CpuConvAlgo::winograd_f2, CpuConvAlgo::winograd_f4}) {
    if (name == cpu_conv_algo_name(a)) return a;
  }
  throw InputError(
      str_cat(what, ": '", name,
              "' is not allowed; allowed: auto, direct, winograd, winograd_f2, winograd_f4"));
}

std::string conv2d_cpu_kernel(const ConvShape& s, bool with_bias, DType t, bool backward) {
  if (const int tile = wino_tile(s, t)) {
    return backward ? str_cat(wino_name(tile), ", ", wino_name(tile)) : wino_name(tile);
  }
  return backward ? backward_entry(s, with_bias, t).impl : forward_entry(s, with_bias, t).impl;
}

void conv2d_forward_cpu(const ConvShape& s, const Tensor& x, const Tensor& w, const Tensor& b,
                        const Tensor& y) {
  check_cpu_dtype(x, "input");
  check_cpu_dtype(w, "weight");
  if (const int tile = wino_tile(s, x.dtype())) {
    detail::wino_forward(tile, static_cast<const float*>(x.raw_data()),
                         static_cast<const float*>(w.raw_data()),
                         b.defined() ? static_cast<const float*>(b.raw_data()) : nullptr,
                         static_cast<float*>(y.raw_data()), s.n, s.h, s.w, s.c, s.k);
    return;
  }
  FwdEntry& e = forward_entry(s, b.defined(), x.dtype());
  std::lock_guard<std::mutex> lock(g_exec_mu);
  dnnl::stream strm(cpu_engine());
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, e.src.in(x.raw_data(), strm)},
                                       {DNNL_ARG_WEIGHTS, e.weights.in(w.raw_data(), strm)},
                                       {DNNL_ARG_DST, e.dst.out(y.raw_data())}};
  if (b.defined()) args.emplace(DNNL_ARG_BIAS, memory(e.bias, cpu_engine(), b.raw_data()));
  e.prim.execute(strm, args);
  e.dst.out_done(y.raw_data(), strm);
  strm.wait();
}

void conv2d_backward_cpu(const ConvShape& s, const Tensor& x, const Tensor& w, const Tensor& dy,
                         const Tensor& dx, const Tensor& dw, const Tensor& db) {
  check_cpu_dtype(dy, "output gradient");
  LOWBIT_CHECK(dy.dtype() == x.dtype(), "conv2d (cpu): output gradient dtype ", dy.dtype(),
               " differs from the input's ", x.dtype());
  // oneDNN 2.6 has no bf16 depthwise/grouped weight-gradient kernel for small maps: it takes a
  // generic grouped one with 16-channel blocks, 5x slower than f32 (MobileNetV2 at 28x28). A
  // grouped bf16 convolution computes its weight gradient in f32 on the upcast x and dy and
  // rounds once, which is also more exact. docs/benchmarks.md, "bf16".
  if (x.dtype() == DType::bf16 && s.groups > 1 && dw.defined()) {
    const TensorOptions f32(DType::f32, x.device());
    Tensor dw32 = empty(dw.shape(), f32), db32 = db.defined() ? empty(db.shape(), f32) : Tensor();
    conv2d_backward_cpu(s, x.to(DType::f32), w.to(DType::f32), dy.to(DType::f32), Tensor(), dw32,
                        db32);
    Tensor(dw).copy_(dw32);  // a handle: the storage is the caller's output
    if (db.defined()) Tensor(db).copy_(db32);
    if (dx.defined()) conv2d_backward_cpu(s, x, w, dy, dx, Tensor(), Tensor());
    return;
  }
  if (const int tile = wino_tile(s, x.dtype())) {
    const float* px = static_cast<const float*>(x.raw_data());
    const float* pdy = static_cast<const float*>(dy.raw_data());
    if (dx.defined()) {
      detail::wino_backward_data(tile, pdy, static_cast<const float*>(w.raw_data()),
                                 static_cast<float*>(dx.raw_data()), s.n, s.h, s.w, s.c, s.k);
    }
    if (dw.defined()) {
      detail::wino_backward_weights(tile, px, pdy, static_cast<float*>(dw.raw_data()),
                                    db.defined() ? static_cast<float*>(db.raw_data()) : nullptr,
                                    s.n, s.h, s.w, s.c, s.k);
    }
    return;
  }
  BwdEntry& e = backward_entry(s, db.defined(), x.dtype());
  std::lock_guard<std::mutex> lock(g_exec_mu);
  dnnl::stream strm(cpu_engine());
  if (dx.defined()) {
    e.prim_data.execute(strm, {{DNNL_ARG_DIFF_DST, e.data_dst.in(dy.raw_data(), strm)},
                               {DNNL_ARG_WEIGHTS, e.data_weights.in(w.raw_data(), strm)},
                               {DNNL_ARG_DIFF_SRC, e.data_src.out(dx.raw_data())}});
    e.data_src.out_done(dx.raw_data(), strm);
  }
  if (dw.defined()) {
    std::unordered_map<int, memory> args{{DNNL_ARG_DIFF_DST, e.w_dst.in(dy.raw_data(), strm)},
                                         {DNNL_ARG_SRC, e.w_src.in(x.raw_data(), strm)},
                                         {DNNL_ARG_DIFF_WEIGHTS, e.w_weights.out(dw.raw_data())}};
    if (db.defined()) args.emplace(DNNL_ARG_DIFF_BIAS, memory(e.bias, cpu_engine(), db.raw_data()));
    e.prim_weights.execute(strm, args);
    e.w_weights.out_done(dw.raw_data(), strm);
  }
  strm.wait();
}

LOWBIT_DEFINE_STUB(conv2d_forward_stub);
LOWBIT_DEFINE_STUB(conv2d_backward_stub);
LOWBIT_REGISTER_KERNEL(conv2d_forward_stub, cpu, conv2d_forward_cpu);
LOWBIT_REGISTER_KERNEL(conv2d_backward_stub, cpu, conv2d_backward_cpu);

// ---------------------------------------------------------------------------- autograd

Tensor conv2d(const Tensor& x_arg, const Tensor& w_arg, const Tensor& b_in,
              const Conv2dOptions& o) {
  // A lower-precision op under autocast (core/autocast.h): f32 input and weight run in bf16.
  const Tensor x_in = autocast_input(x_arg), w_in = autocast_input(w_arg);
  const ConvShape s = conv2d_shape(x_in, w_in, o);
  LOWBIT_CHECK(x_in.device() == w_in.device(), "conv2d: input on ", x_in.device(), ", weight on ",
               w_in.device());
  LOWBIT_CHECK(x_in.dtype() == w_in.dtype(), "conv2d: input dtype ", x_in.dtype(),
               " differs from weight dtype ", w_in.dtype());
  if (b_in.defined()) {
    LOWBIT_CHECK(b_in.dim() == 1 && b_in.size(0) == s.k, "conv2d: bias ", b_in.shape(),
                 " must have ", s.k, " elements");
  }
  const Device dev = x_in.device();
  Tensor x = x_in.detach().contiguous();
  Tensor w = w_in.detach().contiguous();
  Tensor b = b_in.defined() ? b_in.detach().to(x.dtype()).contiguous() : Tensor();
  Tensor y = empty({s.n, s.p, s.q, s.k}, TensorOptions(x.dtype(), dev));
  conv2d_forward_stub(dev, s, x, w, b, y);

  if (autograd::any_requires_grad({x_in, w_in, b_in})) {
    autograd::SavedTensor sx(x, "conv2d"), sw(w, "conv2d");
    const bool need_x = x_in.requires_grad(), need_w = w_in.requires_grad();
    const bool need_b = b_in.defined() && b_in.requires_grad();
    std::vector<Tensor> inputs{x_in, w_in};
    if (b_in.defined()) inputs.push_back(b_in);
    autograd::record("conv2d", inputs, y, [=](const Tensor& g_in) {
      Tensor xs = sx.unpack(), ws = sw.unpack();
      Tensor g = g_in.to(xs.dtype()).contiguous();  // the engine may hand a promoted gradient
      const TensorOptions opt(xs.dtype(), xs.device());
      Tensor dx = need_x ? empty(xs.shape(), opt) : Tensor();
      Tensor dw = (need_w || need_b) ? empty(ws.shape(), opt) : Tensor();
      Tensor db = need_b ? empty({s.k}, opt) : Tensor();
      conv2d_backward_stub(g.device(), s, xs, ws, g, dx, dw, db);
      std::vector<Tensor> out{dx, need_w ? dw : Tensor()};
      if (b_in.defined()) out.push_back(db);
      return out;
    });
  }
  return y;
}

// ---------------------------------------------------------------------------- module

Tensor krsc_to_oihw(const Tensor& w) { return w.permute({0, 3, 1, 2}); }
Tensor oihw_to_krsc(const Tensor& w) { return w.permute({0, 2, 3, 1}); }

Conv2d::Conv2d(const Conv2dOptions& o) : opts_(o) {
  LOWBIT_CHECK(o.in_channels > 0 && o.out_channels > 0, "Conv2d: channels must be positive, got ",
               o.in_channels, " -> ", o.out_channels);
  LOWBIT_CHECK(o.groups >= 1 && o.in_channels % o.groups == 0 && o.out_channels % o.groups == 0,
               "Conv2d: groups ", o.groups, " must divide in_channels ", o.in_channels,
               " and out_channels ", o.out_channels);
  const int64_t cg = o.in_channels / o.groups;
  const int64_t fan_in = cg * o.kernel[0] * o.kernel[1];
  weight_ = uniform_fan_in({o.out_channels, o.kernel[0], o.kernel[1], cg}, fan_in);
  register_parameter("weight", &weight_);
  if (o.bias) {
    bias_ = uniform_fan_in({o.out_channels}, fan_in);
    register_parameter("bias", &bias_);
  }
}

Tensor Conv2d::forward(const Tensor& x) {
  Tensor y = add_bias_map(conv2d(x, effective_weight(), bias_, opts_));
  notify_forward(*this, x, y);
  return y;
}

Tensor Conv2d::effective_weight() const {
  if (!weight_mask_.defined()) return weight_;
  if (weight_mask_.dim() == 4) return weight_ * weight_mask_;
  return weight_ * weight_mask_.view({weight_mask_.numel(), 1, 1, 1});
}

Tensor Conv2d::add_bias_map(const Tensor& y) const {
  if (!bias_map_.defined()) return y;
  LOWBIT_CHECK_INPUT(y.dim() == 4 && y.size(1) == bias_map_.size(0) &&
                         y.size(2) == bias_map_.size(1) && y.size(3) == bias_map_.size(2),
                     "Conv2d(", extra_repr(), ") carries a PfQ bias map (border = exact) for ",
                     bias_map_.size(0), "x", bias_map_.size(1), " outputs with ", bias_map_.size(2),
                     " channels, got an output of shape ", y.shape(),
                     "; run it at the input size it was pruned for, or prune with border = full");
  return y + bias_map_;
}

void Conv2d::set_weight_mask(const Tensor& mask) {
  LOWBIT_CHECK(mask.defined() && ((mask.dim() == 1 && mask.size(0) == weight_.size(0)) ||
                                  mask.shape() == weight_.shape()),
               "Conv2d weight mask must be (", weight_.size(0), ") or ", weight_.shape(), ", got ",
               mask.defined() ? shape_str(mask.shape()) : "undefined");
  const bool first = !weight_mask_.defined();
  weight_mask_ = mask.detach().to(weight_.device(), weight_.dtype()).contiguous();
  if (first) register_buffer("weight_mask", &weight_mask_);
}

void Conv2d::set_bias_map(const Tensor& map) {
  LOWBIT_CHECK(map.defined() && map.dim() == 3 && map.size(2) == weight_.size(0),
               "Conv2d bias map must be (P, Q, ", weight_.size(0), "), got ",
               map.defined() ? shape_str(map.shape()) : "undefined");
  const bool first = !bias_map_.defined();
  bias_map_ = map.detach().to(weight_.device(), weight_.dtype()).contiguous();
  if (first) register_buffer("bias_map", &bias_map_);
}

void Conv2d::ensure_bias() {
  if (bias_.defined()) return;
  bias_ = zeros({weight_.size(0)}, TensorOptions(weight_.dtype(), weight_.device()));
  register_parameter("bias", &bias_);  // sets requires_grad
  opts_.bias = true;
}

Tensor keep_along(const Tensor& t, int64_t dim, const std::vector<int64_t>& keep) {
  LOWBIT_CHECK(t.defined(), "keep_along: undefined tensor");
  const int64_t d = dim < 0 ? dim + t.dim() : dim;
  LOWBIT_CHECK(d >= 0 && d < t.dim(), "keep_along: dim ", dim, " out of range for shape ",
               t.shape());
  for (size_t i = 0; i < keep.size(); ++i) {
    LOWBIT_CHECK(keep[i] >= 0 && keep[i] < t.size(d) && (i == 0 || keep[i] > keep[i - 1]),
                 "keep_along: indices must be sorted, unique and in [0, ", t.size(d), "), got ",
                 keep[i], " at position ", i);
  }
  autograd::NoGradGuard guard;
  Tensor idx = from_vector(keep, {int64_t(keep.size())}, TensorOptions(DType::i64, t.device()));
  Tensor out = index_select(t.detach(), d, idx).contiguous();
  if (t.requires_grad()) out.requires_grad_(true);
  return out;
}

void Conv2d::keep_channels(const std::vector<int64_t>& out_keep,
                           const std::vector<int64_t>& in_keep) {
  const bool depthwise =
      opts_.groups > 1 && opts_.groups == opts_.in_channels && opts_.groups == opts_.out_channels;
  LOWBIT_CHECK(!out_keep.empty() && !in_keep.empty(), "Conv2d(", extra_repr(),
               ").keep_channels: cannot remove every channel (", out_keep.size(), " outputs, ",
               in_keep.size(), " inputs kept)");
  if (depthwise) {
    LOWBIT_CHECK(out_keep == in_keep, "depthwise Conv2d(", extra_repr(),
                 ").keep_channels: input and output channels must be kept together");
  } else {
    LOWBIT_CHECK(opts_.groups == 1 || int64_t(in_keep.size()) == opts_.in_channels,
                 "grouped Conv2d(", extra_repr(), ").keep_channels: input channels of a ",
                 "grouped convolution cannot be removed");
  }
  weight_ = keep_along(weight_, 0, out_keep);
  if (!depthwise && int64_t(in_keep.size()) != opts_.in_channels) {
    weight_ = keep_along(weight_, 3, in_keep);
  }
  if (bias_.defined()) bias_ = keep_along(bias_, 0, out_keep);
  if (weight_mask_.defined()) {
    weight_mask_ = keep_along(weight_mask_, 0, out_keep);
    if (weight_mask_.dim() == 4 && !depthwise && int64_t(in_keep.size()) != opts_.in_channels) {
      weight_mask_ = keep_along(weight_mask_, 3, in_keep);
    }
  }
  if (bias_map_.defined()) bias_map_ = keep_along(bias_map_, 2, out_keep);
  opts_.out_channels = int64_t(out_keep.size());
  opts_.in_channels = int64_t(in_keep.size());
  if (depthwise) opts_.groups = opts_.out_channels;
}

std::string Conv2d::extra_repr() const {
  std::ostringstream os;
  os << opts_.in_channels << ", " << opts_.out_channels << ", kernel_size=(" << opts_.kernel[0]
     << ", " << opts_.kernel[1] << "), stride=(" << opts_.stride[0] << ", " << opts_.stride[1]
     << ")";
  if (opts_.padding[0] || opts_.padding[1])
    os << ", padding=(" << opts_.padding[0] << ", " << opts_.padding[1] << ")";
  if (opts_.dilation[0] != 1 || opts_.dilation[1] != 1)
    os << ", dilation=(" << opts_.dilation[0] << ", " << opts_.dilation[1] << ")";
  if (opts_.groups != 1) os << ", groups=" << opts_.groups;
  if (!opts_.bias) os << ", bias=False";
  return os.str();
}

Tensor Conv2d::to_layout(const std::string& local_name, const Tensor& t, Layout from,
                         Layout to) const {
  // An element mask has the weight's layout.
  const bool weight_like = local_name == "weight" || (local_name == "weight_mask" && t.dim() == 4);
  if (!weight_like || from == to) return t;
  LOWBIT_CHECK(t.dim() == 4, "Conv2d weight must be 4-D, got ", t.shape());
  return to == Layout::pytorch ? krsc_to_oihw(t) : oihw_to_krsc(t);
}

}  // namespace lowbit::layers
