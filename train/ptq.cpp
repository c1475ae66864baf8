// Post-training quantization: lowbit ptq and the stage kind ptq (train/ptq.h, docs/ptq.md).
#include "train/ptq.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/autocast.h"
#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "dist/world.h"
#include "quant/accounting.h"
#include "quant/convert.h"
#include "quant/zeroq.h"
#include "train/optimizer.h"
#include "train/progress.h"
#include "train/registries.h"
#include "train/run_support.h"

namespace lowbit::train {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The QuantConfig of a ptq: section: uniform (or pow2) quantizers with the section's observers,
// bits, scheme and granularity, BN folded.
quant::QuantConfig ptq_quant_config(const PtqConfig& p) {
  quant::QuantConfig q;
  q.fold_bn = true;
  q.calibration_batches = 0;
  q.first_last_bits = p.first_last == "8bit" ? 8 : 0;
  const bool sym = p.scheme != "asymmetric";
  const std::string name = p.scheme == "pow2" ? "pow2" : "uniform";
  q.weight.name = name;
  q.weight.options = quant::QuantizerOptions{};
  q.weight.options.set("bits", p.weight_bits)
      .set("per_channel", p.per_channel)
      .set("observer", p.weight_observer)
      .set("symmetric", sym);
  // KL on weights: 256 bins (a few hundred values per channel; 2048 would be mostly empty).
  if (p.weight_observer == "kl") q.weight.options.set("kl_bins", int64_t(256));
  q.activation.name = name;
  q.activation.options = quant::QuantizerOptions{};
  q.activation.options.set("bits", p.activation_bits)
      .set("observer", p.activation_observer)
      .set("symmetric", sym);
  if (p.scheme == "symmetric") q.activation.options.set("signed", true);
  return q;
}

// Quantizes the float `model` by `p` (weight bits per layer from layer_bits where given) and
// calibrates every quantizer on `calib`; the qparams are computed before it returns.
quant::QuantPlan quantize_post_training(layers::Module& model, const PtqConfig& p,
                                        const std::vector<Tensor>& calib,
                                        const std::map<std::string, int64_t>& layer_bits) {
  LOWBIT_CHECK(!calib.empty(), "post-training quantization without calibration data");
  quant::QuantConfig qc = ptq_quant_config(p);
  if (!layer_bits.empty()) qc.first_last_bits = 0;  // the allocation decides every layer
  quant::QuantPlan plan = quant::plan_quantization(model, qc, calib[0]);
  if (p.first_last == "float" && !plan.layers.empty()) {
    plan.layers.erase(plan.layers.begin());
    if (!plan.layers.empty()) plan.layers.pop_back();
  }
  for (quant::LayerPlan& l : plan.layers) {
    auto it = layer_bits.find(l.name);
    if (it != layer_bits.end()) l.weight.options.set("bits", it->second);
  }
  quant::apply_quant_plan(model, plan);
  size_t i = 0;
  quant::calibrate_model(
      model,
      [&](Tensor& x) {
        if (i >= calib.size()) return false;
        x = calib[i++];
        return true;
      },
      int64_t(calib.size()), true, true);
  // Compute the ranges now (percentile, mse and kl finalise on first use), so a broadcast of
  // rank 0's buffers afterwards is final.
  autograd::NoGradGuard ng;
  model.eval();
  model.forward(calib[0].narrow(0, 0, 1));
  model.train();
  return plan;
}

// The first n training images (the loader's epoch-0 order), in the loader's batches.
std::vector<Tensor> train_images(DataSource& data, int64_t n) {
  data.train->set_epoch(0);
  data.train->reset();
  std::vector<Tensor> out;
  data::Batch b;
  while (n > 0 && data.train->next(b)) {
    const int64_t k = std::min(n, b.images.size(0));
    out.push_back(b.images.narrow(0, 0, k).contiguous());
    n -= k;
  }
  LOWBIT_CHECK_INPUT(!out.empty(), "ptq: the training set is empty (calibration: train)");
  return out;
}

// n images of N(0, 1) noise (the normalised input space), in batches of `batch`.
std::vector<Tensor> noise_images(const Shape& sample, int64_t n, int64_t batch, Device dev) {
  std::vector<Tensor> out;
  for (int64_t done = 0; done < n; done += batch) {
    const int64_t k = std::min(batch, n - done);
    out.push_back(randn({k, sample[0], sample[1], sample[2]}, TensorOptions(DType::f32, dev)));
  }
  return out;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), f, v);
  return buf;
}

// Where a ptq run writes: the console (rank 0, when printing) and log.jsonl.
struct Reporter {
  bool print = true;
  JsonlLog* log = nullptr;
  void line(const std::string& s) const {
    if (print) std::printf("%s\n", s.c_str());
    if (print) std::fflush(stdout);
  }
  void record(const json& j) const {
    if (log) log->write(j.dump());
  }
};

// What one post-training quantization produced, for summary.json.
struct PtqOutcome {
  quant::QuantPlan plan;
  json summary = json::object();
};

// Calibration data of a ptq: section for `model` (float).
std::vector<Tensor> calibration_data(layers::Module& model, const PtqConfig& p, DataSource& data,
                                     const Shape& sample, Device dev, const Reporter& rep,
                                     json* summary) {
  const auto t0 = Clock::now();
  std::vector<Tensor> calib;
  if (p.calibration == "train") {
    calib = train_images(data, p.calibration_images);
  } else if (p.calibration == "noise") {
    calib = noise_images(sample, p.calibration_images, 256, dev);
  } else {
    quant::require_batchnorm(model, "ptq.calibration: zeroq");
    std::vector<double> curve;
    const auto td = Clock::now();
    calib = distill_data(model, p.zeroq, sample, dev, &curve, [&](int64_t b, int64_t i, double l) {
      rep.line(str_cat("ptq: ZeroQ batch ", b, " iteration ", i, ": loss ", fmt("%.4g", l), " (",
                       fmt("%.1f", since(td)), " s)"));
    });
    (*summary)["distill_s"] = since(td);
    const int64_t it = p.zeroq.iterations;
    for (size_t b = 0; b < calib.size(); ++b) {
      for (int64_t i = 0; i < it; i += std::max<int64_t>(1, it / 10)) {
        rep.record(json{{"kind", "distill"},
                        {"batch", b},
                        {"iteration", i},
                        {"loss", curve[b * size_t(it) + size_t(i)]}});
      }
      rep.line(str_cat("ptq: ZeroQ batch ", b, ": distillation loss ",
                       fmt("%.4g", curve[b * size_t(it)]), " -> ",
                       fmt("%.4g", curve[(b + 1) * size_t(it) - 1]), " in ", it, " iterations"));
    }
    (*summary)["distill_loss_first"] = curve.front();
    (*summary)["distill_loss_last"] = curve.back();
  }
  int64_t n = 0;
  for (const Tensor& t : calib) n += t.size(0);
  (*summary)["calibration_images"] = n;
  (*summary)["calibration_data_s"] = since(t0);
  return calib;
}

// ZeroQ's bit allocation (docs/methods.md "ZeroQ"): sensitivity on `data`, the Pareto frontier,
// the allocation within ptq.budget. Writes sensitivity.txt and pareto.{txt,csv} to out (rank 0).
std::map<std::string, int64_t> zeroq_allocation(layers::Module& model, const PtqConfig& p,
                                                const Tensor& data, const fs::path& out, bool root,
                                                const Reporter& rep, json* summary) {
  const auto t0 = Clock::now();
  const std::vector<quant::WeightLayer> layers = quant::weight_layers(model);
  const int64_t budget = quant::parse_size_budget(p.budget, layers);
  quant::Sensitivity s = quant::zeroq_sensitivity(model, data, p.mp_bits);
  const double sens_s = since(t0);
  std::vector<std::vector<int64_t>> size(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    for (int64_t b : p.mp_bits) size[i].push_back(quant::packed_bytes(layers[i].weights, b));
  }
  const auto t1 = Clock::now();
  const std::vector<quant::Allocation> frontier = quant::pareto_frontier(size, s.omega);
  const double dp_s = since(t1);
  int64_t weights = 0;
  for (const auto& l : layers) weights += l.weights;
  if (root) {
    std::ofstream(out / "sensitivity.txt") << s.table();
    std::ofstream csv(out / "pareto.csv");
    std::ostringstream txt;
    csv << "bytes,mean_bits,omega";
    txt << "Pareto frontier (ZeroQ): weight bytes, mean bits per weight, total sensitivity,"
           " bits per layer\n";
    for (const auto& l : layers) csv << "," << l.name;
    csv << "\n";
    for (const quant::Allocation& a : frontier) {
      std::string bits;
      csv << a.bytes << "," << fmt("%.4f", 8.0 * double(a.bytes) / double(weights)) << ","
          << fmt("%.6g", a.cost);
      for (size_t i = 0; i < layers.size(); ++i) {
        const int64_t b = p.mp_bits[size_t(a.choice[i])];
        csv << "," << b;
        bits += std::to_string(b) + (i + 1 < layers.size() ? " " : "");
      }
      csv << "\n";
      txt << fmt("%10.0f", double(a.bytes)) << " "
          << fmt("%6.3f", 8.0 * double(a.bytes) / double(weights)) << " " << fmt("%12.5e", a.cost)
          << "  " << bits << "\n";
    }
    std::ofstream(out / "pareto.txt") << txt.str();
    rep.line(txt.str());
  }
  const quant::Allocation a = quant::allocate_within(frontier, budget);
  std::map<std::string, int64_t> bits;
  json jl = json::object();
  for (size_t i = 0; i < layers.size(); ++i) {
    bits[layers[i].name] = p.mp_bits[size_t(a.choice[i])];
    jl[layers[i].name] = bits[layers[i].name];
  }
  rep.line(str_cat("ptq: ZeroQ allocation within ", budget, " bytes: ", a.bytes,
                   " bytes of weights (", fmt("%.3f", 8.0 * double(a.bytes) / double(weights)),
                   " bits per weight), sensitivity ", fmt("%.5g", a.cost), "; ", frontier.size(),
                   " frontier points"));
  (*summary)["budget_bytes"] = budget;
  (*summary)["allocation_weight_bytes"] = a.bytes;
  (*summary)["allocation_sensitivity"] = a.cost;
  (*summary)["layer_weight_bits"] = jl;
  (*summary)["pareto_points"] = frontier.size();
  (*summary)["sensitivity_s"] = sens_s;
  (*summary)["pareto_dp_s"] = dp_s;
  return bits;
}

// Calibration data, ZeroQ allocation (with a budget), conversion and calibration of the float
// `model` by cfg.ptq.
PtqOutcome post_training_quantize(const ExperimentConfig& cfg, layers::Module& model,
                                  DataSource& data, Device dev, const fs::path& out, bool root,
                                  const Reporter& rep) {
  const PtqConfig& p = cfg.ptq;
  const Shape sample{data.image_size, data.image_size, data.channels};
  PtqOutcome r;
  const auto t0 = Clock::now();
  std::vector<Tensor> calib = calibration_data(model, p, data, sample, dev, rep, &r.summary);
  std::map<std::string, int64_t> bits;
  if (!p.budget.empty()) bits = zeroq_allocation(model, p, calib[0], out, root, rep, &r.summary);
  const auto t1 = Clock::now();
  r.plan = quantize_post_training(model, p, calib, bits);
  r.summary["calibration_s"] = since(t1);
  r.summary["ptq_s"] = since(t0);
  return r;
}

// Overrides of the ptq: section by knob values ("knob=value,knob=value", ptq.fix).
std::vector<std::pair<std::string, std::string>> parse_fix(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    LOWBIT_CHECK_INPUT(eq != std::string::npos && eq > 0 && eq + 1 < item.size(), "ptq.fix: '",
                       item, "' wants knob=value");
    out.emplace_back(item.substr(0, eq), item.substr(eq + 1));
  }
  return out;
}

std::string search_table(const quant::ConfigSpace& space, const quant::SearchResult& r) {
  std::ostringstream os;
  os << r.method << " search: " << r.measured.size() << " measurements in "
     << fmt("%.1f", r.seconds) << " s (cost model " << fmt("%.2f", r.model_seconds) << " s, "
     << r.rounds << " rounds); best top-1 " << fmt("%.2f", 100 * r.best.value)
     << "%: " << space.describe(r.best.config) << "\n";
  for (size_t i = 0; i < r.measured.size(); ++i) {
    const auto& m = r.measured[i];
    os << fmt("%4.0f", double(i + 1)) << " " << fmt("%7.2f", 100 * m.value) << "% "
       << fmt("%6.2f", m.seconds) << " s  " << space.describe(m.config) << "\n";
  }
  return os.str();
}

}  // namespace

quant::ConfigSpace quantune_space() {
  std::vector<std::string> calibration;
  for (const char* obs : {"minmax", "percentile", "mse", "kl"}) {
    for (const char* n : {"1", "10", "100"}) calibration.push_back(std::string(obs) + "/" + n);
  }
  return quant::ConfigSpace({{"calibration", calibration},
                             {"scheme", {"asymmetric", "symmetric", "symmetric_unsigned", "pow2"}},
                             {"clipping", {"none", "percentile", "kl"}},
                             {"granularity", {"per_tensor", "per_channel"}},
                             {"precision", {"first_last_8bit", "first_last_float"}}});
}

PtqConfig apply_knobs(const PtqConfig& base, const quant::ConfigSpace& space,
                      const quant::Config& c) {
  PtqConfig p = base;
  p.search = "none";
  p.budget.clear();
  for (size_t i = 0; i < space.knobs().size(); ++i) {
    const std::string& knob = space.knobs()[i].name;
    const std::string& v = space.knobs()[i].values[size_t(c[i])];
    if (knob == "calibration") {
      const size_t slash = v.find('/');
      p.activation_observer = v.substr(0, slash);
      p.calibration_images = std::stoll(v.substr(slash + 1));
      p.calibration = "train";
    } else if (knob == "scheme") {
      p.scheme = v;
    } else if (knob == "clipping") {
      p.weight_observer = v == "none" ? "minmax" : v;
    } else if (knob == "granularity") {
      p.per_channel = v == "per_channel";
    } else if (knob == "precision") {
      p.first_last = v == "first_last_float" ? "float" : "8bit";
    }
  }
  return p;
}

std::vector<Tensor> distill_data(layers::Module& model, const ZeroqConfig& z, const Shape& sample,
                                 Device dev, std::vector<double>* loss_curve,
                                 const std::function<void(int64_t, int64_t, double)>& progress) {
  quant::require_batchnorm(model, "ZeroQ");
  const bool was_training = model.is_training();
  model.eval();
  // The model's parameters need no gradient here: only the input is optimised.
  std::vector<std::pair<Tensor, bool>> params;
  for (Tensor& t : model.parameters()) {
    params.emplace_back(t, t.requires_grad());
    t.requires_grad_(false);
  }
  std::vector<Tensor> out;
  for (int64_t b = 0; b < z.batches; ++b) {
    const Shape shape{z.batch_size, sample[0], sample[1], sample[2]};
    const TensorOptions o(DType::f32, dev);
    Tensor x =
        z.init == "code"
            // The reference code: (randint(0, 255) - 127.5) / 5418.75 per pixel.
            ? (cast(cast(rand(shape, o) * 255.0, DType::i32), DType::f32) - 127.5) * (1.0 / 5418.75)
            : randn(shape, o);
    x = x.detach().contiguous();
    x.requires_grad_(true);
    AdamW opt({ParamGroup({x}, z.lr, 0.0)});
    // ReduceLROnPlateau (PyTorch defaults but patience): mode min, relative threshold 1e-4,
    // factor 0.1, patience 100, min_lr 1e-4.
    double best = std::numeric_limits<double>::infinity(), lr = z.lr;
    int64_t bad = 0;
    for (int64_t it = 0; it < z.iterations; ++it) {
      opt.zero_grad();
      Tensor loss = quant::zeroq_bn_loss(model, x);
      loss.backward();
      opt.step();
      const double l = loss.item();
      if (loss_curve) loss_curve->push_back(l);
      if (progress && (it % 50 == 0 || it + 1 == z.iterations)) progress(b, it, l);
      if (l < best * (1.0 - 1e-4)) {
        best = l;
        bad = 0;
      } else if (++bad > 100) {
        lr = std::max(lr * 0.1, 1e-4);
        opt.set_lr(lr);
        bad = 0;
      }
    }
    out.push_back(x.detach().contiguous());
  }
  for (auto& [t, rg] : params) t.requires_grad_(rg);
  model.train(was_training);
  return out;
}

PtqRunResult run_ptq(const ExperimentConfig& cfg, const std::string& checkpoint,
                     const std::string& out_dir, const std::string& device_override, bool print) {
  LOWBIT_CHECK_INPUT(!dist::is_distributed(),
                     "lowbit ptq runs in one process; in a distributed run, quantize with a "
                     "kind: ptq stage");
  LOWBIT_CHECK_INPUT(fs::is_regular_file(checkpoint), "ptq: --checkpoint ", checkpoint,
                     ": no such file (a trained float model.safetensors or checkpoint)");
  const auto t0 = Clock::now();
  const Device dev = resolve_device(device_override.empty() ? cfg.device : device_override);
  apply_cpu_settings(cfg);
  AutocastGuard amp(amp_dtype(cfg));
  const PtqConfig& p = cfg.ptq;
  LOWBIT_CHECK_INPUT(p.search == "none" || p.budget.empty(), cfg.file,
                     ": ptq.search and ptq.budget (ZeroQ mixed precision) are separate runs; "
                     "give one");
  const fs::path out = make_out_dir(out_dir);
  DataSource data;
  ModelState ms;
  layers::ModulePtr model = load_trained(cfg, checkpoint, dev, &data, &ms);
  LOWBIT_CHECK_INPUT(!ms.quantized, checkpoint,
                     ": holds a quantized model; post-training quantization starts from the "
                     "float model");
  const Shape sample{data.image_size, data.image_size, data.channels};
  JsonlLog log((out / "log.jsonl").string());
  Reporter rep{print, &log};
  PtqRunResult r;
  r.before = evaluate(*model, data, dev);
  const quant::ModelAccount float_acc = quant::account_model(*model, sample);
  r.float_bytes = float_acc.model_bytes;
  r.float_bops = float_acc.bops;
  rep.line(str_cat("ptq: float model ", checkpoint, ": test top-1 ",
                   fmt("%.2f", 100 * r.before.top1), "%, ", float_acc.model_bytes, " bytes"));

  json summary{{"kind", "ptq"},
               {"config", cfg.file},
               {"name", cfg.name},
               {"checkpoint", checkpoint},
               {"device", dev.str()},
               {"float_top1", r.before.top1},
               {"float_top5", r.before.top5},
               {"float_bytes", r.float_bytes},
               {"float_bops", r.float_bops}};
  PtqConfig chosen = p;
  if (p.search != "none") {
    // Every measurement: a fresh float model, the knobs' quantization and calibration, top-1 on
    // the first search_images test images.
    std::map<std::string, Tensor> float_state;
    for (auto& [k, v] : model->state_dict()) float_state[k] = v.clone();
    quant::ConfigSpace full = quantune_space();
    std::vector<quant::Knob> knobs = full.knobs();
    for (auto& [knob, value] : parse_fix(p.fix)) {
      const int64_t vi = full.value_index(knob, value);
      for (auto& k : knobs) {
        if (k.name == knob) k.values = {k.values[size_t(vi)]};
      }
    }
    const quant::ConfigSpace space(knobs);
    int64_t max_images = 0;
    for (const auto& v : space.knobs()[0].values) {
      max_images = std::max<int64_t>(max_images, std::stoll(v.substr(v.find('/') + 1)));
    }
    const std::vector<Tensor> pool = train_images(data, max_images);
    auto objective = [&](const quant::Config& c) {
      const PtqConfig kp = apply_knobs(p, space, c);
      layers::ModulePtr m = build_model(cfg, data);
      m->load_state_dict(float_state);
      m->to(dev);
      std::vector<Tensor> calib;
      int64_t left = kp.calibration_images;
      for (const Tensor& t : pool) {
        if (left <= 0) break;
        const int64_t k = std::min(left, t.size(0));
        calib.push_back(t.narrow(0, 0, k).contiguous());
        left -= k;
      }
      quantize_post_training(*m, kp, calib, {});
      const double top1 = evaluate(*m, data, dev, p.search_images).top1;
      rep.record(json{{"kind", "search_measurement"},
                      {"method", p.search},
                      {"config", space.describe(c)},
                      {"top1", top1}});
      return top1;
    };
    quant::SearchOptions so;
    so.budget = p.search_budget;
    so.seed = cfg.seed;
    rep.line(str_cat("ptq: ", p.search, " search over ", space.size(), " configurations (",
                     space.describe(space.config(0)).size() > 0 ? "knobs " : "",
                     space.knobs().size(), "), budget ",
                     so.budget > 0 ? std::to_string(so.budget) : std::string("the whole space"),
                     ", top-1 on ", p.search_images, " test images"));
    quant::SearchResult sr;
    if (p.search == "grid") {
      sr = quant::grid_search(space, objective, so);
    } else if (p.search == "random") {
      sr = quant::random_search(space, objective, so);
    } else {
      std::unique_ptr<quant::CostModel> cm = quant::make_xgboost_model(cfg.seed);
      sr = quant::quantune_search(space, objective, so, *cm);
    }
    const std::string table = search_table(space, sr);
    std::ofstream(out / "search.txt") << table;
    json js{{"method", sr.method},
            {"space_size", space.size()},
            {"measurements", sr.measured.size()},
            {"rounds", sr.rounds},
            {"seconds", sr.seconds},
            {"model_seconds", sr.model_seconds},
            {"best_config", space.describe(sr.best.config)},
            {"best_search_top1", sr.best.value}};
    json all = json::array();
    for (const auto& m : sr.measured) {
      all.push_back(
          json{{"config", space.describe(m.config)}, {"top1", m.value}, {"s", m.seconds}});
    }
    js["measured"] = all;
    std::ofstream(out / "search.json") << js.dump(2) << "\n";
    rep.line(table.substr(0, table.find('\n')));
    summary["search"] = p.search;
    summary["search_space"] = space.size();
    summary["search_measurements"] = sr.measured.size();
    summary["search_s"] = sr.seconds;
    summary["search_model_s"] = sr.model_seconds;
    summary["search_best_config"] = space.describe(sr.best.config);
    summary["search_best_top1"] = sr.best.value;
    summary["search_images"] = p.search_images;
    chosen = apply_knobs(p, space, sr.best.config);
    // The best configuration on a fresh float model, as a run without search would do it.
    model = build_model(cfg, data);
    model->load_state_dict(float_state);
    model->to(dev);
  }
  ExperimentConfig chosen_cfg = cfg;
  chosen_cfg.ptq = chosen;
  PtqOutcome o = post_training_quantize(chosen_cfg, *model, data, dev, out, true, rep);
  ms.quantized = true;
  ms.plan = o.plan;
  r.after = evaluate(*model, data, dev);
  const quant::ModelAccount acc = quant::account_model(*model, sample);
  r.model_bytes = acc.model_bytes;
  r.bops = acc.bops;
  r.seconds = since(t0);
  std::ofstream(out / "ptq_layers.txt") << acc.table();
  if (print) std::printf("%s", acc.table().c_str());
  std::map<std::string, std::string> meta{{"format", "pt"}, {"model", cfg.model.name}};
  add_structure_meta(ms, &meta);
  save_safetensors((out / "model.safetensors").string(), model->state_dict(layers::Layout::pytorch),
                   meta);
  summary.update(o.summary);
  summary["calibration"] = chosen.calibration;
  summary["weight_bits"] = chosen.weight_bits;
  summary["activation_bits"] = chosen.activation_bits;
  summary["weight_observer"] = chosen.weight_observer;
  summary["activation_observer"] = chosen.activation_observer;
  summary["scheme"] = chosen.scheme;
  summary["per_channel"] = chosen.per_channel;
  summary["first_last"] = chosen.first_last;
  summary["test_top1"] = r.after.top1;
  summary["test_top5"] = r.after.top5;
  summary["test_loss"] = r.after.loss;
  summary["params"] = acc.params;
  summary["model_bytes"] = acc.model_bytes;
  summary["compression_ratio"] = acc.compression_ratio;
  summary["bops"] = acc.bops;
  summary["wall_s"] = r.seconds;
  summary["finished_at"] = now_iso();
  summary["layers"] = acc.to_json();
  std::ofstream(out / "summary.json") << summary.dump(2) << "\n";
  rep.record(json{{"kind", "ptq"},
                  {"test_top1", r.after.top1},
                  {"model_bytes", acc.model_bytes},
                  {"bops", acc.bops},
                  {"wall_s", r.seconds}});
  return r;
}

namespace {

// kind: ptq: quantizes the float model after training at the stage start (ptq: section; no
// search), then trains `epochs` (0: none) with the quantized model.
void prepare_ptq_stage(StageContext& c) {
  LOWBIT_CHECK_INPUT(!c.ms.quantized, c.cfg.file, ": stage ", c.config().name,
                     ": kind ptq quantizes a float model, and this one is already quantized");
  LOWBIT_CHECK_INPUT(c.cfg.ptq.search == "none", c.cfg.file, ": stage ", c.config().name,
                     ": ptq.search runs in lowbit ptq, not in a stage");
  Reporter rep{c.progress, nullptr};
  const bool root = dist::is_root();
  PtqOutcome o = post_training_quantize(c.cfg, c.model, c.data, c.dev, c.out_dir, root, rep);
  c.ms.plan = o.plan;
  c.ms.quantized = true;
  c.model.to(c.dev);
  c.report(o.summary);
  if (root) {
    std::ofstream(c.out_dir / ("ptq_" + c.config().name + ".json")) << o.summary.dump(2) << "\n";
  }
}

const bool kPtqStageRegistered = [] {
  StageKind k;
  k.what =
      "post-training quantization of the float model at the start (ptq: section), then "
      "`epochs` of training (0: none)";
  k.quantizes = true;
  k.before_quantization = true;
  k.prepare = prepare_ptq_stage;
  stage_kind_registry().add("ptq", k);
  return true;
}();

}  // namespace

}  // namespace lowbit::train
