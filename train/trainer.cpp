// The staged trainer. The loop has no host sync except at logging points (every
// log_interval steps and at epoch ends), where loss and accuracy sums are read back.
#include "train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/backend.h"
#include "core/ops.h"
#include "core/random.h"
#include "dist/process_group.h"
#include "dist/world.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "models/registry.h"
#include "prune/precrop.h"
#include "prune/prune.h"
#include "prune/surgery.h"
#include "quant/accounting.h"
#include "quant/convert.h"
#include "quant/mixed.h"
#include "train/checkpoint_meta.h"
#include "train/data_setup.h"
#include "train/ddp.h"
#include "train/loss.h"
#include "train/optimizer.h"
#include "train/progress.h"
#include "train/registries.h"
#include "train/run_log.h"
#include "train/run_support.h"
#include "train/safetensors.h"
#include "train/schedule.h"

#ifndef LOWBIT_GIT_COMMIT
#define LOWBIT_GIT_COMMIT "unknown"
#endif

namespace lowbit::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

Device resolve_device(const std::string& spec) {
  const int n = core::cuda_device_count();
  const dist::WorldInfo& w = dist::world();
  // A data-parallel rank takes the GPU of its local rank (one GPU per rank).
  const bool per_rank =
      w.size > 1 && (spec == "cuda" || ((spec.empty() || spec == "auto") && n > 0));
  if (per_rank) {
    // One GPU visible to several local ranks means the launcher gave each its own
    // (CUDA_VISIBLE_DEVICES per task): it is cuda:0 for every rank.
    if (n == 1 && w.local_size > 1) return Device::cuda(0);
    LOWBIT_CHECK_INPUT(
        w.local_rank < n, "device '", spec, "': rank ", w.rank, " is local rank ", w.local_rank,
        " of ", w.local_size, " on this host but only ", n,
        " CUDA device(s) are visible; start at most one rank per GPU (mpirun -np / srun"
        " --ntasks-per-node), or use --device cpu");
    return Device::cuda(w.local_rank);
  }
  LOWBIT_CHECK_INPUT(
      w.size == 1 || spec.rfind("cuda:", 0) != 0, "device '", spec, "' with ", w.size,
      " ranks would put every rank on one GPU; use --device cuda (each rank takes the GPU of"
      " its local rank)");
  if (spec.empty() || spec == "auto") return n > 0 ? Device::cuda(0) : Device::cpu();
  Device d = Device::parse(spec);
  if (d.is_cuda()) {
    LOWBIT_CHECK_INPUT(
        d.index < n, "device '", spec, "' was asked for but ", n, " CUDA device(s) are visible",
        n == 0 ? " (no GPU, no driver, or a CPU-only build); use --device cpu or auto" : "");
  }
  return d;
}

namespace {

std::shared_ptr<LrSchedule> make_schedule(const ScheduleConfig& c, double base_lr,
                                          int64_t steps_per_epoch, int64_t epochs) {
  ScheduleContext ctx{base_lr, steps_per_epoch, std::max<int64_t>(1, steps_per_epoch * epochs)};
  std::shared_ptr<LrSchedule> s = schedule_registry().get(c.name)(c, ctx);
  if (c.warmup_epochs > 0) {
    s = std::make_shared<LinearWarmup>(s, ctx.steps(c.warmup_epochs), c.warmup_start_factor);
  }
  return s;
}

std::unique_ptr<Optimizer> make_optimizer(const OptimizerConfig& c, layers::Module& model,
                                          const StageLoop* loop = nullptr) {
  ParamGroup decay{{}, c.lr, c.weight_decay, "decay"};
  ParamGroup no_decay{{}, c.lr, 0.0, "no_decay"};
  for (auto& [name, p] : model.named_parameters()) {
    if (loop && loop->owns(p)) continue;
    (c.no_decay_bn_bias && p.dim() <= 1 ? no_decay : decay).params.push_back(p);
  }
  return optimizer_registry().get(c.name)({decay, no_decay}, c);
}

// Fault injection for the failure tests of distributed runs (docs/distributed.md): the
// environment variable LOWBIT_FAULT=ACTION:RANK:EPOCH:BATCH makes rank RANK, when it reaches
// batch BATCH (1-based) of the run's epoch EPOCH (1-based), throw (a runtime error), kill itself
// (SIGKILL, as the OOM killer would) or hang (sleep, as a stuck rank). Unset: nothing happens.
struct Fault {
  std::string action;
  int64_t rank = -1, epoch = -1, batch = -1;
};

Fault parse_fault() {
  Fault f;
  const char* v = std::getenv("LOWBIT_FAULT");
  if (!v || !*v) return f;
  std::vector<std::string> parts;
  std::stringstream ss(v);
  for (std::string p; std::getline(ss, p, ':');) parts.push_back(p);
  LOWBIT_CHECK_INPUT(
      parts.size() == 4 && (parts[0] == "throw" || parts[0] == "kill" || parts[0] == "hang"),
      "LOWBIT_FAULT='", v, "': wants ACTION:RANK:EPOCH:BATCH with ACTION throw, kill or hang");
  f.action = parts[0];
  const uint64_t max = uint64_t(std::numeric_limits<int64_t>::max());
  f.rank = int64_t(parse_count(parts[1], "LOWBIT_FAULT rank", max));
  f.epoch = int64_t(parse_count(parts[2], "LOWBIT_FAULT epoch", max));
  f.batch = int64_t(parse_count(parts[3], "LOWBIT_FAULT batch", max));
  return f;
}

void maybe_fault(const Fault& f, int64_t epoch, int64_t batch) {
  if (f.action.empty() || f.rank != dist::rank() || f.epoch != epoch || f.batch != batch) return;
  if (f.action == "throw")
    throw Error(str_cat("LOWBIT_FAULT: injected failure at epoch ", epoch, " batch ", batch));
  std::fprintf(stderr, "lowbit: %sLOWBIT_FAULT: %s at epoch %lld batch %lld\n",
               dist::rank_prefix().c_str(), f.action.c_str(), static_cast<long long>(epoch),
               static_cast<long long>(batch));
  std::fflush(stderr);
  if (f.action == "kill") ::raise(SIGKILL);
  for (;;) ::pause();
}

struct Position {
  int64_t stage = 0;
  int64_t epoch = 0;         // epochs completed in `stage`
  int64_t global_epoch = 0;  // epochs completed in the run (the loader's epoch counter)
  // Inside the epoch in progress (checkpoint_every): batches done (0 at an epoch boundary), the
  // last optimizer step done, and the epoch's sums over every rank so far.
  int64_t batch = 0;
  int64_t last_step = -1;
  double loss_sum = 0.0, correct = 0.0, seen = 0.0, elapsed_s = 0.0;
};

const char* kCheckpoint = "checkpoint.safetensors";

}  // namespace

void add_structure_meta(const ModelState& ms, std::map<std::string, std::string>* meta) {
  if (ms.pruned) (*meta)["pruned"] = "1";
  if (ms.quantized) (*meta)["quant_plan"] = ms.plan.str();
  if (!ms.search_plan.empty()) (*meta)["search_plan"] = ms.search_plan;
  if (!ms.search_rules.empty()) (*meta)["search_rules"] = quant::rules_str(ms.search_rules);
  if (!ms.stage_results.empty()) (*meta)["stage_results"] = ms.stage_results;
}

std::map<std::string, Tensor> with_prefix(const std::map<std::string, Tensor>& all,
                                          const std::string& prefix);

// Rebuilds the structure recorded in a file's metadata on a freshly built float model: pruned
// channel shapes first (pruning runs on the float model), then the quantization plan.
void apply_structure_meta(layers::Module& model, ModelState* ms, const SafetensorsFile& f,
                          const std::string& path, bool resume) {
  try {
    auto pr = f.metadata.find("pruned");
    if (pr != f.metadata.end() && pr->second == "1" && !ms->pruned && !ms->quantized) {
      auto w = with_prefix(f.tensors, "model.");
      if (w.empty()) w = f.tensors;
      prune::apply_channel_shapes(model, w, layers::Layout::pytorch);
      ms->pruned = true;
    }
    // A finished search's choices and results belong to the run (not to a stage's init file).
    auto rules = f.metadata.find("search_rules");
    if (resume && rules != f.metadata.end()) ms->search_rules = quant::parse_rules(rules->second);
    auto results = f.metadata.find("stage_results");
    if (resume && results != f.metadata.end()) ms->stage_results = results->second;
    auto sp = f.metadata.find("search_plan");
    if (sp != f.metadata.end() && ms->search_plan.empty() && !ms->quantized) {
      quant::apply_search_plan(model, quant::SearchPlan::parse(sp->second));
      ms->search_plan = sp->second;
    }
    auto it = f.metadata.find("quant_plan");
    if (it == f.metadata.end() || ms->quantized) return;
    ms->plan = quant::QuantPlan::parse(it->second);
    quant::apply_quant_plan(model, ms->plan);
  } catch (const InputError& e) {
    throw InputError(str_cat(path, ": ", e.what()));
  }
  ms->quantized = true;
}

void save_checkpoint(const fs::path& out, layers::Module& model, const Optimizer* opt,
                     const Position& pos, const ExperimentConfig& cfg, Device dev,
                     const ModelState& ms, const StageLoop* loop = nullptr) {
  std::map<std::string, Tensor> t;
  for (auto& [k, v] : model.state_dict(layers::Layout::pytorch)) t["model." + k] = v;
  if (opt) {
    for (auto& [k, v] : opt->state_dict()) t["optim." + k] = v;
  }
  if (loop) {
    for (auto& [k, v] : loop->state_dict()) t["stage." + k] = v;
  }
  std::map<std::string, std::string> meta;
  meta["format"] = "lowbit-checkpoint-1";
  meta["stage"] = std::to_string(pos.stage);
  meta["epoch"] = std::to_string(pos.epoch);
  meta["global_epoch"] = std::to_string(pos.global_epoch);
  meta["world_size"] = std::to_string(dist::world_size());
  if (pos.batch > 0) {
    meta["batch"] = std::to_string(pos.batch);
    meta["last_step"] = std::to_string(pos.last_step);
    nlohmann::json sums{{"loss_sum", pos.loss_sum},
                        {"correct", pos.correct},
                        {"seen", pos.seen},
                        {"elapsed_s", pos.elapsed_s}};
    meta["epoch_sums"] = sums.dump();
  }
  Generator& cpu = default_generator(Device::cpu());
  meta["rng_cpu"] = std::to_string(cpu.seed()) + "," + std::to_string(cpu.offset());
  if (dev.is_cuda()) {
    Generator& g = default_generator(dev);
    meta["rng_device"] = std::to_string(g.seed()) + "," + std::to_string(g.offset());
  }
  meta["config"] = cfg.raw_yaml;
  add_structure_meta(ms, &meta);
  save_safetensors((out / kCheckpoint).string(), t, meta);
}

std::map<std::string, Tensor> with_prefix(const std::map<std::string, Tensor>& all,
                                          const std::string& prefix) {
  std::map<std::string, Tensor> out;
  for (auto& [k, v] : all) {
    if (k.rfind(prefix, 0) == 0) out[k.substr(prefix.size())] = v;
  }
  return out;
}

// Loads model weights from a full checkpoint ("model." keys) or a weights-only file.
// Weights with a NaN or an infinity are refused, naming the tensor: such a file comes from a
// diverged run, and evaluating, pruning or training from it would only report nonsense later.
void check_finite_weights(const std::map<std::string, Tensor>& w, const std::string& path) {
  for (const auto& [name, t] : w) {
    if (!is_floating(t.dtype())) continue;
    const Tensor h = t.to(Device::cpu(), DType::f32).contiguous();
    const float* p = h.data<float>();
    for (int64_t i = 0; i < h.numel(); ++i) {
      LOWBIT_CHECK_INPUT(std::isfinite(p[i]), path, ": tensor '", name, "' holds ", p[i],
                         " at element ", i, " (of ", h.numel(),
                         "); the weights are not usable (a diverged run?)");
    }
  }
}

void load_weights(layers::Module& model, const SafetensorsFile& f, const std::string& path) {
  auto w = with_prefix(f.tensors, "model.");
  if (w.empty()) w = f.tensors;
  check_finite_weights(w, path);
  try {
    model.load_state_dict(w, true, layers::Layout::pytorch);
  } catch (const InputError& e) {
    throw InputError(str_cat(path, ": ", e.what()));
  }
}

std::string fmt(double v, int prec) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(prec) << v;
  return os.str();
}

// The process-wide CPU settings of a run: `threads:` (when > 0) and `cpu_conv:`.
// Ranks sharing a host split its cores when `threads:` is 0: N ranks of all cores each would
// oversubscribe the machine N times over (OpenMP's spinning threads then crawl).
void apply_cpu_settings(const ExperimentConfig& cfg) {
  const dist::WorldInfo& w = dist::world();
  const char* omp_env = std::getenv("OMP_NUM_THREADS");
  if (cfg.threads > 0) {
    omp_set_num_threads(int(cfg.threads));
  } else if (w.local_size > 1 && !(omp_env && *omp_env)) {
    // A rank bound to some cores (mpirun's default, srun --cpus-per-task) uses those; an unbound
    // one takes its share of the host.
    const int procs = omp_get_num_procs();
    const bool bound = procs < int(std::thread::hardware_concurrency());
    omp_set_num_threads(bound ? procs : std::max(1, procs / w.local_size));
  }
  layers::set_cpu_conv_algo(layers::parse_cpu_conv_algo(cfg.cpu_conv, cfg.file + ": cpu_conv"));
}

// Mixed precision of a run (`amp:`, core/autocast.h): none, bf16 or f16.
std::optional<DType> amp_dtype(const ExperimentConfig& cfg) {
  if (cfg.amp == "off") return std::nullopt;
  return parse_dtype(cfg.amp);
}

// Sums on the host, over the ranks of a data-parallel run (the identity alone).
void all_reduce_sums(std::vector<double>& v) {
  if (!dist::is_distributed()) return;
  Tensor t = empty({int64_t(v.size())}, TensorOptions(DType::f64));
  std::copy(v.begin(), v.end(), t.data<double>());
  dist::process_group(Device::cpu()).all_reduce(t, dist::ReduceOp::sum);
  std::copy(t.data<double>(), t.data<double>() + v.size(), v.begin());
}

// Top-1/top-5 and mean loss over the whole test set: each rank evaluates its shard (no padding,
// data/loader.h) and the counts are summed over the ranks, so the result is the one-process one.
EvalResult evaluate(layers::Module& model, DataSource& data, Device dev, int64_t max_samples) {
  autograd::NoGradGuard guard;
  model.eval();
  EvalResult r;
  Tensor loss_sum = zeros({}, TensorOptions(DType::f64, dev));
  Tensor top1 = zeros({}, TensorOptions(DType::f64, dev)),
         top5 = zeros({}, TensorOptions(DType::f64, dev));
  data.test->reset();
  Batch b;
  int64_t samples = 0;
  while ((max_samples <= 0 || samples < max_samples) && data.test->next(b)) {
    Tensor logits = loss_precision(model.forward(b.images));
    const int64_t n = b.labels.size(0);
    loss_sum = loss_sum + cross_entropy(logits, b.labels).to(DType::f64) * double(n);
    top1 = top1 + topk_correct(logits, b.labels, 1).to(DType::f64);
    top5 =
        top5 + topk_correct(logits, b.labels, std::min<int64_t>(5, logits.size(1))).to(DType::f64);
    samples += n;
  }
  model.train();
  std::vector<double> sums{loss_sum.item(), top1.item(), top5.item(), double(samples)};
  all_reduce_sums(sums);
  r.samples = int64_t(sums[3]);
  if (r.samples > 0) {
    r.loss = sums[0] / double(r.samples);
    r.top1 = sums[1] / double(r.samples);
    r.top5 = sums[2] / double(r.samples);
  }
  return r;
}

// The model section's options; what it leaves at 0 comes from the data's geometry.
models::ModelOptions model_options(const ExperimentConfig& cfg, const DatasetGeometry& g) {
  models::ModelOptions mo;
  mo.num_classes = cfg.model.num_classes > 0 ? cfg.model.num_classes : g.classes;
  mo.in_channels = cfg.model.in_channels > 0 ? cfg.model.in_channels : g.channels;
  mo.input_size = cfg.model.input_size > 0 ? cfg.model.input_size : g.hw;
  mo.width_mult = cfg.model.width_mult;
  mo.shortcut = cfg.model.shortcut;
  mo.dropout = cfg.model.dropout;
  return mo;
}

layers::ModulePtr build_model(const ExperimentConfig& cfg, const DataSource& data) {
  const models::ModelOptions mo =
      model_options(cfg, DatasetGeometry{data.image_size, data.channels, data.num_classes});
  LOWBIT_CHECK_INPUT(mo.in_channels == data.channels, cfg.file, ": model.in_channels ",
                     mo.in_channels, " does not match the dataset's ", data.channels, " channels");
  LOWBIT_CHECK_INPUT(mo.num_classes >= data.num_classes, cfg.file, ": model.num_classes ",
                     mo.num_classes, " is smaller than the dataset's ", data.num_classes,
                     " classes (labels up to ", data.num_classes - 1, ")");
  return models::create_model(cfg.model.name, mo);
}

std::string now_iso() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// The start of stage s (not when resuming in its middle): load its init weights, convert the
// model for a first QAT stage, and calibrate the quantizers this stage turns on for the first
// time (weights when the model was just converted; activations when the previous stage did not
// quantize them). Decisions depend on the config only, so a resumed run makes the same ones.
void write_prune_report(const prune::PruneReport& rep, const fs::path& out,
                        const std::string& stage, bool print) {
  const std::string table = rep.table();
  if (print) std::printf("%s", table.c_str());
  std::ofstream(out / ("prune_report_" + stage + ".txt")) << table;
  std::ofstream(out / ("prune_report_" + stage + ".json")) << rep.to_json().dump(2) << "\n";
}

namespace {

// kind: prune (docs/methods.md, "PfQ" step 2): prunes the float model with the prune: section at
// the start.
void prepare_prune_stage(StageContext& c) {
  const Shape sample{c.data.image_size, c.data.image_size, c.data.channels};
  prune::PruneReport rep =
      prune::prune_model(c.model, c.cfg.prune, sample, c.batches(c.cfg.prune_calibration_batches));
  c.model.to(c.dev);
  c.ms.pruned = true;
  if (dist::is_root()) write_prune_report(rep, c.out_dir, c.config().name, c.progress);
}

// kind: precrop (prune/precrop.h): PreCropping or one of its baselines at the stage's start, on
// the model as built (at initialization) or as its init: loaded it. Every rank plans; rank 0's
// channel counts are applied everywhere (SNIP's batches differ by rank), then run_stage
// broadcasts rank 0's values (the re-initialised weights, pai's masks).
void prepare_precrop_stage(StageContext& c) {
  const Shape sample{c.data.image_size, c.data.image_size, c.data.channels};
  const prune::PrecropOptions& o = c.config().precrop;
  std::function<Tensor(layers::Module&)> loss;
  if (o.score == "snip") {
    c.data.train->set_epoch(c.global_epoch);
    c.data.train->reset();
    DataLoader* loader = c.data.train.get();
    const Device dev = c.dev;
    const std::string file = c.cfg.file;
    loss = [loader, dev, file](layers::Module& m) {
      Batch b;
      LOWBIT_CHECK_INPUT(loader->next(b), file,
                         ": precrop.snip_batches: the training set has "
                         "fewer batches");
      return cross_entropy(m.forward(b.images.to(dev)), b.labels.to(dev));
    };
  }
  prune::PrecropPlan plan = prune::plan_precrop(c.model, o, sample, loss);
  if (dist::is_distributed() && !plan.kept.empty()) {
    std::vector<float> counts;
    for (const auto& [gid, k] : plan.kept) counts.push_back(float(k));
    Tensor t = from_vector(counts, {int64_t(counts.size())}).to(c.dev);
    c.group.broadcast(t, 0);
    const std::vector<float> root = t.to(Device::cpu()).to_vector<float>();
    size_t i = 0;
    for (auto& [gid, k] : plan.kept) k = int64_t(root[i++]);
  }
  prune::apply_precrop(c.model, plan, sample);
  c.model.to(c.dev);
  c.ms.pruned = true;  // new channel shapes, or the masks' buffers
  json rec = plan.report.to_json();
  c.report(rec);
  if (dist::is_root()) {
    const std::string table = plan.report.table();
    if (c.progress) std::printf("%s", table.c_str());
    std::ofstream(c.out_dir / ("precrop_report_" + c.config().name + ".txt")) << table;
    std::ofstream(c.out_dir / ("precrop_report_" + c.config().name + ".json"))
        << rec.dump(2) << "\n";
  }
}

// kind: qat: the first one converts the model with the quant: rules; calibrates the quantizers
// this stage turns on for the first time (weights when the model was just converted; activations
// when the previous stage did not quantize them).
void prepare_qat_stage(StageContext& c) {
  const StageConfig& st = c.config();
  bool calibrate_weights = false;
  if (!c.ms.quantized) {
    Tensor probe;
    auto next = c.batches(1);
    LOWBIT_CHECK_INPUT(next(probe), c.cfg.file, ": the training set is empty");
    // The probe decides structure (signed or unsigned activation quantizers): rank 0's for all.
    probe = probe.contiguous();
    c.group.broadcast(probe, 0);
    // A mixed-precision search before this stage chose each searched layer's weight
    // quantizer; its rules come after the config's (quant/mixed.h).
    quant::QuantConfig qc = c.cfg.quant;
    qc.rules.insert(qc.rules.end(), c.ms.search_rules.begin(), c.ms.search_rules.end());
    c.ms.plan = quant::quantize_model(c.model, qc, probe);
    c.ms.quantized = true;
    c.model.to(c.dev);
    calibrate_weights = true;
  }
  const StageConfig* prev = c.stage > 0 ? &c.cfg.stages[size_t(c.stage - 1)] : nullptr;
  const bool acts_were_on =
      prev && stage_kind_registry().get(prev->kind).quantizes && prev->quantize == "all";
  const bool calibrate_acts = st.quantize == "all" && !acts_were_on;
  int64_t n = c.cfg.quant.calibration_batches;
  if (n == 0 && dist::is_distributed() && (calibrate_weights || calibrate_acts)) {
    // Quantizers left to initialise on their first training batch would each see their own
    // rank's shard (percentile and MSE observers); one calibration batch, then rank 0's ranges
    // for all (broadcast at the stage start), keeps the ranks identical.
    n = 1;
    if (dist::is_root()) {
      std::fprintf(
          stderr,
          "lowbit: quant.calibration_batches: 0 with %d ranks: calibrating on 1 batch so every"
          " rank starts from the same ranges\n",
          dist::world_size());
    }
  }
  if ((calibrate_weights || calibrate_acts) && n > 0) {
    quant::calibrate_model(c.model, c.batches(n), n, calibrate_weights, calibrate_acts);
  }
}

// stages[].kind (train/registries.h).
const bool kStageKindsRegistered = [] {
  auto& r = stage_kind_registry();
  StageKind train;
  train.what = "train the model as it is (float, or quantized after a qat stage)";
  train.prepare = [](StageContext&) {};
  r.add("train", train);
  StageKind qat;
  qat.what = "quantization-aware training; the first converts the model with the quant: rules";
  qat.quantizes = true;
  qat.needs_quant = true;
  qat.prepare = prepare_qat_stage;
  r.add("qat", qat);
  StageKind prune;
  prune.what = "prune the float model with the prune: section at the start, then train `epochs`";
  prune.needs_prune = true;
  prune.before_quantization = true;
  prune.prepare = prepare_prune_stage;
  r.add("prune", prune);
  StageKind precrop;
  precrop.what =
      "PreCropping at the start (precrop: method, score, budget): crop channels to a score's layer "
      "densities (or mask / crop randomly, the baselines), re-initialise, then train `epochs`";
  precrop.before_quantization = true;
  precrop.prepare = prepare_precrop_stage;
  r.add("precrop", precrop);
  return true;
}();

// The start of stage s (not when resuming in its middle): load its init weights, then what its
// kind prepares. Decisions depend on the config only, so a resumed run makes the same ones.
void prepare_stage(StageContext& c) {
  const StageConfig& st = c.config();
  const StageKind& kind = stage_kind_registry().get(st.kind);
  if (!st.init.empty()) {
    SafetensorsFile f = load_safetensors(st.init);
    apply_structure_meta(c.model, &c.ms, f, st.init);
    c.model.to(c.dev);
    load_weights(c.model, f, st.init);
  }
  LOWBIT_CHECK_INPUT(!kind.before_quantization || !c.ms.quantized, c.cfg.file, ": stage ", st.name,
                     ": kind ", st.kind,
                     " runs on the float model; put it before the stages that quantize");
  kind.prepare(c);
}

}  // namespace

namespace {

// One run of run_training, in the phases of its life: set up (device, world, data, model),
// resume, open the run folder, run each stage (prepare, then epochs of steps), write the results.
class TrainingRun {
 public:
  TrainingRun(const ExperimentConfig& cfg, const TrainerOptions& opts)
      : cfg_(cfg),
        opts_(opts),
        t0_(std::chrono::steady_clock::now()),
        world_(dist::world()),
        root_(world_.rank == 0),
        progress_(opts.progress && root_),
        dev_(resolve_device(opts.device.empty() ? cfg.device : opts.device)),
        host_group_(dist::process_group(Device::cpu())),
        out_(opts.out_dir) {}

  RunSummary run() {
    if (cfg_.dist.timeout_s > 0) dist::set_timeout(cfg_.dist.timeout_s);
    // Every rank must run the same experiment on the same kind of device: a different config,
    // --set or device is a bad launch (and would pair mismatched collectives below).
    check_same_on_all_ranks(
        std::hash<std::string>()(cfg_.raw_yaml + (dev_.is_cuda() ? "/cuda" : "/cpu")),
        str_cat(cfg_.file, ": the config (after --set) or the device kind"), host_group_, true);
    group_ = &dist::process_group(dev_);
    apply_cpu_settings(cfg_);
    AutocastGuard amp(amp_dtype(cfg_));
    set_up();
    resume();
    if (world_.size > 1) {
      // The ranks must agree on where they start and on how many batches they take, or their
      // collectives would not pair up.
      const std::string where =
          str_cat(resuming_, "/", pos_.stage, "/", pos_.epoch, "/", pos_.global_epoch, "/",
                  pos_.batch, "/", data_.train->dataset().size(), "/", data_.test->dataset().size(),
                  "/", batches_per_epoch_);
      check_same_on_all_ranks(
          std::hash<std::string>()(where),
          "the resume position or the data sizes (is the run folder or the data set not the same"
          " on every node?)",
          host_group_, true);
      // Different dropout masks on every rank, as one process draws them for the global batch
      // (rank 0 keeps the single-process stream; the offsets advance alike on every rank).
      for (Device d : {Device::cpu(), dev_}) {
        Generator& g = default_generator(d);
        g.set_state(g.seed() ^ (uint64_t(world_.rank) * 0x9e3779b97f4a7c15ULL), g.offset());
      }
    }
    open_run_folder();
    const Fault fault = parse_fault();
    for (int64_t s = pos_.stage; s < int64_t(cfg_.stages.size()) && !stopped_; ++s)
      run_stage(s, fault);
    finish();
    // The other ranks wait until rank 0 has written everything, so the job ends complete.
    host_group_.barrier();
    return summary_;
  }

 private:
  // Per-stage state of the loop.
  struct Stage {
    const StageConfig& st;
    const StageKind& kind;
    int64_t index;
    int64_t steps_per_epoch;  // optimizer steps
    std::unique_ptr<Optimizer> opt;
    std::shared_ptr<LrSchedule> sched;
    std::unique_ptr<GradientReducer> reducer;
    std::unique_ptr<StageLoop> loop;  // kinds that change the loop (kind: search)
    DataLoader* loader = nullptr;     // the weight steps' batches
    int64_t batches = 0;              // per epoch, of loader
  };

  void set_up() {
    manual_seed(cfg_.seed);
    data_ = make_data(cfg_, dev_);
    validate_stage_inputs();
    model_ = build_model(cfg_, data_);
    model_->to(dev_);
    model_->train();
    sample_ = Shape{data_.image_size, data_.image_size, data_.channels};
    batches_per_epoch_ = data_.train->size();
    LOWBIT_CHECK_INPUT(batches_per_epoch_ > 0, cfg_.file,
                       ": an epoch has no training batch on rank ", world_.rank);
    summary_.device = dev_.str();
  }

  // What can fail hours later is checked before anything is trained or written: every stage's
  // init: file exists, and the quant: rules convert the model (a dry run on a fresh CPU copy,
  // rules added one at a time so an error names quant.rules.N). The RNG state is kept.
  void validate_stage_inputs() const {
    bool quantizes = false;
    for (size_t i = 0; i < cfg_.stages.size(); ++i) {
      const StageConfig& st = cfg_.stages[i];
      quantizes = quantizes || stage_kind_registry().get(st.kind).quantizes;
      if (st.init.empty()) continue;
      std::error_code ec;
      LOWBIT_CHECK_INPUT(fs::is_regular_file(st.init, ec), cfg_.file, ": stages.", i, ".init: '",
                         st.init, "' is not a file");
      std::ifstream probe(st.init, std::ios::binary);
      LOWBIT_CHECK_INPUT(probe.good(), cfg_.file, ": stages.", i, ".init: '", st.init,
                         "' cannot be read");
    }
    if (!quantizes || !cfg_.has_quant) return;
    Generator& g = default_generator(Device::cpu());
    const uint64_t seed = g.seed(), offset = g.offset();
    const auto converts = [&](size_t rules) {
      quant::QuantConfig q = cfg_.quant;
      q.rules.resize(rules);
      Shape sample;
      layers::ModulePtr m = build_model_offline(cfg_, &sample);
      try {
        quant::quantize_model(*m, q, zeros({2, sample[0], sample[1], sample[2]}));
      } catch (const InputError& e) {
        return std::string(e.what());
      }
      return std::string();
    };
    std::string err = converts(cfg_.quant.rules.size());
    if (!err.empty()) {
      size_t n = 0;
      while (n < cfg_.quant.rules.size() && converts(n).empty()) ++n;
      const std::string where = n == 0 ? "quant" : str_cat("quant.rules.", n - 1);
      g.set_state(seed, offset);
      throw InputError(str_cat(cfg_.file, ": ", where, ": ", converts(n)));
    }
    g.set_state(seed, offset);
  }

  // --resume: the position, structure, weights and RNG of the checkpoint. Every rank reads it
  // (the run folder must be on a filesystem they share).
  void resume() {
    const fs::path ckpt = out_ / kCheckpoint;
    resuming_ = opts_.resume && fs::exists(ckpt);
    if (opts_.resume && !resuming_ && root_) {
      std::fprintf(stderr, "lowbit: --resume: no %s yet, starting from scratch\n", ckpt.c_str());
    }
    if (!resuming_) return;
    resume_file_ = load_safetensors(ckpt.string());
    auto& m = resume_file_.metadata;
    const CheckpointMeta cm = parse_checkpoint_meta(m, ckpt.string());
    pos_.stage = cm.stage;
    pos_.epoch = cm.epoch;
    pos_.global_epoch = cm.global_epoch;
    LOWBIT_CHECK_INPUT(pos_.stage <= int64_t(cfg_.stages.size()), ckpt.string(), ": stage ",
                       pos_.stage, " of a config with ", cfg_.stages.size(), " stages");
    if (cm.mid_epoch) {  // a checkpoint inside an epoch
      pos_.batch = cm.batch;
      pos_.last_step = cm.last_step;
      // Rank 0 carries the sums of every rank so far; the others start theirs at zero.
      if (world_.rank == 0) {
        pos_.loss_sum = cm.loss_sum;
        pos_.correct = cm.correct;
        pos_.seen = cm.seen;
      }
      pos_.elapsed_s = cm.elapsed_s;
      LOWBIT_CHECK_INPUT(pos_.batch < batches_per_epoch_, ckpt.string(), ": batch ", pos_.batch,
                         " of an epoch that has ", batches_per_epoch_,
                         " batches here (another batch size or data?)");
    }
    apply_structure_meta(*model_, &ms_, resume_file_, ckpt.string(), true);
    model_->to(dev_);
    load_weights(*model_, resume_file_, ckpt.string());
    default_generator(Device::cpu()).set_state(cm.rng_cpu_seed, cm.rng_cpu_offset);
    if (dev_.is_cuda() && cm.has_rng_device) {
      default_generator(dev_).set_state(cm.rng_device_seed, cm.rng_device_offset);
    }
    if (root_ && m.count("config")) {
      const std::vector<std::string> diff = config_differences(m["config"], cfg_.raw_yaml);
      if (!diff.empty()) {
        std::string lines;
        for (const auto& d : diff) lines += "\n  " + d;
        std::fprintf(
            stderr,
            "lowbit: --resume: the config differs from the checkpoint's (checkpoint -> now):%s\n",
            lines.c_str());
      }
    }
    const int64_t saved_world = cm.world_size;
    if (saved_world != world_.size && root_) {
      std::fprintf(
          stderr,
          "lowbit: --resume: %s was written by a run of %lld rank(s), this run has %d: weights,"
          " optimizer and schedule are restored, the data is re-sharded over %d rank(s)\n",
          ckpt.c_str(), static_cast<long long>(saved_world), world_.size, world_.size);
    }
  }

  // Rank 0's run folder. A fresh run needs an empty folder or one of the same experiment (the
  // same config.yaml), whose run files it clears; another run's folder is refused unless
  // --force. A resumed run keeps its log up to the checkpoint (the records of the epoch it redoes
  // are dropped). Stale temporary files of an interrupted write go.
  void open_run_folder() {
    if (!root_) return;
    std::error_code ec;
    fs::create_directories(out_, ec);
    LOWBIT_CHECK_INPUT(!ec && fs::is_directory(out_), opts_.out_dir,
                       ": cannot create the output folder: ", ec.message());
    for (const auto& entry : fs::directory_iterator(out_, ec)) {
      if (entry.path().filename().string().find(".tmp") != std::string::npos)
        fs::remove(entry.path(), ec);
    }
    if (!resuming_) {
      const std::string previous = read_file_or_empty(out_ / "config.yaml");
      const bool empty = fs::is_empty(out_, ec);
      const bool same = !previous.empty() && previous == cfg_.raw_yaml + "\n";
      LOWBIT_CHECK_INPUT(
          empty || same || opts_.force, opts_.out_dir, ": holds ",
          previous.empty() ? "files of something else" : "another run (a different config.yaml)",
          "; choose another --out, continue it with --resume, or replace it with --force");
      if (!empty) clear_run_folder();
    } else {
      trim_log_to(pos_);
    }
    log_ = std::make_unique<RunLog>(out_.string(), cfg_.tensorboard);
    std::ofstream cfg_out(out_ / "config.yaml");
    cfg_out << cfg_.raw_yaml << "\n";
    log_->config_text(cfg_.raw_yaml);
  }

  static std::string read_file_or_empty(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return in ? std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>())
              : std::string();
  }

  // The files a run writes (and only those: a user's own files in the folder stay).
  void clear_run_folder() {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(out_, ec)) {
      const std::string name = entry.path().filename().string();
      const bool run_file = name == "config.yaml" || name == "log.jsonl" || name == kCheckpoint ||
                            name == "model.safetensors" || name == "summary.json" ||
                            name.rfind("prune_report", 0) == 0 ||
                            name.rfind("events.out.tfevents.", 0) == 0;
      if (run_file) fs::remove(entry.path(), ec);
    }
  }

  // Keeps the log's records of what the checkpoint holds, atomically: the epochs it completed
  // and, inside the epoch in progress, the steps up to its last one.
  void trim_log_to(const Position& pos) {
    const fs::path path = out_ / "log.jsonl";
    std::ifstream in(path);
    if (!in) return;
    std::string kept, line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      json j = json::parse(line, nullptr, false);
      if (j.is_object() && j.contains("epoch") && j["epoch"].is_number()) {
        const int64_t epoch = j["epoch"].get<int64_t>();
        const bool in_progress = epoch == pos.global_epoch + 1;
        const int64_t step =
            j.contains("step") && j["step"].is_number() ? j["step"].get<int64_t>() : INT64_MAX;
        if (epoch > pos.global_epoch + 1 ||
            (in_progress && (pos.batch == 0 || step > pos.last_step)))
          continue;
      }
      kept += line + "\n";
    }
    in.close();
    const fs::path tmp = out_ / "log.jsonl.tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << kept;
      LOWBIT_CHECK(out.good(), tmp.string(), ": write failed");
    }
    fs::rename(tmp, path);
  }

  void write_log(const json& j) {
    if (log_) log_->record(j);
  }

  void run_stage(int64_t s, const Fault& fault) {
    const StageConfig& st = cfg_.stages[size_t(s)];
    Stage stage{
        st, stage_kind_registry().get(st.kind), s, 0, nullptr, nullptr, nullptr, nullptr, nullptr,
        0};
    const bool mid_stage_resume =
        resuming_ && s == pos_.stage && (pos_.epoch > 0 || pos_.batch > 0);
    StageContext ctx{cfg_, s,         *model_, ms_, data_, dev_, pos_.global_epoch,
                     out_, progress_, *group_};
    if (!mid_stage_resume) {
      prepare_stage(ctx);
      if (!ms_.stage_results.empty()) {  // what prepare() reported (StageContext::report)
        const json results = json::parse(ms_.stage_results);
        auto rec = results.find(st.name);
        if (rec != results.end()) write_log(*rec);
      }
    }
    if (stage.kind.make_loop) stage.loop = stage.kind.make_loop(ctx);
    stage.loader =
        stage.loop && stage.loop->train_loader() ? stage.loop->train_loader() : data_.train.get();
    stage.batches = stage.loader->size();
    LOWBIT_CHECK_INPUT(stage.batches > 0, cfg_.file, ": stage ", st.name,
                       ": an epoch has no training batch on rank ", world_.rank);
    stage.steps_per_epoch = (stage.batches + st.accumulate_steps - 1) / st.accumulate_steps;
    if (world_.size > 1) {
      // Identical structure on every rank (pruning and quantization decisions), then rank 0's
      // values everywhere (per-rank calibration data, per-rank BN statistics).
      check_same_on_all_ranks(
          hash_module(*model_, false),
          str_cat("the model's structure at the start of stage '", st.name, "'"), host_group_,
          false);
      broadcast_module(*model_, *group_);
      layers::set_sync_batch_norm(*model_, cfg_.dist.sync_bn);
    }
    if (stage.kind.quantizes) quant::set_activation_quantization(*model_, st.quantize == "all");
    stage.opt = make_optimizer(st.optimizer, *model_, stage.loop.get());
    stage.sched = make_schedule(st.schedule, st.optimizer.lr, stage.steps_per_epoch, st.epochs);
    std::vector<Tensor> reduced;
    for (const Tensor& p : model_->parameters()) {
      if (!stage.loop || !stage.loop->owns(p)) reduced.push_back(p);
    }
    stage.reducer = std::make_unique<GradientReducer>(reduced, *group_,
                                                      int64_t(cfg_.dist.bucket_mb * 1024 * 1024));
    int64_t first_epoch = 0;
    if (resuming_ && s == pos_.stage) {
      first_epoch = pos_.epoch;
      auto ostate = with_prefix(resume_file_.tensors, "optim.");
      if (!ostate.empty() && (first_epoch > 0 || pos_.batch > 0))
        stage.opt->load_state_dict(ostate);
    }
    if (stage.loop) {
      auto lstate = with_prefix(resume_file_.tensors, "stage.");
      const bool resumed = mid_stage_resume && !lstate.empty();
      if (resumed) stage.loop->load_state_dict(lstate);
      stage.loop->begin(resumed);
    }
    for (int64_t e = first_epoch; e < st.epochs && !stopped_ && !(stage.loop && stage.loop->done());
         ++e)
      run_epoch(stage, e, fault);
    if (!stopped_) {
      // The next stage starts at its epoch 0 with a fresh optimizer.
      pos_.stage = s + 1;
      pos_.epoch = 0;
      if (stage.loop) {
        // The loop's result (a search's choices) changes the model: checkpoint it so a resume
        // starts the next stage from it.
        json results = ms_.stage_results.empty() ? json::object() : json::parse(ms_.stage_results);
        json found = stage.loop->finish();
        if (results.contains(st.name) && found.is_object()) {
          results[st.name].update(found);  // beside what prepare() reported
        } else {
          results[st.name] = std::move(found);
        }
        ms_.stage_results = results.dump();
        if (root_) save_checkpoint(out_, *model_, nullptr, pos_, cfg_, dev_, ms_);
      }
    }
  }

  // Loss and accuracy sums of an epoch on this rank.
  struct EpochSums {
    Tensor loss_sum, correct;
    int64_t seen = 0;
  };

  // Over every rank's samples since the epoch began: {loss sum, correct, samples} (a
  // collective: all ranks call it at the same batches).
  std::vector<double> global_sums(const EpochSums& sums) {
    std::vector<double> v{sums.loss_sum.item(), sums.correct.item(), double(sums.seen)};
    all_reduce_sums(v);
    return v;
  }

  // A diverged run stops at the first loss it reads (log points, epoch end) that is not finite;
  // the last epoch's checkpoint stays as it was, for a resume with other settings.
  void check_finite(double l, const Stage& stage, int64_t e, int64_t step) const {
    if (std::isfinite(l)) return;
    throw Error(str_cat("stage '", stage.st.name, "' epoch ", e + 1, " step ", step + 1,
                        ": the training loss is ", l,
                        " (diverged); lower optimizer.lr, set clip_grad_norm, or check the data; "
                        "the last checkpoint in ",
                        out_.string(), " is from before this epoch"));
  }

  // checkpoint_every: after every N optimizer steps, or M minutes since the last checkpoint
  // (rank 0's clock decides for all ranks).
  bool checkpoint_due(int64_t step) {
    if (cfg_.checkpoint_every_steps > 0) return (step + 1) % cfg_.checkpoint_every_steps == 0;
    if (cfg_.checkpoint_every_minutes <= 0) return false;
    const double minutes =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - last_checkpoint_).count() /
        60.0;
    if (world_.size == 1) return minutes >= cfg_.checkpoint_every_minutes;
    Tensor due =
        full({1}, minutes >= cfg_.checkpoint_every_minutes ? 1.0 : 0.0, TensorOptions(DType::i32));
    host_group_.broadcast(due, 0);
    return due.data<int32_t>()[0] != 0;
  }

  // A checkpoint inside the epoch: the position (batches done, the last step) and the epoch's
  // sums over every rank, so a resume continues with the next batch, bit for bit.
  void save_mid_epoch_checkpoint(Stage& stage, int64_t step, int64_t batches_done,
                                 const EpochSums& sums, std::chrono::steady_clock::time_point e0) {
    const auto v = global_sums(sums);
    Position p = pos_;
    p.stage = stage.index;
    p.batch = batches_done;
    p.last_step = step;
    p.loss_sum = v[0];
    p.correct = v[1];
    p.seen = v[2];
    p.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
    if (root_)
      save_checkpoint(out_, *model_, stage.opt.get(), p, cfg_, dev_, ms_, stage.loop.get());
    last_checkpoint_ = std::chrono::steady_clock::now();
  }

  void run_epoch(Stage& stage, int64_t e, const Fault& fault) {
    const StageConfig& st = stage.st;
    // docs/methods.md, "BN folding for QAT": BN statistics and quantizer ranges freeze after
    // configurable epochs of QAT.
    const bool qat = stage.kind.quantizes;
    const auto& qc = cfg_.quant;
    quant::freeze_bn_statistics(*model_, qat && qc.freeze_bn_epoch >= 0 && e >= qc.freeze_bn_epoch);
    if (ms_.quantized) {
      quant::set_quantizers_frozen(
          *model_, qat && qc.freeze_quantizers_epoch >= 0 && e >= qc.freeze_quantizers_epoch);
    }
    stage.loader->set_epoch(pos_.global_epoch);
    ProgressBar bar(str_cat(st.name, " epoch ", e + 1, "/", st.epochs), stage.batches);
    EpochSums sums{zeros({}, TensorOptions(DType::f64, dev_)),
                   zeros({}, TensorOptions(DType::f64, dev_)), 0};
    const double wait0 = stage.reducer->wait_seconds();
    auto e0 = std::chrono::steady_clock::now();
    const int64_t accumulate = st.accumulate_steps;
    int64_t batch_in_epoch = 0;
    if (pos_.batch > 0) {
      // Resuming inside this epoch: its first batches and their sums are in the checkpoint.
      batch_in_epoch = pos_.batch;
      stage.loader->seek(batch_in_epoch);
      sums.loss_sum.fill_(pos_.loss_sum);
      sums.correct.fill_(pos_.correct);
      sums.seen = int64_t(pos_.seen);
      e0 -= std::chrono::duration_cast<std::chrono::steady_clock::duration>(
          std::chrono::duration<double>(pos_.elapsed_s));
      pos_.batch = 0;
    } else {
      stage.loader->reset();
    }
    last_checkpoint_ = std::chrono::steady_clock::now();
    Batch b;
    std::string metrics;
    while (stage.loader->next(b)) {
      maybe_fault(fault, pos_.global_epoch + 1, batch_in_epoch + 1);
      // Micro-batch `micro` of the optimizer step `step`; the epoch's last group may be short.
      const int64_t micro = batch_in_epoch % accumulate;
      const int64_t step = e * stage.steps_per_epoch + batch_in_epoch / accumulate;
      const int64_t group_size = std::min(accumulate, stage.batches - (batch_in_epoch - micro));
      train_step(stage, b, sums, step, micro, group_size);
      ++batch_in_epoch;
      if (micro == group_size - 1 && batch_in_epoch < stage.batches && checkpoint_due(step)) {
        save_mid_epoch_checkpoint(stage, step, batch_in_epoch, sums, e0);
      }
      const bool log_now =
          batch_in_epoch % cfg_.log_interval == 0 || batch_in_epoch == stage.batches;
      if (!log_now && !progress_) continue;
      // Reading the sums is the host sync; do it only when something is printed or logged.
      const double el =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
      if (log_now) {
        const auto v = global_sums(sums);
        const double l = v[0] / v[2], a = v[1] / v[2];
        check_finite(l, stage, e, step);
        metrics = str_cat("loss ", fmt(l, 4), " acc ", fmt(100 * a, 2), "% ", fmt(v[2] / el, 0),
                          " img/s");
        write_log(json{{"kind", "step"},
                       {"stage", st.name},
                       {"epoch", pos_.global_epoch + 1},
                       {"step", step},
                       {"lr", stage.sched->lr_at(step)},
                       {"train_loss", l},
                       {"train_top1", a},
                       {"images_per_s", v[2] / el},
                       {"elapsed_s", el}});
      }
      if (progress_) bar.update(batch_in_epoch, metrics);
    }
    const double epoch_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
    end_epoch(stage, e, global_sums(sums), epoch_s, stage.reducer->wait_seconds() - wait0, bar);
  }

  // One micro-batch: forward, backward (loss / group_size when accumulating) and, on the last
  // micro-batch of its group, the all-reduce and the optimizer step.
  void train_step(Stage& stage, const Batch& b, EpochSums& sums, int64_t step, int64_t micro,
                  int64_t group_size) {
    const bool step_now = micro == group_size - 1;
    if (micro == 0) {
      stage.opt->set_lr(stage.sched->lr_at(step));
      stage.opt->zero_grad();
    }
    Tensor logits = loss_precision(model_->forward(b.images));
    Tensor loss = cross_entropy(logits, b.labels, stage.st.label_smoothing);
    stage.reducer->set_sync(step_now);
    if (group_size > 1) {
      (loss / double(group_size)).backward();
    } else {
      loss.backward();
    }
    if (step_now) {
      stage.reducer->finish();
      if (stage.st.clip_grad_norm > 0)
        clip_grad_norm(model_->parameters(), stage.st.clip_grad_norm);
      stage.opt->step();
      if (ms_.quantized) quant::clamp_quantizer_parameters(*model_);
      if (stage.loop) stage.loop->after_step(step);
    }
    autograd::NoGradGuard g;
    const int64_t n = b.labels.size(0);
    sums.loss_sum = sums.loss_sum + loss.detach().to(DType::f64) * double(n);
    sums.correct = sums.correct + topk_correct(logits.detach(), b.labels, 1).to(DType::f64);
    sums.seen += n;
  }

  // The end of an epoch: divergence check, the ranks' agreement, evaluation, the epoch record
  // and the checkpoint. v: the epoch's global {loss sum, correct, samples}.
  void end_epoch(Stage& stage, int64_t e, const std::vector<double>& v, double epoch_s,
                 double wait_s, ProgressBar& bar) {
    train_seconds_ += epoch_s;
    comm_wait_seconds_ += wait_s;
    images_seen_ += int64_t(v[2]);
    const double train_loss = v[2] > 0 ? v[0] / v[2] : 0.0;
    const double train_acc = v[2] > 0 ? v[1] / v[2] : 0.0;
    check_finite(train_loss, stage, e, e * stage.steps_per_epoch + stage.steps_per_epoch - 1);
    if (world_.size > 1) {
      // The reduced gradients keep the ranks' parameters identical; a difference is a bug.
      check_same_on_all_ranks(hash_parameters(*model_),
                              str_cat("the parameters after epoch ", pos_.global_epoch + 1),
                              host_group_, false);
    }
    // Per-rank BN statistics (and anything else a rank kept for itself) become rank 0's, as
    // PyTorch DDP's broadcast_buffers: every rank evaluates and saves the same model.
    broadcast_module(*model_, *group_);
    const EvalResult ev = evaluate(*model_, data_, dev_);
    if (progress_) {
      bar.finish(str_cat("train loss ", fmt(train_loss, 4), " acc ", fmt(100 * train_acc, 2),
                         "% | test loss ", fmt(ev.loss, 4), " top1 ", fmt(100 * ev.top1, 2),
                         "% top5 ", fmt(100 * ev.top5, 2), "% | ", fmt(v[2] / epoch_s, 0),
                         " img/s"));
    }
    json rec{{"kind", "epoch"},
             {"stage", stage.st.name},
             {"epoch", pos_.global_epoch + 1},
             {"train_loss", train_loss},
             {"train_top1", train_acc},
             {"test_loss", ev.loss},
             {"test_top1", ev.top1},
             {"test_top5", ev.top5},
             {"epoch_s", epoch_s},
             {"images_per_s", v[2] / epoch_s},
             {"time", now_iso()}};
    if (world_.size > 1) {
      rec["world_size"] = world_.size;
      rec["comm_wait_s"] = wait_s;
    }
    if (stage.loop) stage.loop->end_epoch(e, rec);
    write_log(rec);
    if (log_) log_->histograms(*model_, pos_.global_epoch + 1);
    pos_.stage = stage.index;
    pos_.epoch = e + 1;
    pos_.global_epoch += 1;
    pos_.batch = 0;
    summary_.test = ev;
    if (root_)
      save_checkpoint(out_, *model_, stage.opt.get(), pos_, cfg_, dev_, ms_, stage.loop.get());
    if (progress_) print_where_results_go();
    if (opts_.stop_after_epochs >= 0 && pos_.global_epoch >= opts_.stop_after_epochs)
      stopped_ = true;
  }

  // After each epoch's line: where its results are and how to watch them.
  void print_where_results_go() const {
    const std::string dir = out_.string();
    std::fprintf(stderr, "  saved %s; curves in %s/log.jsonl%s (lowbit plot %s%s)\n",
                 (out_ / kCheckpoint).c_str(), dir.c_str(),
                 cfg_.tensorboard ? " and TensorBoard events" : "", dir.c_str(),
                 cfg_.tensorboard ? str_cat(", tensorboard --logdir ", dir).c_str() : "");
    std::fflush(stderr);
  }

  // The summary; when every stage ran, the final model and summary.json (rank 0).
  void finish() {
    summary_.params = quant::account_model(*model_, sample_).params;
    summary_.epochs_done = pos_.global_epoch;
    summary_.finished = !stopped_;
    summary_.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    summary_.images_per_s = train_seconds_ > 0 ? double(images_seen_) / train_seconds_ : 0.0;
    if (!summary_.finished) return;
    if (summary_.test.samples == 0) summary_.test = evaluate(*model_, data_, dev_);
    const quant::ModelAccount account = quant::account_model(*model_, sample_);
    summary_.model_bytes = account.model_bytes;
    if (!root_) return;
    std::map<std::string, std::string> meta{{"format", "pt"}, {"model", cfg_.model.name}};
    add_structure_meta(ms_, &meta);
    save_safetensors((out_ / "model.safetensors").string(),
                     model_->state_dict(layers::Layout::pytorch), meta);
    json sj{{"name", cfg_.name},
            {"test_top1", summary_.test.top1},
            {"test_top5", summary_.test.top5},
            {"test_loss", summary_.test.loss},
            {"params", summary_.params},
            {"nonzero_params", nonzero_parameters(*model_)},
            {"model_bytes", summary_.model_bytes},
            {"float_bytes", account.float_bytes},
            {"compression_ratio", account.compression_ratio},
            {"bops", account.bops},
            {"macs", account.macs},
            {"account", account.to_json()},
            {"wall_s", summary_.wall_s},
            {"images_per_s", summary_.images_per_s},
            {"device", summary_.device},
            {"world_size", world_.size},
            {"comm_wait_s", comm_wait_seconds_},
            {"epochs", summary_.epochs_done},
            {"stages", ms_.stage_results.empty() ? json::object() : json::parse(ms_.stage_results)},
            {"config", cfg_.raw_yaml},
            {"config_file", cfg_.file},
            {"git_commit", LOWBIT_GIT_COMMIT},
            {"finished_at", now_iso()}};
    const fs::path tmp = out_ / "summary.json.tmp";
    {
      std::ofstream f(tmp);
      f << sj.dump(2) << "\n";
      LOWBIT_CHECK(f.good(), tmp.string(), ": write failed");
    }
    fs::rename(tmp, out_ / "summary.json");
  }

  // Parameter entries that are not zero (a masked network's real size; pruned at init: pai).
  static int64_t nonzero_parameters(layers::Module& m) {
    int64_t n = 0;
    for (const Tensor& p : m.parameters()) {
      for (float v : p.detach().to(Device::cpu(), DType::f32).to_vector<float>()) n += v != 0.0f;
    }
    return n;
  }

  const ExperimentConfig& cfg_;
  const TrainerOptions& opts_;
  const std::chrono::steady_clock::time_point t0_;
  const dist::WorldInfo& world_;
  const bool root_;      // rank 0 alone writes the run folder and the console
  const bool progress_;  // the progress bar (rank 0)
  const Device dev_;
  dist::ProcessGroup* group_ = nullptr;  // the device's collectives (after the device check)
  dist::ProcessGroup& host_group_;       // host values (metrics, hashes)
  const fs::path out_;

  DataSource data_;
  layers::ModulePtr model_;
  Shape sample_;
  int64_t batches_per_epoch_ = 0;
  Position pos_;
  ModelState ms_;
  SafetensorsFile resume_file_;
  bool resuming_ = false;
  bool stopped_ = false;
  std::chrono::steady_clock::time_point last_checkpoint_;
  std::unique_ptr<RunLog> log_;  // rank 0: log.jsonl and the TensorBoard event file
  RunSummary summary_;
  int64_t images_seen_ = 0;
  double train_seconds_ = 0.0, comm_wait_seconds_ = 0.0;
};

}  // namespace

RunSummary run_training(const ExperimentConfig& cfg, const TrainerOptions& opts) {
  return TrainingRun(cfg, opts).run();
}

// The config's data and model with the weights (and the pruned / quantized structure) of
// `checkpoint`, on `dev`.
layers::ModulePtr load_trained(const ExperimentConfig& cfg, const std::string& checkpoint,
                               Device dev, DataSource* data, ModelState* ms) {
  manual_seed(cfg.seed);
  *data = make_data(cfg, dev);
  layers::ModulePtr model = build_model(cfg, *data);
  SafetensorsFile f = load_safetensors(checkpoint);
  apply_structure_meta(*model, ms, f, checkpoint);
  load_weights(*model, f, checkpoint);
  if (ms->quantized) {
    // As the trainer ran the last quantizing stage up to the one the file was written in: a
    // weights-only stage (quantize: weights) keeps activations float, and its activation
    // quantizers were never initialised.
    size_t last = cfg.stages.size();
    auto st = f.metadata.find("stage");
    if (st != f.metadata.end()) last = std::min(last, size_t(std::stoll(st->second)) + 1);
    for (size_t i = last; i-- > 0;) {
      if (!stage_kind_registry().get(cfg.stages[i].kind).quantizes) continue;
      quant::set_activation_quantization(*model, cfg.stages[i].quantize == "all");
      break;
    }
  }
  model->to(dev);
  return model;
}

layers::ModulePtr load_trained_model(const ExperimentConfig& cfg, const std::string& checkpoint,
                                     Device dev, DataSource* data) {
  ModelState ms;
  return load_trained(cfg, checkpoint, dev, data, &ms);
}

EvalResult evaluate_model(layers::Module& model, DataSource& data, Device dev) {
  return evaluate(model, data, dev);
}

PruneRunResult run_prune(const ExperimentConfig& cfg, const std::string& checkpoint,
                         const std::string& out_dir, const std::string& device_override,
                         bool print) {
  LOWBIT_CHECK_INPUT(cfg.has_prune, cfg.file,
                     ": lowbit prune needs a prune: section in the config");
  LOWBIT_CHECK_INPUT(!dist::is_distributed(),
                     "lowbit prune runs in one process (it is fast and writes one"
                     " folder); in a distributed run, prune with a kind: prune stage");
  const Device dev = resolve_device(device_override.empty() ? cfg.device : device_override);
  apply_cpu_settings(cfg);
  AutocastGuard amp(amp_dtype(cfg));
  const fs::path out = make_out_dir(out_dir);
  DataSource data;
  ModelState ms;
  layers::ModulePtr model = load_trained(cfg, checkpoint, dev, &data, &ms);
  LOWBIT_CHECK_INPUT(!ms.quantized, checkpoint,
                     ": holds a quantized model; prune the float model (docs/methods.md, 'PfQ')");
  PruneRunResult r;
  const Shape sample{data.image_size, data.image_size, data.channels};
  r.before = evaluate(*model, data, dev);
  r.params_before = quant::account_model(*model, sample).params;
  data.train->set_epoch(0);
  data.train->reset();
  int64_t left = cfg.prune_calibration_batches;
  prune::PruneReport rep = prune::prune_model(*model, cfg.prune, sample, [&](Tensor& x) {
    Batch b;
    if (left-- <= 0 || !data.train->next(b)) return false;
    x = b.images;
    return true;
  });
  model->to(dev);
  ms.pruned = true;
  r.after = evaluate(*model, data, dev);
  r.params_after = quant::account_model(*model, sample).params;
  std::ofstream(out / "prune_report.txt") << rep.table();
  nlohmann::json j = rep.to_json();
  j["test_top1_before"] = r.before.top1;
  j["test_top1_after"] = r.after.top1;
  j["checkpoint"] = checkpoint;
  std::ofstream(out / "prune_report.json") << j.dump(2) << "\n";
  std::map<std::string, std::string> meta{{"format", "pt"}, {"model", cfg.model.name}};
  add_structure_meta(ms, &meta);
  save_safetensors((out / "model.safetensors").string(), model->state_dict(layers::Layout::pytorch),
                   meta);
  if (print) std::printf("%s", rep.table().c_str());
  return r;
}

fs::path make_out_dir(const std::string& out_dir) {
  fs::path out(out_dir);
  std::error_code ec;
  fs::create_directories(out, ec);
  LOWBIT_CHECK_INPUT(!ec && fs::is_directory(out), out_dir,
                     ": cannot create the output folder: ", ec.message());
  return out;
}

layers::ModulePtr build_model_offline(const ExperimentConfig& cfg, Shape* sample_hwc) {
  const DatasetGeometry g = dataset_registry().get(cfg.data.dataset).geometry(cfg.data);
  const models::ModelOptions mo = model_options(cfg, g);
  *sample_hwc = Shape{mo.input_size, mo.input_size, mo.in_channels};
  return models::create_model(cfg.model.name, mo);
}

EvalResult run_evaluation(const ExperimentConfig& cfg, const std::string& checkpoint,
                          const std::string& device_override) {
  const Device dev = resolve_device(device_override.empty() ? cfg.device : device_override);
  apply_cpu_settings(cfg);
  AutocastGuard amp(amp_dtype(cfg));
  DataSource data;
  ModelState ms;
  layers::ModulePtr model = load_trained(cfg, checkpoint, dev, &data, &ms);
  return evaluate(*model, data, dev);
}

}  // namespace lowbit::train
