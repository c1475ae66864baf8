// `lowbit bench train`: full training steps of a registered model on one synthetic batch.
//
// bf16 mode is AMP-style mixed precision without an autocast: the Conv2d and Linear modules
// hold bf16 copies of their weights, every other tensor (BN parameters and statistics) stays
// f32, and the optimizer updates f32 master copies. Each step: forward in bf16 (BN computes its
// statistics in f32 and returns bf16), logits cast to f32 for the loss, backward, the bf16
// weight gradients cast into the masters' .grad, SGD on the masters, masters cast back into the
// modules. The casts are part of the timed step, as autocast's are in PyTorch.
#include <sys/resource.h>

#include <chrono>
#include <memory>
#include <utility>
#include <vector>

#include "bench/bench.h"
#include "core/autograd.h"
#include "core/random.h"
#include "cuda/caching_allocator.h"
#include "layers/basic.h"
#include "layers/conv2d.h"
#include "models/registry.h"
#include "quant/convert.h"
#include "train/loss.h"
#include "train/optimizer.h"

namespace lowbit::bench {

namespace {

int64_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return int64_t(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

// The bf16 compute weights and their f32 masters.
struct MasterWeights {
  std::vector<std::pair<Tensor, Tensor>> pairs;  // (module's bf16 parameter, f32 master)

  // Casts the weights of every Conv2d and Linear of `model` to bf16 and returns the tensors the
  // optimizer updates: the f32 masters of those, and every other parameter as it is.
  std::vector<Tensor> convert(layers::Module& model) {
    for (auto& [name, m] : model.named_modules()) {
      if (dynamic_cast<layers::Conv2d*>(m.get()) || dynamic_cast<layers::Linear*>(m.get())) {
        m->to(DType::bf16);
      }
    }
    std::vector<Tensor> opt_params;
    autograd::NoGradGuard no_grad;
    for (const Tensor& p : model.parameters()) {
      if (p.dtype() == DType::f32) {
        opt_params.push_back(p);
        continue;
      }
      Tensor master = p.detach().to(DType::f32).requires_grad_();
      pairs.emplace_back(p, master);
      opt_params.push_back(master);
    }
    return opt_params;
  }
  void grads_to_masters() const {
    autograd::NoGradGuard no_grad;
    for (auto& [p, master] : pairs) {
      const Tensor g = p.grad();
      master.set_grad(g.defined() ? g.to(DType::f32) : Tensor());
    }
  }
  void masters_to_weights() const {
    autograd::NoGradGuard no_grad;
    for (auto& [p, master] : pairs) {
      Tensor dst = p;
      dst.copy_(master);
    }
  }
};

}  // namespace

TrainResult run_train_bench(const TrainOptions& o) {
  LOWBIT_CHECK_INPUT(o.batch > 0 && o.hw > 0 && o.cin > 0 && o.classes > 1,
                     "bench train: --batch, --hw and --cin must be positive and --classes > 1; "
                     "got batch ",
                     o.batch, ", hw ", o.hw, ", cin ", o.cin, ", classes ", o.classes);
  LOWBIT_CHECK_INPUT(o.steps >= 1 && o.warmup >= 0, "bench train: --steps ", o.steps,
                     " must be >= 1 and --warmup ", o.warmup, " >= 0");
  LOWBIT_CHECK_INPUT(o.mode == "fp32" || o.mode == "bf16" || o.mode == "qat",
                     "bench train: --mode must be fp32, bf16 or qat, got '", o.mode, "'");
  const bool bf16 = o.mode == "bf16";
  LOWBIT_CHECK_INPUT(!bf16 || o.device.is_cuda(),
                     "bench train: --mode bf16 needs --device cuda: the CPU convolution is "
                     "f32-only for now");
  const Device dev = o.device;
  if (dev.is_cuda()) cuda::device_allocator(dev.index).reset_peak();

  manual_seed(o.seed);
  models::ModelOptions mo;
  mo.num_classes = o.classes;
  mo.in_channels = o.cin;
  mo.input_size = o.hw;
  layers::ModulePtr model = models::create_model(o.model, mo);
  model->to(dev);
  model->train();
  const bool qat = o.mode == "qat";
  if (qat) {
    quant::QuantConfig qc;
    qc.weight = {o.quantizer, quant::QuantizerOptions{{"bits", std::to_string(o.bits)}, {"per_channel", "true"}}};
    qc.activation = {o.quantizer, quant::QuantizerOptions{{"bits", std::to_string(o.bits)}}};
    quant::quantize_model(*model, qc, randn({2, o.hw, o.hw, o.cin}, TensorOptions(DType::f32, dev)));
  }

  MasterWeights masters;
  std::vector<Tensor> params = bf16 ? masters.convert(*model) : model->parameters();
  train::SGD opt({train::ParamGroup(params, 0.01, 5e-4)}, train::SgdOptions{0.9, 0.0, false});

  Tensor images = randn({o.batch, o.hw, o.hw, o.cin}, TensorOptions(DType::f32, dev));
  if (bf16) images = images.to(DType::bf16);
  const Tensor labels = randint(0, o.classes, {o.batch}, TensorOptions(DType::i64, dev));

  Tensor loss;
  auto step = [&] {
    Tensor logits = model->forward(images);
    loss = train::cross_entropy(bf16 ? logits.to(DType::f32) : logits, labels);
    opt.zero_grad();
    if (bf16) model->zero_grad();
    loss.backward();
    if (bf16) masters.grads_to_masters();
    opt.step();
    if (qat) quant::clamp_quantizer_parameters(*model);
    if (bf16) masters.masters_to_weights();
  };

  for (int64_t i = 0; i < o.warmup; ++i) step();
  synchronize(dev);
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < o.steps; ++i) step();
  synchronize(dev);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  TrainResult r;
  r.options = o;
  r.threads = threads();
  r.params = model->num_parameters();
  r.ms_per_step = 1e3 * seconds / double(o.steps);
  r.images_per_s = double(o.batch * o.steps) / seconds;
  r.final_loss = loss.item();
  if (dev.is_cuda()) {
    r.peak_mem_bytes = cuda::device_allocator(dev.index).stats().peak_allocated_bytes;
    r.peak_mem_kind = "cuda caching allocator peak";
  } else {
    r.peak_mem_bytes = peak_rss_bytes();
    r.peak_mem_kind = "peak RSS";
  }
  return r;
}

}  // namespace lowbit::bench
