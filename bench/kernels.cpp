// The kernel benchmarks, one table entry each. Every entry builds its inputs once on the
// device, then times the call the training loop makes:
//  - conv: the oneDNN / cuDNN kernels themselves (conv2d_forward_*, conv2d_backward_*) into
//    preallocated outputs, so autograd and allocation are not in the number;
//  - bn, cross_entropy: the functional op (forward) and its recorded backward node applied to a
//    fixed upstream gradient (Node::apply: the backward without the engine's accumulation);
//  - add, relu: the functional ops, which allocate their output as in a training step;
//  - sgd, adamw: Optimizer::step over a set of parameters with gradients;
//  - fake_quant: the fused fake-quant ops (uniform fake_quantize, LSQ) per tensor and per
//    channel, forward and their recorded backward (which also reduces LSQ's scale gradient).
// Bytes are compulsory traffic (each input read once, each output written once): a kernel
// that makes two passes over its input can reach at most half of the copy bandwidth.
#include <algorithm>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "dist/process_group.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "quant/fake_quant.h"
#include "train/loss.h"
#include "train/optimizer.h"

namespace lowbit::bench {

double KernelResult::gb_per_s() const {
  return bytes > 0 && timing.median_ms > 0 ? bytes / (timing.median_ms * 1e-3) / 1e9 : 0.0;
}
double KernelResult::gflop_per_s() const {
  return flops > 0 && timing.median_ms > 0 ? flops / (timing.median_ms * 1e-3) / 1e9 : 0.0;
}

namespace {

// The --size values, or the default; checks the count and that every value is positive.
std::vector<int64_t> sizes_or(const KernelOptions& o, const char* bench,
                              std::vector<int64_t> defaults, size_t min_n, size_t max_n,
                              const char* help) {
  if (o.size.empty()) return defaults;
  LOWBIT_CHECK_INPUT(o.size.size() >= min_n && o.size.size() <= max_n, "bench kernel ", bench,
                     ": --size wants ", help, ", got ", o.size.size(), " value(s) ", o.size);
  for (int64_t v : o.size) {
    LOWBIT_CHECK_INPUT(v > 0, "bench kernel ", bench, ": --size values must be positive, got ",
                       o.size);
  }
  return o.size;
}

Tensor random_input(const Shape& shape, const KernelOptions& o, double scale = 1.0) {
  Tensor t = randn(shape, TensorOptions(DType::f32, o.device));
  if (scale != 1.0) t = t * scale;
  return o.dtype == DType::f32 ? t : t.to(o.dtype);
}

KernelResult make_result(const char* kernel, const KernelOptions& o, std::vector<int64_t> size,
                         std::string shape) {
  KernelResult r;
  r.kernel = kernel;
  r.device = o.device.str();
  r.dtype = dtype_name(o.dtype);
  r.size = std::move(size);
  r.shape = std::move(shape);
  return r;
}

void check_floating(const KernelOptions& o, const char* bench) {
  LOWBIT_CHECK_INPUT(is_floating(o.dtype), "bench kernel ", bench,
                     ": --dtype must be floating, got ", dtype_name(o.dtype));
}

// --- copy --------------------------------------------------------------------------------------

constexpr const char* kCopySize = "ELEMENTS (default 33554432 = 128 MiB of f32)";

// --- conv --------------------------------------------------------------------------------------

constexpr const char* kConvSize =
    "N,H,W,C,K,R[,STRIDE[,GROUPS]]: NHWC input, K filters of RxR, padding R/2 "
    "(default 128,32,32,16,16,3: a ResNet-20 stage-1 conv on CIFAR)";

std::vector<int64_t> conv_sizes(const KernelOptions& o) {
  check_floating(o, "conv");
  auto v = sizes_or(o, "conv", {128, 32, 32, 16, 16, 3}, 6, 8, "N,H,W,C,K,R[,STRIDE[,GROUPS]]");
  const int64_t groups = v.size() > 7 ? v[7] : 1;
  LOWBIT_CHECK_INPUT(v[3] % groups == 0 && v[4] % groups == 0, "bench kernel conv: GROUPS ", groups,
                     " must divide C ", v[3], " and K ", v[4]);
  return v;
}

std::vector<KernelResult> bench_conv(const KernelOptions& o) {
  const auto v = conv_sizes(o);
  const int64_t n = v[0], h = v[1], w = v[2], c = v[3], k = v[4], r = v[5];
  const int64_t stride = v.size() > 6 ? v[6] : 1, groups = v.size() > 7 ? v[7] : 1;
  layers::Conv2dOptions co(c, k, r);
  co.with_stride(stride).with_padding(r / 2).with_groups(groups).with_bias(false);
  autograd::NoGradGuard no_grad;
  Tensor x = random_input({n, h, w, c}, o);
  Tensor wt = random_input({k, r, r, c / groups}, o, 0.1);
  const layers::ConvShape s = layers::conv2d_shape(x, wt, co);
  const TensorOptions opt(o.dtype, o.device);
  Tensor y = empty({s.n, s.p, s.q, s.k}, opt);
  Tensor dy = random_input({s.n, s.p, s.q, s.k}, o);
  Tensor dx = empty(x.shape(), opt), dw = empty(wt.shape(), opt);

  std::ostringstream shape;
  shape << "N=" << n << " H=" << h << " W=" << w << " C=" << c << " K=" << k << " R=S=" << r
        << " stride=" << stride << " groups=" << groups << " -> P=" << s.p << " Q=" << s.q;
  const double fwd_flops =
      2.0 * double(s.n * s.p * s.q * s.k) * double(s.r * s.s * (s.c / s.groups));

  KernelResult f = make_result("conv_forward", o, v, shape.str());
  f.flops = fwd_flops;
  f.timing = time_calls(o.device, o.warmup, o.iters,
                        [&] { layers::conv2d_forward_stub(o.device, s, x, wt, Tensor(), y); });
  // Backward: the data gradient and the weight gradient (no bias), each as many FLOPs as the
  // forward.
  KernelResult b = make_result("conv_backward", o, v, shape.str());
  b.flops = 2.0 * fwd_flops;
  b.timing = time_calls(o.device, o.warmup, o.iters, [&] {
    layers::conv2d_backward_stub(o.device, s, x, wt, dy, dx, dw, Tensor());
  });
  return {f, b};
}

// --- batch norm --------------------------------------------------------------------------------

constexpr const char* kBnSize = "N,H,W,C (default 128,32,32,16)";

std::vector<int64_t> bn_sizes(const KernelOptions& o) {
  check_floating(o, "bn");
  return sizes_or(o, "bn", {128, 32, 32, 16}, 4, 4, "N,H,W,C");
}

std::vector<KernelResult> bench_bn(const KernelOptions& o) {
  const auto v = bn_sizes(o);
  const int64_t c = v[3];
  const Tensor x0 = random_input({v[0], v[1], v[2], c}, o);
  const TensorOptions f32(DType::f32, o.device);
  Tensor weight = ones({c}, f32).requires_grad_(), bias = zeros({c}, f32).requires_grad_();
  Tensor rm = zeros({c}, f32), rv = ones({c}, f32);
  const double n = double(x0.numel()), es = double(x0.element_size());
  std::ostringstream shape;
  shape << "N=" << v[0] << " H=" << v[1] << " W=" << v[2] << " C=" << c
        << " (training: batch statistics, running-stat update)";

  KernelResult f = make_result("bn_forward", o, v, shape.str());
  f.bytes = 2 * n * es;  // read x, write y
  {
    autograd::NoGradGuard no_grad;
    f.timing = time_calls(o.device, o.warmup, o.iters,
                          [&] { layers::batch_norm(x0, weight, bias, rm, rv, true, 0.1, 1e-5); });
  }
  Tensor x = x0.detach().requires_grad_();
  Tensor y = layers::batch_norm(x, weight, bias, rm, rv, true, 0.1, 1e-5);
  Tensor dy = random_input(y.shape(), o);
  std::shared_ptr<autograd::Node> node = y.grad_fn();
  KernelResult b = make_result("bn_backward", o, v, shape.str());
  b.bytes = 3 * n * es;  // read x and dy, write dx
  b.timing = time_calls(o.device, o.warmup, o.iters, [&] { node->apply({dy}); });
  return {f, b};
}

// --- elementwise -------------------------------------------------------------------------------

constexpr const char* kElementwiseSize =
    "ELEMENTS (default: CPU 6291456 = 24 MiB of f32, CUDA 67108864 = 256 MiB)";

// Large enough to leave the last-level cache, and on the CPU below glibc's largest mmap
// threshold (32 MiB): a bigger output is a fresh mmap per call, and the page faults would be
// measured instead of the kernel (docs/benchmarks.md).
int64_t default_elements(const KernelOptions& o) {
  return o.device.is_cuda() ? int64_t(64) << 20 : int64_t(6) << 20;
}

std::vector<int64_t> elementwise_sizes(const KernelOptions& o, const char* name) {
  check_floating(o, name);
  return sizes_or(o, name, {default_elements(o)}, 1, 1, "ELEMENTS");
}

std::vector<KernelResult> bench_add(const KernelOptions& o) {
  const auto v = elementwise_sizes(o, "add");
  autograd::NoGradGuard no_grad;
  Tensor a = random_input({v[0]}, o), b = random_input({v[0]}, o);
  KernelResult r = make_result("add", o, v, str_cat(v[0], " elements, out = a + b (allocated)"));
  r.bytes = 3.0 * double(a.nbytes());  // read a and b, write the output
  r.timing = time_calls(o.device, o.warmup, o.iters, [&] { add(a, b); });
  return {r};
}

std::vector<KernelResult> bench_relu(const KernelOptions& o) {
  const auto v = elementwise_sizes(o, "relu");
  autograd::NoGradGuard no_grad;
  Tensor a = random_input({v[0]}, o);
  KernelResult r = make_result("relu", o, v, str_cat(v[0], " elements, out = relu(x) (allocated)"));
  r.bytes = 2.0 * double(a.nbytes());  // read x, write the output
  r.timing = time_calls(o.device, o.warmup, o.iters, [&] { relu(a); });
  return {r};
}

// --- optimizer steps ---------------------------------------------------------------------------

constexpr const char* kOptimizerSize =
    "TOTAL[,TENSORS]: parameter elements split into TENSORS equal tensors "
    "(default 11000000,62: about ResNet-18)";

std::vector<int64_t> optimizer_sizes(const KernelOptions& o, const char* name) {
  check_floating(o, name);
  auto v = sizes_or(o, name, {11000000, 62}, 1, 2, "TOTAL[,TENSORS]");
  LOWBIT_CHECK_INPUT(v.size() < 2 || v[1] <= v[0], "bench kernel ", name, ": TENSORS ", v[1],
                     " exceeds TOTAL ", v[0]);
  return v;
}

std::vector<Tensor> make_params(const KernelOptions& o, const std::vector<int64_t>& v) {
  const int64_t total = v[0], count = v.size() > 1 ? v[1] : 1;
  std::vector<Tensor> params;
  autograd::NoGradGuard no_grad;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t n = total / count + (i == count - 1 ? total % count : 0);
    Tensor p = random_input({n}, o, 0.01).requires_grad_();
    p.set_grad(random_input({n}, o, 0.001));
    params.push_back(p);
  }
  return params;
}

KernelResult bench_optimizer(
    const KernelOptions& o, const char* name, const char* kernel, double tensors_moved,
    const std::function<std::unique_ptr<train::Optimizer>(std::vector<train::ParamGroup>)>& make) {
  const auto v = optimizer_sizes(o, name);
  std::vector<Tensor> params = make_params(o, v);
  auto opt = make({train::ParamGroup(params, 0.01, 5e-4)});
  KernelResult r =
      make_result(kernel, o, v, str_cat(v[0], " parameters in ", params.size(), " tensors"));
  r.bytes = tensors_moved * double(v[0]) * double(dtype_size(o.dtype));
  // The warm-up steps create the optimizer state, so timed steps are steady-state steps.
  r.timing = time_calls(o.device, std::max<int64_t>(o.warmup, 1), o.iters, [&] { opt->step(); });
  return r;
}

std::vector<KernelResult> bench_sgd(const KernelOptions& o) {
  // p, g, momentum buffer read; p, buffer written.
  return {bench_optimizer(o, "sgd", "sgd_step", 5.0, [](std::vector<train::ParamGroup> g) {
    return std::make_unique<train::SGD>(std::move(g), train::SgdOptions{0.9, 0.0, false});
  })};
}

std::vector<KernelResult> bench_adamw(const KernelOptions& o) {
  // p, g, m, v read; p, m, v written.
  return {bench_optimizer(o, "adamw", "adamw_step", 7.0, [](std::vector<train::ParamGroup> g) {
    return std::make_unique<train::AdamW>(std::move(g));
  })};
}

// --- all-reduce --------------------------------------------------------------------------------

constexpr const char* kAllReduceSize =
    "ELEMENTS,... (f32 elements per rank; default a sweep from 1K to 16M elements = 4 KiB to 64 "
    "MiB)";

void allreduce_sizes(const KernelOptions& o) {
  LOWBIT_CHECK_INPUT(o.dtype == DType::f32, "bench kernel allreduce: --dtype must be f32");
  for (int64_t n : o.size)
    LOWBIT_CHECK_INPUT(n >= 1, "bench kernel allreduce: --size wants element counts >= 1");
}

// The world's all-reduce (sum) on the device's group: mpi (CPU), nccl (CUDA), or a world of one
// (identity, bus factor 0). Run under mpirun -np N for anything to move.
std::vector<KernelResult> bench_allreduce(const KernelOptions& o) {
  std::vector<int64_t> sizes = o.size;
  if (sizes.empty()) {
    for (int64_t n = 1024; n <= (int64_t(1) << 24); n *= 4) sizes.push_back(n);
  }
  dist::ProcessGroup& group = dist::process_group(o.device);
  const double n = double(group.size());
  std::vector<KernelResult> out;
  for (int64_t elements : sizes) {
    Tensor t = ones({elements}, TensorOptions(DType::f32, o.device));
    group.barrier();
    KernelResult r = make_result(
        "allreduce", o, {elements},
        str_cat(elements * 4, " bytes, ", group.size(), " rank(s), ", group.backend(),
                group.size() == 1 ? " (a world of one: nothing moves; run under mpirun)" : ""));
    r.timing =
        time_calls(o.device, o.warmup, o.iters, [&] { group.all_reduce(t, dist::ReduceOp::sum); });
    r.bytes = group.size() > 1 ? double(elements) * 4.0 : 0.0;
    r.bus_factor = 2.0 * (n - 1.0) / n;
    out.push_back(r);
  }
  return out;
}

// --- cross-entropy -----------------------------------------------------------------------------

constexpr const char* kCrossEntropySize = "N,CLASSES (default 256,1000)";

std::vector<int64_t> cross_entropy_sizes(const KernelOptions& o) {
  check_floating(o, "cross_entropy");
  auto v = sizes_or(o, "cross_entropy", {256, 1000}, 2, 2, "N,CLASSES");
  LOWBIT_CHECK_INPUT(v[1] >= 2, "bench kernel cross_entropy: CLASSES must be at least 2, got ",
                     v[1]);
  return v;
}

std::vector<KernelResult> bench_cross_entropy(const KernelOptions& o) {
  const auto v = cross_entropy_sizes(o);
  const Tensor logits0 = random_input({v[0], v[1]}, o);
  const Tensor target = randint(0, v[1], {v[0]}, TensorOptions(DType::i64, o.device));
  const double logit_bytes = double(logits0.nbytes()), target_bytes = double(target.nbytes());
  const std::string shape = str_cat("N=", v[0], " classes=", v[1], " (mean, no smoothing)");
  KernelResult f = make_result("cross_entropy_forward", o, v, shape);
  f.bytes = logit_bytes + target_bytes;
  {
    autograd::NoGradGuard no_grad;
    f.timing =
        time_calls(o.device, o.warmup, o.iters, [&] { train::cross_entropy(logits0, target); });
  }
  Tensor logits = logits0.detach().requires_grad_();
  Tensor loss = train::cross_entropy(logits, target);
  Tensor g = ones({}, TensorOptions(loss.dtype(), o.device));
  std::shared_ptr<autograd::Node> node = loss.grad_fn();
  KernelResult b = make_result("cross_entropy_backward", o, v, shape);
  b.bytes = 2 * logit_bytes + target_bytes;  // read logits and targets, write dlogits
  b.timing = time_calls(o.device, o.warmup, o.iters, [&] { node->apply({g}); });
  return {f, b};
}

// --- fake quantization -------------------------------------------------------------------------

constexpr const char* kFakeQuantSize =
    "ELEMENTS[,C] (default: the elementwise default, C = 64): an (ELEMENTS/C, C) tensor, "
    "per-channel along C (channels-last activations)";

std::vector<int64_t> fake_quant_sizes(const KernelOptions& o) {
  check_floating(o, "fake_quant");
  auto v = sizes_or(o, "fake_quant", {default_elements(o), 64}, 1, 2, "ELEMENTS[,C]");
  if (v.size() == 1) v.push_back(64);
  LOWBIT_CHECK_INPUT(v[0] % v[1] == 0, "bench kernel fake_quant: ELEMENTS = ", v[0],
                     " must be a multiple of C = ", v[1]);
  return v;
}

// 4-bit fake quantization of an (n / c, c) tensor: uniform (scale, zero-point; STE) and LSQ
// (learned scale; the backward also reduces dL/ds), per tensor and per channel (axis 1).
// Forward bytes: read x, write x_hat; backward: read x and dy, write dx (the per-scale
// reductions are negligible).
std::vector<KernelResult> bench_fake_quant(const KernelOptions& o) {
  const auto v = fake_quant_sizes(o);
  const int64_t c = v[1];
  const Tensor x0 = random_input({v[0] / c, c}, o);
  const Tensor dy = random_input(x0.shape(), o);
  const TensorOptions f32(DType::f32, o.device);
  const quant::QuantRange u4 = quant::quant_range(4, false), s4 = quant::quant_range(4, true);
  const double n = double(x0.numel()), es = double(x0.element_size());
  std::vector<KernelResult> out;
  for (const bool per_channel : {false, true}) {
    const int64_t k = per_channel ? c : 1;
    const std::string gran = per_channel ? "per_channel" : "per_tensor";
    const std::string shape =
        str_cat(v[0] / c, "x", c, " 4-bit ", gran, per_channel ? " (axis 1)" : "");
    // uniform: x in N(0, 1), unsigned 4-bit over about [-2, 2]
    const Tensor scale = full({k}, 0.25, f32),
                 zp = full({k}, 8, TensorOptions(DType::i32, o.device));
    // lsq: signed 4-bit, learned scale
    const Tensor s_lsq = full({k}, 0.3, f32).requires_grad_();
    const double g = quant::lsq_grad_scale(v[0] / k, s4.qmax);
    struct Op {
      std::string name;
      std::function<Tensor(const Tensor&)> fn;
    };
    const std::vector<Op> ops{
        {"fake_quant", [&](const Tensor& x) { return quant::fake_quantize(x, scale, zp, u4, 1); }},
        {"lsq", [&](const Tensor& x) { return quant::lsq_quantize(x, s_lsq, s4, g, 1); }},
    };
    for (const Op& op : ops) {
      KernelResult f = make_result((op.name + "_" + gran + "_forward").c_str(), o, v, shape);
      f.bytes = 2 * n * es;
      {
        autograd::NoGradGuard no_grad;
        f.timing = time_calls(o.device, o.warmup, o.iters, [&] { op.fn(x0); });
      }
      Tensor x = x0.detach().requires_grad_();
      Tensor y = op.fn(x);
      std::shared_ptr<autograd::Node> node = y.grad_fn();
      KernelResult b = make_result((op.name + "_" + gran + "_backward").c_str(), o, v, shape);
      b.bytes = 3 * n * es;
      b.timing = time_calls(o.device, o.warmup, o.iters, [&] { node->apply({dy}); });
      out.push_back(f);
      out.push_back(b);
    }
  }
  return out;
}

std::vector<int64_t> copy_sizes(const KernelOptions& o) {
  check_floating(o, "copy");
  return sizes_or(o, "copy", {int64_t(32) << 20}, 1, 1, "ELEMENTS");
}

}  // namespace

KernelResult measure_copy(const KernelOptions& o) {
  const auto v = copy_sizes(o);
  autograd::NoGradGuard no_grad;
  Tensor src = random_input({v[0]}, o);
  Tensor dst = empty(src.shape(), TensorOptions(o.dtype, o.device));
  KernelResult r = make_result(
      "copy", o, v, str_cat(v[0], " elements (", src.nbytes() >> 20, " MiB), dst.copy_(src)"));
  r.bytes = 2.0 * double(src.nbytes());  // read src, write dst
  r.timing = time_calls(o.device, o.warmup, o.iters, [&] { dst.copy_(src); });
  return r;
}

const std::vector<KernelBench>& kernel_benches() {
  using Opts = const KernelOptions&;
  static const std::vector<KernelBench> table = {
      {"copy", kCopySize, "device copy bandwidth (every run measures it first)",
       [](Opts o) { return std::vector<KernelResult>{measure_copy(o)}; },
       [](Opts o) { copy_sizes(o); }},
      {"conv", kConvSize, "convolution forward and backward (data + weight gradients)", bench_conv,
       [](Opts o) { conv_sizes(o); }},
      {"bn", kBnSize, "BatchNorm2d training forward and backward", bench_bn,
       [](Opts o) { bn_sizes(o); }},
      {"add", kElementwiseSize, "elementwise a + b", bench_add,
       [](Opts o) { elementwise_sizes(o, "add"); }},
      {"relu", kElementwiseSize, "elementwise relu(x)", bench_relu,
       [](Opts o) { elementwise_sizes(o, "relu"); }},
      {"sgd", kOptimizerSize, "SGD step (momentum 0.9, weight decay 5e-4)", bench_sgd,
       [](Opts o) { optimizer_sizes(o, "sgd"); }},
      {"adamw", kOptimizerSize, "AdamW step (weight decay 5e-4)", bench_adamw,
       [](Opts o) { optimizer_sizes(o, "adamw"); }},
      {"cross_entropy", kCrossEntropySize, "cross-entropy forward and backward",
       bench_cross_entropy, [](Opts o) { cross_entropy_sizes(o); }},
      {"allreduce", kAllReduceSize,
       "all-reduce (sum) of the world's ranks: algorithm and bus bandwidth (nccl-tests' busbw)",
       bench_allreduce, [](Opts o) { allreduce_sizes(o); }},
      {"fake_quant", kFakeQuantSize,
       "4-bit fake quantization forward and backward: uniform and LSQ, per tensor and per channel",
       bench_fake_quant, [](Opts o) { fake_quant_sizes(o); }},
  };
  return table;
}

const KernelBench& find_kernel_bench(const std::string& name) {
  std::string names;
  for (const KernelBench& b : kernel_benches()) {
    if (b.name == name) return b;
    names += (names.empty() ? "" : ", ") + b.name;
  }
  throw InputError(str_cat("bench kernel: unknown kernel '", name, "'; known: ", names, ", all"));
}

}  // namespace lowbit::bench
