// Conv2d on CUDA through cuDNN's convolution API: NHWC tensor and filter descriptors, one
// algorithm per geometry and direction chosen by cuDNN's heuristics and cached, workspace from
// the caching allocator (as a byte tensor, so it is stream-ordered). Tensor-core math is
// allowed for 16-bit inputs and, for f32, only when TF32 is switched on (set_allow_tf32).
// Among the heuristics' answers the first deterministic algorithm wins (cuDNN's backward
// algorithms 0 and 3 add with atomics; lowbit's reductions are deterministic everywhere else);
// where none is, the best non-deterministic one runs and a "lowbit warning" line on stderr says
// so, once per geometry and direction (conv2d_nondeterministic_note);
// each direction has its own convolution descriptor carrying the math type its algorithm was
// ranked with, as PyTorch does.
#include <cstdio>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "core/ops.h"
#include "cuda/check.h"
#include "cuda/handles.h"
#include "cuda/runtime.h"
#include "layers/conv2d.h"

namespace lowbit::layers {

namespace {

cudnnDataType_t cudnn_dtype(DType t) {
  switch (t) {
    case DType::f32:
      return CUDNN_DATA_FLOAT;
    case DType::f64:
      return CUDNN_DATA_DOUBLE;
    case DType::f16:
      return CUDNN_DATA_HALF;
    case DType::bf16:
      return CUDNN_DATA_BFLOAT16;
    default:
      break;
  }
  LOWBIT_FAIL("conv2d (cuda): dtype ", t, " is not supported (f32, f64, f16, bf16)");
}

// Descriptors and chosen algorithms for one geometry, dtype and device.
struct CudnnConv {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, b = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  // One per direction: forward, backward data, backward filter (each with its math type).
  cudnnConvolutionDescriptor_t conv = nullptr, conv_bd = nullptr, conv_bf = nullptr;
  cudnnConvolutionFwdAlgo_t fwd_algo{};
  cudnnConvolutionBwdDataAlgo_t bwd_data_algo{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter_algo{};
  size_t fwd_ws = 0, bwd_data_ws = 0, bwd_filter_ws = 0;

  CudnnConv() = default;
  CudnnConv(const CudnnConv&) = delete;
  CudnnConv& operator=(const CudnnConv&) = delete;
  ~CudnnConv() {
    if (x) CUDNN_CHECK_WARN(cudnnDestroyTensorDescriptor(x));
    if (y) CUDNN_CHECK_WARN(cudnnDestroyTensorDescriptor(y));
    if (b) CUDNN_CHECK_WARN(cudnnDestroyTensorDescriptor(b));
    if (w) CUDNN_CHECK_WARN(cudnnDestroyFilterDescriptor(w));
    if (conv) CUDNN_CHECK_WARN(cudnnDestroyConvolutionDescriptor(conv));
    if (conv_bd) CUDNN_CHECK_WARN(cudnnDestroyConvolutionDescriptor(conv_bd));
    if (conv_bf) CUDNN_CHECK_WARN(cudnnDestroyConvolutionDescriptor(conv_bf));
  }
};

using Key = std::tuple<int, int, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t>;

// cuDNN's names of its algorithms, for the log line of pick(). The enums are numbered 0 to
// *_COUNT - 1 (cudnn_ops.h); the static_asserts tie each table to its enum.
template <size_t N>
std::string algo_name(const char* prefix, const char* const (&names)[N], int algo) {
  return algo >= 0 && algo < int(N) ? str_cat(prefix, names[algo]) : str_cat(prefix, algo);
}
std::string algo_name(cudnnConvolutionFwdAlgo_t a) {
  static constexpr const char* kNames[] = {
      "IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT", "FFT", "FFT_TILING",
      "WINOGRAD",      "WINOGRAD_NONFUSED",
  };
  static_assert(std::size(kNames) == CUDNN_CONVOLUTION_FWD_ALGO_COUNT, "one name per algorithm");
  return algo_name("CUDNN_CONVOLUTION_FWD_ALGO_", kNames, int(a));
}
std::string algo_name(cudnnConvolutionBwdDataAlgo_t a) {
  static constexpr const char* kNames[] = {"0",          "1",        "FFT",
                                           "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
  static_assert(std::size(kNames) == CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                "one name per algorithm");
  return algo_name("CUDNN_CONVOLUTION_BWD_DATA_ALGO_", kNames, int(a));
}
std::string algo_name(cudnnConvolutionBwdFilterAlgo_t a) {
  static constexpr const char* kNames[] = {
      "0", "1", "FFT", "3", "WINOGRAD", "WINOGRAD_NONFUSED", "FFT_TILING"};
  static_assert(std::size(kNames) == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                "one name per algorithm");
  return algo_name("CUDNN_CONVOLUTION_BWD_FILTER_ALGO_", kNames, int(a));
}

// The first answer of cuDNN's ranked list that can run, preferring deterministic ones; its
// math type goes onto the direction's descriptor `conv`. Taking a non-deterministic one is
// logged (one stderr line; get_conv caches the choice, so once per geometry and direction).
// Fails naming the direction when none can run.
template <typename Perf>
Perf pick(const Perf* perf, int returned, cudnnConvolutionDescriptor_t conv, const char* what,
          const ConvShape& s, DType t) {
  for (bool need_det : {true, false}) {
    for (int i = 0; i < returned; ++i) {
      if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
      if (need_det && perf[i].determinism != CUDNN_DETERMINISTIC) continue;
      CUDNN_CHECK(cudnnSetConvolutionMathType(conv, perf[i].mathType));
      if (!need_det) {
        const std::string note =
            conv2d_nondeterministic_note(s, t, what, algo_name(perf[i].algo).c_str());
        std::fprintf(stderr, "lowbit warning: %s\n", note.c_str());
      }
      return perf[i];
    }
  }
  LOWBIT_FAIL("conv2d (cuda): cuDNN has no ", what, " algorithm for ", conv2d_shape_str(s), " (",
              dtype_name(t), ")");
}

CudnnConv& get_conv(const ConvShape& s, DType t, int device) {
  static std::map<Key, std::unique_ptr<CudnnConv>> cache;
  static std::mutex mu;  // guards cache
  const bool tf32 = allow_tf32();
  Key key{device, int(t),     tf32,       s.n,     s.h,     s.w,     s.c,     s.k,     s.r,
          s.s,    s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w, s.groups};
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[key];
  if (slot) return *slot;
  auto c = std::make_unique<CudnnConv>();
  const cudnnDataType_t dt = cudnn_dtype(t);
  // 16-bit inputs accumulate in f32; f64 in f64.
  const cudnnDataType_t compute = t == DType::f64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&c->x));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&c->y));
  CUDNN_CHECK(cudnnCreateTensorDescriptor(&c->b));
  CUDNN_CHECK(cudnnCreateFilterDescriptor(&c->w));
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c->conv));
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c->conv_bd));
  CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c->conv_bf));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(c->x, CUDNN_TENSOR_NHWC, dt, int(s.n), int(s.c), int(s.h),
                                         int(s.w)));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(c->y, CUDNN_TENSOR_NHWC, dt, int(s.n), int(s.k), int(s.p),
                                         int(s.q)));
  CUDNN_CHECK(cudnnSetTensor4dDescriptor(c->b, CUDNN_TENSOR_NHWC, dt, 1, int(s.k), 1, 1));
  CUDNN_CHECK(cudnnSetFilter4dDescriptor(c->w, dt, CUDNN_TENSOR_NHWC, int(s.k), int(s.c / s.groups),
                                         int(s.r), int(s.s)));
  const cudnnMathType_t math = (t == DType::f16 || t == DType::bf16 || (t == DType::f32 && tf32))
                                   ? CUDNN_TENSOR_OP_MATH
                                   : CUDNN_FMA_MATH;
  for (cudnnConvolutionDescriptor_t d : {c->conv, c->conv_bd, c->conv_bf}) {
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d, int(s.pad_h), int(s.pad_w), int(s.stride_h),
                                                int(s.stride_w), int(s.dil_h), int(s.dil_w),
                                                CUDNN_CROSS_CORRELATION, compute));
    CUDNN_CHECK(cudnnSetConvolutionGroupCount(d, int(s.groups)));
    CUDNN_CHECK(cudnnSetConvolutionMathType(d, math));
  }

  cudnnHandle_t h = cuda::cudnn_handle(device);
  int returned = 0;
  cudnnConvolutionFwdAlgoPerf_t fwd[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(
      h, c->x, c->w, c->conv, c->y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, fwd));
  c->fwd_algo = pick(fwd, returned, c->conv, "forward", s, t).algo;
  CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, c->x, c->w, c->conv, c->y, c->fwd_algo,
                                                      &c->fwd_ws));

  cudnnConvolutionBwdDataAlgoPerf_t bd[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
      h, c->w, c->y, c->conv_bd, c->x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned, bd));
  c->bwd_data_algo = pick(bd, returned, c->conv_bd, "backward-data", s, t).algo;
  CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(h, c->w, c->y, c->conv_bd, c->x,
                                                           c->bwd_data_algo, &c->bwd_data_ws));

  cudnnConvolutionBwdFilterAlgoPerf_t bf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
      h, c->x, c->y, c->conv_bf, c->w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &returned, bf));
  c->bwd_filter_algo = pick(bf, returned, c->conv_bf, "backward-filter", s, t).algo;
  CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
      h, c->x, c->y, c->conv_bf, c->w, c->bwd_filter_algo, &c->bwd_filter_ws));
  slot = std::move(c);
  return *slot;
}

// Scratch from the caching allocator, released (stream-ordered) when the tensor goes.
Tensor workspace(size_t bytes, Device dev) {
  return empty({int64_t(bytes > 0 ? bytes : 1)}, TensorOptions(DType::u8, dev));
}

// cuDNN's alpha/beta are float for every data type but double.
struct Scale {
  float f;
  double d;
};
const void* scale_ptr(const Scale& s, DType t) {
  return t == DType::f64 ? static_cast<const void*>(&s.d) : &s.f;
}

// The bias of 16-bit convolutions (autocast) goes through lowbit's own broadcast add and
// reduction (f32 math, rounded once, as the CPU path) rather than cuDNN's legacy
// cudnnAddTensor / cudnnConvolutionBackwardBias, whose bf16 support is not documented.
bool cudnn_bias(DType t) { return t == DType::f32 || t == DType::f64; }

void conv2d_forward_cuda(const ConvShape& s, const Tensor& x, const Tensor& w, const Tensor& b,
                         const Tensor& y) {
  const int dev = x.device().index;
  cuda::DeviceGuard guard(dev);
  CudnnConv& c = get_conv(s, x.dtype(), dev);
  Tensor ws = workspace(c.fwd_ws, x.device());
  const Scale one{1.0f, 1.0}, zero{0.0f, 0.0};
  cudnnHandle_t h = cuda::cudnn_handle(dev);
  CUDNN_CHECK(cudnnConvolutionForward(h, scale_ptr(one, x.dtype()), c.x, x.raw_data(), c.w,
                                      w.raw_data(), c.conv, c.fwd_algo, ws.raw_data(), c.fwd_ws,
                                      scale_ptr(zero, x.dtype()), c.y, y.raw_data()));
  if (b.defined() && !cudnn_bias(x.dtype())) {
    Tensor out = y;
    add_(out, b);
  } else if (b.defined()) {
    CUDNN_CHECK(cudnnAddTensor(h, scale_ptr(one, x.dtype()), c.b, b.raw_data(),
                               scale_ptr(one, x.dtype()), c.y, y.raw_data()));
  }
}

void conv2d_backward_cuda(const ConvShape& s, const Tensor& x, const Tensor& w, const Tensor& dy,
                          const Tensor& dx, const Tensor& dw, const Tensor& db) {
  const int dev = x.device().index;
  cuda::DeviceGuard guard(dev);
  CudnnConv& c = get_conv(s, x.dtype(), dev);
  const Scale one{1.0f, 1.0}, zero{0.0f, 0.0};
  const DType t = x.dtype();
  cudnnHandle_t h = cuda::cudnn_handle(dev);
  if (dx.defined()) {
    Tensor ws = workspace(c.bwd_data_ws, x.device());
    CUDNN_CHECK(cudnnConvolutionBackwardData(
        h, scale_ptr(one, t), c.w, w.raw_data(), c.y, dy.raw_data(), c.conv_bd, c.bwd_data_algo,
        ws.raw_data(), c.bwd_data_ws, scale_ptr(zero, t), c.x, dx.raw_data()));
  }
  if (dw.defined()) {
    Tensor ws = workspace(c.bwd_filter_ws, x.device());
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(
        h, scale_ptr(one, t), c.x, x.raw_data(), c.y, dy.raw_data(), c.conv_bf, c.bwd_filter_algo,
        ws.raw_data(), c.bwd_filter_ws, scale_ptr(zero, t), c.w, dw.raw_data()));
  }
  if (db.defined() && !cudnn_bias(t)) {
    Tensor sums = sum(dy.to(DType::f32), {0, 1, 2});
    Tensor out = db;
    out.copy_(sums);
  } else if (db.defined()) {
    CUDNN_CHECK(cudnnConvolutionBackwardBias(h, scale_ptr(one, t), c.y, dy.raw_data(),
                                             scale_ptr(zero, t), c.b, db.raw_data()));
  }
}

}  // namespace

LOWBIT_REGISTER_KERNEL(conv2d_forward_stub, cuda, conv2d_forward_cuda);
LOWBIT_REGISTER_KERNEL(conv2d_backward_stub, cuda, conv2d_backward_cuda);

}  // namespace lowbit::layers
