// kind: search, the differentiable mixed-precision search (docs/methods.md, "Mixed-precision
// search"; the layers are quant/mixed.h). The stage:
//   prepare   the searched layers become mixed layers (every candidate's output, mixed by
//             softmax(alpha)), their weight quantizers calibrated;
//   begin     the training set is split (val_fraction, from the seed) into a part for the
//             weight steps and a part for the alpha steps; theta is measured with every layer
//             at its widest candidate unless given;
//   each weight step (the trainer's, on the training part), then an alpha step here on one
//             validation batch: L_val over the ranks; when L_val > theta the constraint is
//             violated (lambda = inf) and alpha descends grad L_val, else it descends grad G;
//   each epoch: the table of probabilities and choices, alpha and G into log.jsonl; the
//             search ends when the argmax of every layer held stable_epochs epochs;
//   finish    each layer takes its argmax (quant::finish_search); the choices become quant
//             rules for the following QAT stages and search_<stage>.yaml in the run folder.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/autograd.h"
#include "core/ops.h"
#include "dist/process_group.h"
#include "dist/world.h"
#include "quant/mixed.h"
#include "train/loss.h"
#include "train/registries.h"
#include "train/stage_context.h"

namespace lowbit::train {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// The training set's split for a search: of a permutation drawn from the seed (its first
// max_samples when given), the first val_fraction is the validation part, the rest trains the
// weights. The same on every rank and run.
std::pair<std::vector<int64_t>, std::vector<int64_t>> search_split(int64_t n, double val_fraction,
                                                                   int64_t max_samples,
                                                                   uint64_t seed) {
  std::vector<int64_t> perm = data::permutation(n, seed ^ 0x5ea4c11ULL, 0);
  if (max_samples > 0 && max_samples < n) {
    perm.resize(size_t(max_samples));
    n = max_samples;
  }
  LOWBIT_CHECK_INPUT(n >= 2, "search: the training set has ", n,
                     " image(s); the search needs at least 2 (search.max_samples)");
  const int64_t nv = std::clamp<int64_t>(int64_t(std::llround(double(n) * val_fraction)), 1, n - 1);
  std::vector<int64_t> val(perm.begin(), perm.begin() + nv), train(perm.begin() + nv, perm.end());
  std::sort(val.begin(), val.end());
  std::sort(train.begin(), train.end());
  return {train, val};
}

void prepare_search_stage(StageContext& c) {
  LOWBIT_CHECK_INPUT(!c.ms.quantized, c.cfg.file, ": stage ", c.config().name,
                     ": kind search runs on a float model; put it before the qat stages");
  Tensor probe;
  auto next = c.batches(1);
  LOWBIT_CHECK_INPUT(next(probe), c.cfg.file, ": the training set is empty");
  probe = probe.contiguous();
  c.group.broadcast(probe, 0);
  quant::SearchPlan plan;
  try {
    plan = quant::plan_search(c.model, c.cfg.search.spec, probe);
  } catch (const InputError& e) {
    throw InputError(str_cat(c.cfg.file, ": stage ", c.config().name, ": ", e.what()));
  }
  quant::apply_search_plan(c.model, plan);
  c.model.to(c.dev);
  c.ms.search_plan = plan.str();
  // Learned candidates (LSQ) take their initial step from the weights.
  quant::calibrate_model(c.model, c.batches(1), 1, true, false);
}

class SearchLoop : public StageLoop {
 public:
  explicit SearchLoop(StageContext& c)
      : cfg_(c.cfg),
        sc_(c.cfg.search),
        stage_name_(c.config().name),
        model_(c.model),
        ms_(c.ms),
        dev_(c.dev),
        out_(c.out_dir),
        progress_(c.progress),
        group_(c.group) {
    LOWBIT_CHECK(!ms_.search_plan.empty(), "search stage without a search plan");
    plan_ = quant::SearchPlan::parse(ms_.search_plan);
    alphas_ = quant::search_parameters(model_);
    for (Tensor& a : alphas_) a.requires_grad_(false);  // only the alpha steps need them
    for (const Tensor& p : model_.parameters()) {
      if (p.requires_grad() && !owns(p)) weights_.push_back(p);
    }
    // The split and its loaders, with the training set's options and transforms.
    const data::DataLoader& full = *c.data.train;
    const auto [train_idx, val_idx] =
        search_split(full.dataset().size(), sc_.val_fraction, sc_.max_samples, cfg_.seed);
    data::LoaderOptions o = full.options();
    train_ = std::make_unique<data::DataLoader>(
        data::subset(c.data.train_dataset, train_idx, "search training split"), o,
        full.transform());
    o.seed = cfg_.seed + 1;
    val_ = std::make_unique<data::DataLoader>(
        data::subset(c.data.train_dataset, val_idx, "search validation split"), o,
        full.transform());
    LOWBIT_CHECK_INPUT(val_->size() > 0, cfg_.file,
                       ": search.val_fraction: the validation split has no batch on rank ",
                       dist::world().rank);
    ParamGroup g{alphas_, sc_.alpha_optimizer.lr, sc_.alpha_optimizer.weight_decay, "alpha"};
    alpha_opt_ = optimizer_registry().get(sc_.alpha_optimizer.name)({g}, sc_.alpha_optimizer);
  }

  data::DataLoader* train_loader() override { return train_.get(); }

  bool owns(const Tensor& p) const override {
    for (const Tensor& a : alphas_) {
      if (a.same(p)) return true;
    }
    return false;
  }

  void begin(bool resumed) override {
    val_->set_epoch(val_epoch_);
    if (val_batch_ > 0) val_->seek(val_batch_);
    if (resumed) return;
    if (sc_.theta > 0) {
      theta_ = sc_.theta;
    } else {
      // The widest candidate everywhere (the all-8-bit model of the seed), as the alpha steps
      // see it: training mode, batch statistics.
      const auto& bits = quant::mixed_layers(model_).front().second->bits();
      const int64_t widest = int64_t(std::max_element(bits.begin(), bits.end()) - bits.begin());
      quant::force_candidate(model_, widest);
      std::vector<double> sums{0.0, 0.0};
      {
        autograd::NoGradGuard ng;
        data::Batch b;
        for (int64_t i = 0; i < sc_.theta_batches && val_->next(b); ++i) {
          Tensor l = cross_entropy(loss_precision(model_.forward(b.images)), b.labels);
          sums[0] += l.item() * double(b.size());
          sums[1] += double(b.size());
        }
      }
      quant::force_candidate(model_, -1);
      all_reduce_host(sums);
      widest_loss_ = sums[0] / sums[1];
      theta_ = sc_.theta_factor * widest_loss_;
      val_->set_epoch(val_epoch_);
    }
    if (progress_) {
      std::printf("search %s: %zu layers, candidates %s; theta %.4f%s\n", stage_name_.c_str(),
                  plan_.layers.size(), candidates_str().c_str(), theta_,
                  widest_loss_ > 0 ? str_cat(" (", sc_.theta_factor, " x ", widest_loss_,
                                             ", the widest model's validation loss)")
                                         .c_str()
                                   : "");
      std::fflush(stdout);
    }
  }

  void after_step(int64_t) override {
    data::Batch b;
    if (!val_->next(b)) {
      val_batch_ = 0;
      val_->set_epoch(++val_epoch_);
      LOWBIT_CHECK(val_->next(b), "search: the validation split gave no batch");
    }
    ++val_batch_;
    for (Tensor& w : weights_) w.requires_grad_(false);
    for (Tensor& a : alphas_) a.requires_grad_(true);
    alpha_opt_->zero_grad();
    Tensor loss = cross_entropy(loss_precision(model_.forward(b.images)), b.labels);
    std::vector<double> lv{loss.item() * double(b.size()), double(b.size())};
    all_reduce_host(lv);
    const double l_val = lv[0] / lv[1];
    const bool violated = l_val > theta_;
    if (violated) {
      loss.backward();  // lambda = inf: only the constraint counts
    } else {
      quant::expected_size(model_, plan_).backward();  // lambda = 0: only the size counts
    }
    reduce_alpha_grads();
    alpha_opt_->step();
    for (Tensor& a : alphas_) a.requires_grad_(false);
    for (Tensor& w : weights_) w.requires_grad_(true);
    ++steps_;
    violated_ += violated ? 1 : 0;
    l_val_sum_ += l_val;
  }

  void end_epoch(int64_t, json& rec) override {
    const auto choices = quant::search_choices(model_, plan_);
    std::vector<int64_t> argmax;
    json alphas = json::object(), probs = json::object(), bits = json::object();
    for (const auto& [name, c] : quant::mixed_layers(model_)) {
      const Tensor a = c->alpha().detach().to(Device::cpu(), DType::f64).contiguous();
      alphas[name] = std::vector<double>(a.data<double>(), a.data<double>() + a.numel());
    }
    for (const auto& c : choices) {
      argmax.push_back(c.choice);
      probs[c.name] = c.probabilities;
      bits[c.name] = c.bits;
    }
    stable_ = argmax == last_argmax_ ? stable_ + 1 : 1;
    last_argmax_ = argmax;
    double g = 0.0;
    {
      autograd::NoGradGuard ng;
      g = quant::expected_size(model_, plan_).item();
    }
    const double chosen = chosen_size(choices);
    rec["search"] = json{{"theta", theta_},
                         {"val_loss", steps_ ? l_val_sum_ / double(steps_) : 0.0},
                         {"violated_fraction", steps_ ? double(violated_) / double(steps_) : 0.0},
                         {"expected_size", g},
                         {"chosen_size", chosen},
                         {"stable_epochs", stable_},
                         {"alpha", alphas},
                         {"probabilities", probs},
                         {"bits", bits}};
    if (progress_) {
      std::printf("%s", quant::choice_table(choices).c_str());
      std::printf(
          "search: expected size G %.4f of fp32, argmax %.4f (%.1fx); mean L_val %.4f vs theta "
          "%.4f, violated on %.0f%% of steps; argmax stable %lld/%lld epochs\n",
          g, chosen, chosen > 0 ? 1.0 / chosen : 0.0, steps_ ? l_val_sum_ / double(steps_) : 0.0,
          theta_, steps_ ? 100.0 * double(violated_) / double(steps_) : 0.0,
          static_cast<long long>(stable_), static_cast<long long>(sc_.stable_epochs));
      std::fflush(stdout);
    }
    steps_ = violated_ = 0;
    l_val_sum_ = 0.0;
  }

  bool done() const override { return stable_ >= sc_.stable_epochs; }

  json finish() override {
    const std::vector<quant::LayerChoice> choices = quant::finish_search(model_, plan_);
    model_.to(dev_);
    ms_.search_plan.clear();
    ms_.search_rules = quant::choice_rules(choices);
    const std::string table = quant::choice_table(choices);
    json layers = json::array();
    for (const auto& c : choices) {
      layers.push_back(json{{"name", c.name},
                            {"weights", c.weights},
                            {"probabilities", c.probabilities},
                            {"bits", c.bits},
                            {"quantizer", c.quantizer.name}});
    }
    const double chosen = chosen_size(choices);
    if (dist::is_root()) {
      const fs::path yaml = out_ / ("search_" + stage_name_ + ".yaml");
      std::ofstream(yaml) << quant::choice_rules_yaml(
          choices, str_cat("stage '", stage_name_, "' of ", cfg_.file));
      std::ofstream(out_ / ("search_" + stage_name_ + ".txt")) << table;
      if (progress_) {
        std::printf("search %s: chosen bits (weights %.1fx smaller than fp32), written to %s\n%s",
                    stage_name_.c_str(), chosen > 0 ? 1.0 / chosen : 0.0, yaml.c_str(),
                    table.c_str());
        std::fflush(stdout);
      }
    }
    return json{{"kind", "search"},
                {"theta", theta_},
                {"chosen_size", chosen},
                {"weight_compression", chosen > 0 ? 1.0 / chosen : 0.0},
                {"layers", layers}};
  }

  std::map<std::string, Tensor> state_dict() const override {
    std::map<std::string, Tensor> s;
    for (auto& [k, v] : alpha_opt_->state_dict()) s["alpha_optim." + k] = v;
    auto f64 = [](std::vector<double> v) {
      return from_vector(v, {int64_t(v.size())}, TensorOptions(DType::f64));
    };
    auto i64 = [](std::vector<int64_t> v) {
      if (v.empty()) v.push_back(-1);
      return from_vector(v, {int64_t(v.size())}, TensorOptions(DType::i64));
    };
    s["theta"] = f64({theta_, widest_loss_, l_val_sum_});
    s["counters"] = i64({stable_, val_epoch_, val_batch_, steps_, violated_});
    s["last_argmax"] = i64(last_argmax_);
    return s;
  }

  void load_state_dict(const std::map<std::string, Tensor>& state) override {
    auto get = [&](const std::string& k) {
      auto it = state.find(k);
      LOWBIT_CHECK_INPUT(it != state.end(), "checkpoint: the search stage's state lacks '", k, "'");
      return it->second.to(Device::cpu()).contiguous();
    };
    std::map<std::string, Tensor> opt;
    for (auto& [k, v] : state) {
      if (k.rfind("alpha_optim.", 0) == 0) opt[k.substr(12)] = v;
    }
    if (!opt.empty()) alpha_opt_->load_state_dict(opt);
    const Tensor t = get("theta"), n = get("counters"), a = get("last_argmax");
    theta_ = t.data<double>()[0];
    widest_loss_ = t.data<double>()[1];
    l_val_sum_ = t.data<double>()[2];
    const int64_t* cn = n.data<int64_t>();
    stable_ = cn[0];
    val_epoch_ = cn[1];
    val_batch_ = cn[2];
    steps_ = cn[3];
    violated_ = cn[4];
    last_argmax_.assign(a.data<int64_t>(), a.data<int64_t>() + a.numel());
    if (last_argmax_.size() == 1 && last_argmax_[0] < 0) last_argmax_.clear();
  }

 private:
  static void all_reduce_host(std::vector<double>& v) {
    if (!dist::is_distributed()) return;
    Tensor t = from_vector(v, {int64_t(v.size())}, TensorOptions(DType::f64));
    dist::process_group(Device::cpu()).all_reduce(t, dist::ReduceOp::sum);
    std::copy(t.data<double>(), t.data<double>() + v.size(), v.begin());
  }

  // The ranks' mean of the alpha gradients, one collective for all of them.
  void reduce_alpha_grads() {
    if (!dist::is_distributed()) return;
    autograd::NoGradGuard ng;
    int64_t n = 0;
    for (const Tensor& a : alphas_) n += a.numel();
    Tensor flat = zeros({n}, TensorOptions(DType::f32, dev_));
    int64_t off = 0;
    for (const Tensor& a : alphas_) {
      if (a.grad().defined()) flat.narrow(0, off, a.numel()).copy_(a.grad().reshape({a.numel()}));
      off += a.numel();
    }
    group_.all_reduce(flat, dist::ReduceOp::mean);
    off = 0;
    for (const Tensor& a : alphas_) {
      if (a.grad().defined()) a.grad().copy_(flat.narrow(0, off, a.numel()).reshape(a.shape()));
      off += a.numel();
    }
  }

  // The chosen bits' weight size as a fraction of fp32.
  static double chosen_size(const std::vector<quant::LayerChoice>& choices) {
    double bits = 0.0, n = 0.0;
    for (const auto& c : choices) {
      bits += double(c.weights) * double(c.bits);
      n += double(c.weights);
    }
    return n > 0 ? bits / (32.0 * n) : 0.0;
  }

  std::string candidates_str() const {
    std::string s;
    for (size_t j = 0; j < plan_.candidates.size(); ++j) {
      s += (j ? ", " : "") + plan_.candidates[j].name;
      auto it = plan_.candidates[j].options.values().find("bits");
      if (it != plan_.candidates[j].options.values().end()) s += " " + it->second + "b";
    }
    return s;
  }

  const ExperimentConfig& cfg_;
  const SearchConfig& sc_;
  const std::string stage_name_;
  layers::Module& model_;
  ModelState& ms_;
  const Device dev_;
  const fs::path out_;
  const bool progress_;
  dist::ProcessGroup& group_;
  quant::SearchPlan plan_;
  std::vector<Tensor> alphas_, weights_;
  std::unique_ptr<data::DataLoader> train_, val_;
  std::unique_ptr<Optimizer> alpha_opt_;
  double theta_ = 0.0, widest_loss_ = 0.0, l_val_sum_ = 0.0;
  int64_t stable_ = 0, val_epoch_ = 0, val_batch_ = 0, steps_ = 0, violated_ = 0;
  std::vector<int64_t> last_argmax_;
};

const bool kSearchRegistered = [] {
  StageKind k;
  k.what =
      "differentiable mixed-precision search (search: section): picks each layer's weight bits";
  k.before_quantization = true;
  k.prepare = prepare_search_stage;
  k.make_loop = [](StageContext& c) -> std::unique_ptr<StageLoop> {
    return std::make_unique<SearchLoop>(c);
  };
  stage_kind_registry().add("search", k);
  return true;
}();

}  // namespace

}  // namespace lowbit::train
