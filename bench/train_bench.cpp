// `lowbit bench train`: full training steps of a registered model on one synthetic batch.
//
// bf16 mode is the trainer's `amp: bf16`: the step runs under an AutocastGuard
// (core/autocast.h), so convolutions and linear layers cast their f32 inputs and weights to bf16
// on the fly, BN computes its statistics in f32 and returns bf16, the logits are cast to f32 for
// the loss, and the parameters, gradients and SGD stay f32. The casts are part of the timed
// step, as autocast's are in PyTorch.
#include <sys/resource.h>

#include <chrono>
#include <memory>
#include <utility>
#include <vector>

#include "bench/bench.h"
#include "core/autocast.h"
#include "core/autograd.h"
#include "core/random.h"
#include "cuda/caching_allocator.h"
#include "dist/process_group.h"
#include "layers/basic.h"
#include "layers/conv2d.h"
#include "models/registry.h"
#include "quant/convert.h"
#include "quant/mixed.h"
#include "train/ddp.h"
#include "train/loss.h"
#include "train/optimizer.h"

namespace lowbit::bench {

namespace {

int64_t peak_rss_bytes() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return int64_t(ru.ru_maxrss) * 1024;  // Linux reports KiB
}

}  // namespace

TrainResult run_train_bench(const TrainOptions& o) {
  LOWBIT_CHECK_INPUT(o.batch > 0 && o.hw > 0 && o.cin > 0 && o.classes > 1,
                     "bench train: --batch, --hw and --cin must be positive and --classes > 1; "
                     "got batch ",
                     o.batch, ", hw ", o.hw, ", cin ", o.cin, ", classes ", o.classes);
  LOWBIT_CHECK_INPUT(o.steps >= 1 && o.warmup >= 0, "bench train: --steps ", o.steps,
                     " must be >= 1 and --warmup ", o.warmup, " >= 0");
  LOWBIT_CHECK_INPUT(o.mode == "fp32" || o.mode == "bf16" || o.mode == "qat" || o.mode == "search",
                     "bench train: --mode must be fp32, bf16, qat or search, got '", o.mode, "'");
  LOWBIT_CHECK_INPUT(o.amp == "off" || o.amp == "bf16",
                     "bench train: --amp must be off or bf16, got '", o.amp, "'");
  const bool bf16 = o.mode == "bf16" || o.amp == "bf16";  // --mode bf16 is fp32 with --amp bf16
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
    qc.weight = {o.quantizer, quant::QuantizerOptions{{"bits", std::to_string(o.bits)},
                                                      {"per_channel", "true"}}};
    qc.activation = {o.quantizer, quant::QuantizerOptions{{"bits", std::to_string(o.bits)}}};
    quant::quantize_model(*model, qc,
                          randn({2, o.hw, o.hw, o.cin}, TensorOptions(DType::f32, dev)));
  }

  // search: every conv and linear a mixed layer of the default candidates (binary, 8-bit; one
  // BN per candidate), and each step adds the alpha step of the search (train/search.cpp): a
  // forward and backward on the same batch for the alphas alone, then their AdamW step.
  const bool search = o.mode == "search";
  std::vector<Tensor> alphas, weights;
  if (search) {
    const quant::SearchPlan plan = quant::plan_search(
        *model, quant::SearchSpec(), randn({2, o.hw, o.hw, o.cin}, TensorOptions(DType::f32, dev)));
    quant::apply_search_plan(*model, plan);
    model->to(dev);
    alphas = quant::search_parameters(*model);
    for (Tensor& a : alphas) a.requires_grad_(false);
  }
  std::unique_ptr<train::AdamW> alpha_opt;
  if (search)
    alpha_opt = std::make_unique<train::AdamW>(
        std::vector<train::ParamGroup>{train::ParamGroup(alphas, 3e-4, 1e-3)});

  AutocastGuard amp(bf16 ? std::optional<DType>(DType::bf16) : std::nullopt);
  std::vector<Tensor> params;
  for (const Tensor& p : model->parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  train::SGD opt({train::ParamGroup(params, 0.01, 5e-4)}, train::SgdOptions{0.9, 0.0, false});

  Tensor images = randn({o.batch, o.hw, o.hw, o.cin}, TensorOptions(DType::f32, dev));
  const Tensor labels = randint(0, o.classes, {o.batch}, TensorOptions(DType::i64, dev));

  // Data-parallel under mpirun: rank 0's weights everywhere, gradients averaged in buckets
  // (a world of one: no hooks, the plain step).
  dist::ProcessGroup& group = dist::process_group(dev);
  train::broadcast_module(*model, group);
  train::GradientReducer reducer(params, group, int64_t(o.bucket_mb * 1024 * 1024));

  // The loss stays inside the step, so each step's graph is freed before the next forward
  // (as in the trainer); only its value is kept.
  Tensor last_loss;
  auto step = [&] {
    Tensor logits = model->forward(images);
    Tensor loss = train::cross_entropy(train::loss_precision(logits), labels);
    opt.zero_grad();
    loss.backward();
    reducer.finish();
    opt.step();
    if (qat) quant::clamp_quantizer_parameters(*model);
    last_loss = loss.detach();
    if (search) {
      for (Tensor& w : params) w.requires_grad_(false);
      for (Tensor& a : alphas) a.requires_grad_(true);
      alpha_opt->zero_grad();
      train::cross_entropy(train::loss_precision(model->forward(images)), labels).backward();
      alpha_opt->step();
      for (Tensor& a : alphas) a.requires_grad_(false);
      for (Tensor& w : params) w.requires_grad_(true);
    }
  };

  for (int64_t i = 0; i < o.warmup; ++i) step();
  synchronize(dev);
  group.barrier();
  const double wait0 = reducer.wait_seconds();
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
  r.world_size = group.size();
  r.images_per_s = double(o.batch * o.steps * group.size()) / seconds;
  r.comm_wait_share = (reducer.wait_seconds() - wait0) / seconds;
  r.final_loss = last_loss.item();
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
