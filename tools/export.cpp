// `lowbit export`: the integer model (quant/int_inference.h) or ONNX (tools/onnx_export.h) of a
// trained checkpoint, written through a temporary folder renamed into place, and checked on the
// config's test set against lowbit's fake-quant evaluation (export_report.json).
#include "tools/export.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/error.h"
#include "data/loader.h"
#include "layers/conv2d.h"
#include "quant/convert.h"
#include "quant/int_export.h"
#include "quant/int_inference.h"
#include "tools/onnx_export.h"
#include "train/config.h"
#include "train/registries.h"
#include "train/trainer.h"

namespace lowbit::tools {

namespace fs = std::filesystem;
using nlohmann::json;

const char* const kExportHelp =
    "usage: lowbit export CONFIG --checkpoint FILE --format int|onnx [--out DIR]\n"
    "                    [--verify N|all] [--fixed-point] [--set key.path=value]...\n"
    "\n"
    "Writes the model of CONFIG with the weights in FILE in a deployable form, on the CPU, and\n"
    "checks it against lowbit's own evaluation of the same checkpoint (docs/export.md).\n"
    "  --format int   the integer-only model of a QAT checkpoint with BN folded: DIR/model.json\n"
    "                 (graph, scales, zero points) and DIR/weights.bin (weight codes packed at\n"
    "                 their bit width, int32 biases); every conv and linear must be quantized\n"
    "                 with a quantizer that has an integer form (uniform, pow2, lsq)\n"
    "  --format onnx  DIR/model.onnx: plain ONNX for a float model, QuantizeLinear /\n"
    "                 DequantizeLinear pairs (opset 13, per-channel weights; below 8 bits with a\n"
    "                 Clip to the low-bit range) for a quantized one; input: the normalised\n"
    "                 image, NCHW. With it DIR/sample_input.npy, sample_labels.npy and\n"
    "                 sample_logits.npy (lowbit's logits) of --verify test images, which\n"
    "                 scripts/onnx_check.py DIR runs in onnxruntime\n"
    "  --out DIR      default runs/<config name>_<format>; written as DIR.partial-PID and "
    "renamed,\n"
    "                 so DIR never holds half an export; an existing DIR is replaced only when it\n"
    "                 holds an earlier export (export_report.json)\n"
    "  --verify N|all test images the integer model runs on to compare its codes with fake\n"
    "                 quantization layer by layer, and its top-1; for onnx, the images of the\n"
    "                 sample (default 1000; 0: none)\n"
    "  --fixed-point  requantize with fixed-point multipliers and shifts instead of float ones\n"
    "Files: DIR/export_report.json: the fake-quant test top-1 (full test set), the integer\n"
    "model's top-1 and agreement on the verified images, the codes per layer (equal, total, the\n"
    "largest difference) end to end and with each layer fed the fake-quant codes of its input.\n"
    "The fake-quant reference runs with the direct convolution (cpu_conv: direct).\n"
    "Exit codes: 0 done, 2 bad input (arguments, config, a checkpoint that does not match the\n"
    "config, a layer without the requested form, an output that cannot be written), 1 failure.\n";

namespace {

struct ExportArgs {
  std::string config, checkpoint, format, out;
  int64_t verify = 1000;
  bool fixed_point = false;
  std::vector<std::string> sets;
};

ExportArgs parse_args(int argc, char** argv) {
  ExportArgs a;
  auto need = [&](int& i, const char* flag) -> std::string {
    LOWBIT_CHECK_INPUT(i + 1 < argc && argv[i + 1][0] != '\0', "export: ", flag, " needs a value");
    return argv[++i];
  };
  for (int i = 2; i < argc; ++i) {
    const std::string s = argv[i];
    if (s == "--checkpoint") {
      a.checkpoint = need(i, "--checkpoint");
    } else if (s == "--format") {
      a.format = need(i, "--format");
    } else if (s == "--out") {
      a.out = need(i, "--out");
    } else if (s == "--set") {
      a.sets.push_back(need(i, "--set"));
    } else if (s.rfind("--set=", 0) == 0) {
      a.sets.push_back(s.substr(6));
    } else if (s == "--fixed-point") {
      a.fixed_point = true;
    } else if (s == "--verify") {
      const std::string v = need(i, "--verify");
      if (v == "all") {
        a.verify = INT64_MAX;
      } else {
        char* end = nullptr;
        const long long n = std::strtoll(v.c_str(), &end, 10);
        LOWBIT_CHECK_INPUT(end && *end == '\0' && n >= 0, "export: --verify '", v,
                           "' is not a count of images (0, 1, 2, ...) or 'all'");
        a.verify = n;
      }
    } else if (!s.empty() && s[0] == '-') {
      throw InputError("export: unknown option '" + s + "'; see lowbit export --help");
    } else if (a.config.empty()) {
      a.config = s;
    } else {
      throw InputError("export: unexpected argument '" + s + "'");
    }
  }
  LOWBIT_CHECK_INPUT(!a.config.empty(),
                     "export: a CONFIG file is required; see lowbit export --help");
  LOWBIT_CHECK_INPUT(!a.checkpoint.empty(), "export: --checkpoint FILE is required");
  LOWBIT_CHECK_INPUT(a.format == "int" || a.format == "onnx", "export: --format '", a.format,
                     "' is not one of int, onnx");
  return a;
}

// The folder the export is written into before it is renamed to `out`.
class StagingDir {
 public:
  explicit StagingDir(const fs::path& out) : out_(out) {
    std::error_code ec;
    if (fs::exists(out_, ec)) {
      LOWBIT_CHECK_INPUT(fs::is_directory(out_, ec), out_.string(),
                         ": exists and is not a folder; choose another --out");
      const bool empty = fs::is_empty(out_, ec);
      LOWBIT_CHECK_INPUT(empty || fs::exists(out_ / "export_report.json", ec), out_.string(),
                         ": holds files that are not an earlier export; choose another --out");
    }
    tmp_ = fs::path(out_.string() + ".partial-" + std::to_string(::getpid()));
    fs::remove_all(tmp_, ec);
    fs::create_directories(tmp_, ec);
    LOWBIT_CHECK_INPUT(!ec && fs::is_directory(tmp_), out_.string(),
                       ": cannot create the output folder (", tmp_.string(),
                       "): ", ec ? ec.message() : "not a folder");
    // A folder we may not write into (created before, read-only) fails here, not halfway.
    const fs::path probe = tmp_ / ".probe";
    std::ofstream(probe) << "";
    LOWBIT_CHECK_INPUT(fs::exists(probe, ec), out_.string(), ": the output folder (", tmp_.string(),
                       ") is not writable");
    fs::remove(probe, ec);
  }
  ~StagingDir() {
    std::error_code ec;
    if (!done_) fs::remove_all(tmp_, ec);
  }
  const fs::path& path() const { return tmp_; }
  void commit() {
    std::error_code ec;
    if (fs::exists(out_, ec)) fs::remove_all(out_, ec);
    fs::rename(tmp_, out_, ec);
    LOWBIT_CHECK_INPUT(!ec, out_.string(), ": cannot move the export into place: ", ec.message());
    done_ = true;
  }

 private:
  fs::path out_, tmp_;
  bool done_ = false;
};

int64_t argmax(const float* v, int64_t n) { return int64_t(std::max_element(v, v + n) - v); }

json stats_json(const quant::CodeStats& s) {
  return json{{"equal", s.equal},
              {"total", s.total},
              {"equal_fraction", s.total ? double(s.equal) / double(s.total) : 1.0},
              {"max_diff", s.max_diff}};
}

// The integer model of `model`, written to dir, reloaded from the files and checked on up to
// `verify` test images. Fills the report.
void export_int(layers::Module& model, train::DataSource& data, const ExportArgs& a,
                const fs::path& dir, json& report) {
  LOWBIT_CHECK_INPUT(quant::is_quantized(model), a.checkpoint,
                     ": the model is not quantized (a float checkpoint or a config without a "
                     "quant: section); the integer format needs a QAT checkpoint; export a float "
                     "model with --format onnx");
  const Device cpu = Device::cpu();
  report["fake_quant_top1_before_bias_rounding"] = train::evaluate_model(model, data, cpu).top1;
  const quant::IntModel im =
      quant::lower_to_int(model, {data.image_size, data.image_size, data.channels});
  const train::EvalResult fq = train::evaluate_model(model, data, cpu);
  report["fake_quant_top1"] = fq.top1;
  report["test_images"] = fq.samples;
  quant::save_int_model(im, dir.string());
  report["weights_bin_bytes"] = int64_t(fs::file_size(dir / "weights.bin"));
  report["requant"] = a.fixed_point ? "fixed_point" : "float";
  if (a.verify == 0) return;
  // From the files alone.
  const quant::IntModel loaded = quant::load_int_model(dir.string());
  quant::CodeComparison all, fed;
  int64_t seen = 0, int_correct = 0, fq_correct = 0, agree = 0;
  const int64_t classes = loaded.num_classes();
  data.test->reset();
  data::Batch b;
  while (seen < a.verify && data.test->next(b)) {
    const int64_t n = std::min<int64_t>(b.labels.size(0), a.verify - seen);
    const Tensor x = b.images.slice(0, 0, n).to(cpu).contiguous();
    const Tensor labels = b.labels.slice(0, 0, n).to(cpu, DType::i64).contiguous();
    const quant::CodeComparison c =
        quant::compare_with_fake_quant(model, loaded, x, a.fixed_point, false);
    fed.add(quant::compare_with_fake_quant(model, loaded, x, a.fixed_point, true));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pi = argmax(c.int_logits.data() + i * classes, classes);
      const int64_t pf = argmax(c.fake_quant_logits.data() + i * classes, classes);
      const int64_t y = labels.data<int64_t>()[i];
      int_correct += pi == y;
      fq_correct += pf == y;
      agree += pi == pf;
    }
    all.add(c);
    seen += n;
  }
  report["verified_images"] = seen;
  report["int_top1"] = seen ? double(int_correct) / double(seen) : 0.0;
  report["fake_quant_top1_verified"] = seen ? double(fq_correct) / double(seen) : 0.0;
  report["top1_agreement"] = seen ? double(agree) / double(seen) : 0.0;
  auto per_layer = [](const quant::CodeComparison& c) {
    json layers = json::array();
    for (const auto& [name, s] : c.layers) {
      json e = stats_json(s);
      e["layer"] = name;
      layers.push_back(e);
    }
    return layers;
  };
  report["codes"] = stats_json(all.total());
  report["codes_per_layer"] = per_layer(all);
  report["codes_fed"] = stats_json(fed.total());
  report["codes_fed_per_layer"] = per_layer(fed);
}

}  // namespace

int run_export(int argc, char** argv, std::ostream& out) {
  if (argc > 2 && (!std::strcmp(argv[2], "--help") || !std::strcmp(argv[2], "-h"))) {
    out << kExportHelp;
    return 0;
  }
  const ExportArgs a = parse_args(argc, argv);
  const train::ExperimentConfig cfg = train::load_config(a.config, a.sets);
  const fs::path dir =
      a.out.empty() ? fs::path("runs") / (cfg.name + "_" + a.format) : fs::path(a.out);
  if (a.format == "onnx") require_onnx_support();
  const auto t0 = std::chrono::steady_clock::now();
  const Device cpu = Device::cpu();
  // The reference evaluation with the direct convolution: Winograd's float rounding (5-10x
  // larger) would put more values near a rounding tie by float error alone.
  layers::set_cpu_conv_algo(layers::CpuConvAlgo::direct);
  train::DataSource data;
  layers::ModulePtr model = train::load_trained_model(cfg, a.checkpoint, cpu, &data);
  model->eval();
  StagingDir stage(dir);
  json report{{"format", a.format}, {"config", a.config}, {"checkpoint", a.checkpoint}};
  if (a.format == "int") {
    export_int(*model, data, a, stage.path(), report);
  } else {
    export_onnx(*model, data, stage.path(), a.verify, report);
    // What the graph's input is: (pixel / 255 - mean) / std per channel, NCHW.
    std::vector<double> mean = cfg.data.mean, std = cfg.data.std;
    const train::DatasetSpec& spec = train::dataset_registry().get(cfg.data.dataset);
    if (mean.empty() && spec.normalisation) {
      const auto n = spec.normalisation(cfg.data);
      mean.assign(n.first.begin(), n.first.end());
      std.assign(n.second.begin(), n.second.end());
    }
    report["input"]["mean"] = mean;
    report["input"]["std"] = std;
  }
  report["wall_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::ofstream(stage.path() / "export_report.json") << report.dump(1) << "\n";
  stage.commit();
  out << "lowbit export: " << a.format << " model of " << cfg.name << " in " << dir.string();
  if (report.contains("fake_quant_top1"))
    out << "; fake-quant test top-1 " << 100 * report["fake_quant_top1"].get<double>() << "%";
  if (report.contains("int_top1"))
    out << "; integer top-1 " << 100 * report["int_top1"].get<double>() << "% on "
        << report["verified_images"].get<int64_t>() << " images (fake quant "
        << 100 * report["fake_quant_top1_verified"].get<double>() << "%), codes equal "
        << 100 * report["codes"]["equal_fraction"].get<double>() << "% end to end (max difference "
        << report["codes"]["max_diff"].get<int64_t>() << "), "
        << 100 * report["codes_fed"]["equal_fraction"].get<double>()
        << "% layer by layer (max difference " << report["codes_fed"]["max_diff"].get<int64_t>()
        << ")";
  if (report.contains("lowbit_top1"))
    out << "; lowbit top-1 " << 100 * report["lowbit_top1"].get<double>() << "% on the "
        << report["sample_images"].get<int64_t>()
        << " sample images; check it in onnxruntime: python3 scripts/onnx_check.py "
        << dir.string();
  if (report.contains("float_weights") && !report["float_weights"].empty())
    out << "; " << report["float_weights"].size()
        << " layer(s) with float weights (fake-quantized values; see export_report.json)";
  out << "\n";
  return 0;
}

}  // namespace lowbit::tools
