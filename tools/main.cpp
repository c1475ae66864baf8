// The lowbit CLI: dispatches subcommands and turns exceptions into exit codes (2 for bad
// input: config, data files, arguments; 1 for runtime failures) with one clear line on stderr.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "core/error.h"
#include "dist/process_group.h"
#include "dist/world.h"
#include "tools/bench.h"
#include "tools/compare.h"
#include "tools/export.h"
#include "tools/info.h"
#include "tools/quantizers.h"
#include "train/config.h"
#include "train/ptq.h"
#include "train/registries.h"
#include "train/trainer.h"

namespace {

const char* kUsage =
    "usage: lowbit <command> [options]\n"
    "\n"
    "commands:\n"
    "  train     run the stages of an experiment config (YAML)\n"
    "  eval      evaluate a checkpoint on the config's test set\n"
    "  prune     prune a trained model with the config's prune: section (PfQ, L1, BN-gamma)\n"
    "  ptq       post-training quantization of a trained model (calibration, ZeroQ, Quantune)\n"
    "  bench     time kernels and training steps (lowbit bench --help)\n"
    "  info      print the build, backends and devices; --model CONFIG: per-layer size/BOPs\n"
    "  compare   the summaries of finished runs side by side (markdown), with differences\n"
    "  plot      loss, top-1, learning rate, bits and channels per layer of runs, as a PNG\n"
    "  export    write a checkpoint as an integer-only model or ONNX, checked against lowbit\n"
    "  quantizers  the registered quantizers with their options, defaults and ranges\n"
    "\n"
    "Run 'lowbit <command> --help' for a command's options.\n"
    "Exit codes: 0 success, 1 runtime failure, 2 bad input (config, data, arguments).\n";

const char* kTrainHelp =
    "usage: lowbit train CONFIG [--out DIR] [--device auto|cpu|cuda|cuda:N] [--resume | --force]\n"
    "                    [--set key.path=value]... [--no-progress]\n"
    "\n"
    "Runs the stages of CONFIG (see docs/config.md). Writes to DIR (default runs/<name>):\n"
    "  log.jsonl               one JSON record per log interval and per epoch\n"
    "  checkpoint.safetensors  weights (PyTorch names and layouts), optimizer and RNG state,\n"
    "                          written atomically after every epoch\n"
    "  model.safetensors       the final weights\n"
    "  summary.json            test_top1, test_top5, params, model_bytes, wall_s, images_per_s, "
    "...\n"
    "  events.out.tfevents.*   TensorBoard (tensorboard: true, the default): the log's\n"
    "                          numbers, histograms of weights and quantizer parameters per\n"
    "                          epoch, the config\n"
    "\n"
    "  --resume     continue from DIR/checkpoint.safetensors (same weights as an uninterrupted "
    "run)\n"
    "  --force      DIR holds another run (a different config.yaml): replace it (its run files "
    "are\n"
    "               deleted); without it such a DIR is refused. Re-running the same config "
    "restarts.\n"
    "  --set K=V    override a config key, e.g. --set stages.0.epochs=2 --set data.batch_size=64\n"
    "\n"
    "Data-parallel on N processes: mpirun -np N lowbit train CONFIG, or srun -n N lowbit train\n"
    "CONFIG (docs/distributed.md). Rank 0 writes DIR; data.batch_size is per rank.\n"
    "\n"
    "Registered choices (docs/config.md):\n";

const char* kEvalHelp =
    "usage: lowbit eval CONFIG --checkpoint FILE [--device ...] [--set key.path=value]...\n"
    "\n"
    "Evaluates the model of CONFIG with the weights in FILE (a checkpoint.safetensors or a\n"
    "weights-only file with PyTorch names) on the config's test set; prints loss, top-1, top-5.\n";

const char* kPruneHelp =
    "usage: lowbit prune CONFIG --checkpoint FILE [--out DIR] [--device ...] [--set "
    "key.path=value]...\n"
    "\n"
    "Loads the model of CONFIG with the weights in FILE, evaluates it, prunes it with the "
    "config's\n"
    "prune: section (docs/pruning.md; PfQ by default: filters whose BN running variance is below\n"
    "eps are removed and their constant output folded into the next layer), evaluates again and\n"
    "writes to DIR (default runs/<name>_pruned):\n"
    "  model.safetensors   the pruned model (load it with init: in a later config, or lowbit "
    "eval)\n"
    "  prune_report.txt    per layer: channels, parameters before/after; totals of parameters,\n"
    "                      model bytes and BOPs; every pruned channel with its BN statistics\n"
    "  prune_report.json   the same, plus test top-1 before and after\n";

const char* kPtqHelp =
    "usage: lowbit ptq CONFIG --checkpoint FILE [--out DIR] [--calibration train|zeroq|noise]\n"
    "                  [--budget 4bit|6bit|BYTES | --search quantune|grid|random --budget N]\n"
    "                  [--device ...] [--set key.path=value]...\n"
    "\n"
    "Quantizes the float model of CONFIG with the weights in FILE without training (docs/ptq.md):\n"
    "its convolutions and linear layers get uniform quantizers by the config's ptq: section\n"
    "(bits, observers minmax|percentile|mse|kl, scheme, per-channel weights; BN folded), the\n"
    "observers calibrate on training images, ZeroQ's distilled images or Gaussian noise, and\n"
    "the quantized model is evaluated on the test set.\n"
    "  --calibration C   ptq.calibration: train (ptq.calibration_images images), zeroq (data\n"
    "                    distilled from the BN statistics), noise (N(0, 1) images)\n"
    "  --budget B        ZeroQ mixed precision (ptq.budget): the weight size within which the\n"
    "                    Pareto frontier picks 2, 4 or 8 bits per layer: 4bit, 6bit (the size of\n"
    "                    every layer at that width) or a number of bytes\n"
    "  --search M        search the five knobs (calibration, scheme, clipping, granularity,\n"
    "                    first/last precision) by Quantune's XGBoost cost model, grid or random;\n"
    "                    --budget N is then the number of measurements (ptq.search_budget)\n"
    "Writes to DIR (default runs/<name>_ptq): model.safetensors (the quantized model; lowbit\n"
    "eval reads it), summary.json (float and quantized top-1, bytes, BOPs, times), log.jsonl,\n"
    "ptq_layers.txt (per layer bits, bytes, BOPs); with a budget sensitivity.txt, pareto.txt\n"
    "and pareto.csv (the whole frontier); with a search search.txt and search.json.\n";

bool is_help(const char* a) { return !std::strcmp(a, "--help") || !std::strcmp(a, "-h"); }

struct Args {
  std::string config;
  std::string out, device, checkpoint;
  std::string calibration, budget, search;  // ptq
  bool resume = false, force = false, progress = true;
  std::vector<std::string> sets;
};

Args parse(int argc, char** argv, const char* cmd, bool allow_train_flags) {
  Args a;
  auto need = [&](int& i, const char* flag) -> std::string {
    if (i + 1 >= argc) throw lowbit::InputError(lowbit::str_cat(cmd, ": ", flag, " needs a value"));
    const std::string v = argv[++i];
    if (v.empty())
      throw lowbit::InputError(
          lowbit::str_cat(cmd, ": ", flag, " needs a value, got an empty one"));
    return v;
  };
  for (int i = 2; i < argc; ++i) {
    const std::string s = argv[i];
    if (s == "--device")
      a.device = need(i, "--device");
    else if (s == "--set")
      a.sets.push_back(need(i, "--set"));
    else if (s.rfind("--set=", 0) == 0)
      a.sets.push_back(s.substr(6));
    else if (allow_train_flags && s == "--out")
      a.out = need(i, "--out");
    else if (allow_train_flags && s == "--resume")
      a.resume = true;
    else if (allow_train_flags && s == "--force")
      a.force = true;
    else if (allow_train_flags && s == "--no-progress")
      a.progress = false;
    else if (!allow_train_flags && s == "--checkpoint")
      a.checkpoint = need(i, "--checkpoint");
    else if (!allow_train_flags && s == "--out" &&
             (std::string(cmd) == "prune" || std::string(cmd) == "ptq"))
      a.out = need(i, "--out");
    else if (std::string(cmd) == "ptq" && s == "--calibration")
      a.calibration = need(i, "--calibration");
    else if (std::string(cmd) == "ptq" && s == "--budget")
      a.budget = need(i, "--budget");
    else if (std::string(cmd) == "ptq" && s == "--search")
      a.search = need(i, "--search");
    else if (!s.empty() && s[0] == '-')
      throw lowbit::InputError(
          lowbit::str_cat(cmd, ": unknown option '", s, "'; see lowbit ", cmd, " --help"));
    else if (a.config.empty())
      a.config = s;
    else
      throw lowbit::InputError(lowbit::str_cat(cmd, ": unexpected argument '", s, "'"));
  }
  if (a.config.empty())
    throw lowbit::InputError(
        lowbit::str_cat(cmd, ": a CONFIG file is required; see lowbit ", cmd, " --help"));
  return a;
}

int run_train(int argc, char** argv) {
  if (argc > 2 && is_help(argv[2])) {
    std::cout << kTrainHelp << lowbit::train::registered_choices();
    return 0;
  }
  Args a = parse(argc, argv, "train", true);
  lowbit::train::ExperimentConfig cfg = lowbit::train::load_config(a.config, a.sets);
  lowbit::train::TrainerOptions o;
  o.out_dir = a.out.empty() ? "runs/" + cfg.name : a.out;
  o.device = a.device;
  o.resume = a.resume;
  o.force = a.force;
  if (a.resume && a.force)
    throw lowbit::InputError("train: --resume continues a run and --force replaces it; give one");
  o.progress = a.progress;
  auto s = lowbit::train::run_training(cfg, o);
  if (!lowbit::dist::is_root()) return 0;
  std::cout << "lowbit: " << cfg.name << " finished on " << s.device << " in " << s.wall_s
            << " s: test top-1 " << 100 * s.test.top1 << "%, top-5 " << 100 * s.test.top5 << "%, "
            << s.params << " parameters\n"
            << "lowbit: results in " << o.out_dir
            << " (summary.json, log.jsonl, model.safetensors)\n";
  return 0;
}

int run_eval(int argc, char** argv) {
  if (argc > 2 && is_help(argv[2])) {
    std::cout << kEvalHelp;
    return 0;
  }
  Args a = parse(argc, argv, "eval", false);
  if (a.checkpoint.empty()) throw lowbit::InputError("eval: --checkpoint FILE is required");
  lowbit::train::ExperimentConfig cfg = lowbit::train::load_config(a.config, a.sets);
  auto r = lowbit::train::run_evaluation(cfg, a.checkpoint, a.device);
  if (!lowbit::dist::is_root()) return 0;
  std::cout << "test loss " << r.loss << " top1 " << 100 * r.top1 << "% top5 " << 100 * r.top5
            << "% (" << r.samples << " images)\n";
  return 0;
}

int run_prune_cmd(int argc, char** argv) {
  if (argc > 2 && is_help(argv[2])) {
    std::cout << kPruneHelp;
    return 0;
  }
  Args a = parse(argc, argv, "prune", false);
  if (a.checkpoint.empty())
    throw lowbit::InputError("prune: --checkpoint FILE is required; see lowbit prune --help");
  lowbit::train::ExperimentConfig cfg = lowbit::train::load_config(a.config, a.sets);
  const std::string out = a.out.empty() ? "runs/" + cfg.name + "_pruned" : a.out;
  auto r = lowbit::train::run_prune(cfg, a.checkpoint, out, a.device);
  std::cout << "lowbit prune: test top-1 " << 100 * r.before.top1 << "% -> " << 100 * r.after.top1
            << "%, " << r.params_before << " -> " << r.params_after << " parameters; results in "
            << out << "\n";
  return 0;
}

int run_ptq_cmd(int argc, char** argv) {
  if (argc > 2 && is_help(argv[2])) {
    std::cout << kPtqHelp;
    return 0;
  }
  Args a = parse(argc, argv, "ptq", false);
  if (a.checkpoint.empty())
    throw lowbit::InputError("ptq: --checkpoint FILE is required; see lowbit ptq --help");
  // The flags are ptq: keys, applied after the config's own and the --set overrides.
  if (!a.calibration.empty()) a.sets.push_back("ptq.calibration=" + a.calibration);
  if (!a.search.empty()) a.sets.push_back("ptq.search=" + a.search);
  if (!a.budget.empty()) {
    a.sets.push_back((a.search.empty() ? "ptq.budget=" : "ptq.search_budget=") + a.budget);
  }
  lowbit::train::ExperimentConfig cfg = lowbit::train::load_config(a.config, a.sets);
  const std::string out = a.out.empty() ? "runs/" + cfg.name + "_ptq" : a.out;
  auto r = lowbit::train::run_ptq(cfg, a.checkpoint, out, a.device);
  std::cout << "lowbit ptq: test top-1 " << 100 * r.before.top1 << "% (float) -> "
            << 100 * r.after.top1 << "%, " << r.float_bytes << " -> " << r.model_bytes << " bytes, "
            << r.seconds << " s; results in " << out << "\n";
  return 0;
}

// `lowbit plot`: scripts/plot_runs.py (matplotlib) with the same arguments; its --help answers.
// The interpreter is LOWBIT_PLOT_PYTHON, else Debian's /usr/bin/python3 (python3-matplotlib),
// else python3 on PATH; the script is LOWBIT_PLOT_SCRIPT, else the source tree's.
int run_plot(int argc, char** argv) {
  const auto env = [](const char* k, const std::string& fallback) {
    const char* v = std::getenv(k);
    return v && *v ? std::string(v) : fallback;
  };
  const std::string python = env(
      "LOWBIT_PLOT_PYTHON", access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3");
  const std::string script = env("LOWBIT_PLOT_SCRIPT", LOWBIT_PLOT_SCRIPT);
  const auto quote = [](const std::string& a) {
    std::string q = "'";
    for (char c : a) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
  };
  std::string cmd = quote(python) + " " + quote(script);
  for (int i = 2; i < argc; ++i) cmd += " " + quote(argv[i]);
  std::cout.flush();
  const int status = std::system(cmd.c_str());
  if (status == -1) throw lowbit::Error("plot: could not start " + python);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int run(int argc, char** argv) {
  if (argc < 2 || is_help(argv[1])) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "train") return run_train(argc, argv);
  if (cmd == "eval") return run_eval(argc, argv);
  if (cmd == "prune") return run_prune_cmd(argc, argv);
  if (cmd == "ptq") return run_ptq_cmd(argc, argv);
  if (cmd == "bench") return lowbit::tools::run_bench(argc, argv, std::cout);
  if (cmd == "export") return lowbit::tools::run_export(argc, argv, std::cout);
  if (cmd == "plot") return run_plot(argc, argv);
  if (cmd == "quantizers") {
    return lowbit::tools::run_quantizers(std::vector<std::string>(argv + 2, argv + argc),
                                         std::cout);
  }
  if (cmd == "compare") {
    if (argc > 2 && is_help(argv[2])) {
      std::cout
          << "usage: lowbit compare RUN [RUN...]\n\n"
             "One markdown table of the runs' summary.json (RUN: a run folder or a summary.json):\n"
             "config (and the keys that differ from the first run's), top-1, top-5, parameters,\n"
             "model bytes, compression ratio, BOPs, images/s, wall time and ranks, with each\n"
             "run's difference to the first in parentheses.\n";
      return 0;
    }
    return lowbit::tools::run_compare(std::vector<std::string>(argv + 2, argv + argc), std::cout);
  }
  if (cmd == "info") {
    if (argc > 2 && is_help(argv[2])) {
      std::cout
          << "usage: lowbit info\n"
             "       lowbit info --model CONFIG [--set key.path=value]...\n\n"
             "Without options: the lowbit version, whether the CUDA backend was compiled in, the\n"
             "CPU threads and every visible CUDA device.\n"
             "--model CONFIG: the config's model as a per-layer table (parameters, weight and\n"
             "input bits, MACs, BOPs, bytes; docs/methods.md, 'Accounting'), float and, when the "
             "config\n"
             "has a quant: section, quantized. No data is read.\n";
      return 0;
    }
    if (argc > 2) {
      std::string config;
      std::vector<std::string> sets;
      for (int i = 2; i < argc; ++i) {
        const std::string s = argv[i];
        if (s == "--model" && i + 1 < argc)
          config = argv[++i];
        else if (s == "--set" && i + 1 < argc)
          sets.push_back(argv[++i]);
        else if (s.rfind("--set=", 0) == 0)
          sets.push_back(s.substr(6));
        else
          throw lowbit::InputError("info: unexpected argument '" + s + "'; see lowbit info --help");
      }
      if (config.empty()) throw lowbit::InputError("info: --model needs a CONFIG file");
      return lowbit::tools::run_info_model(config, sets, std::cout);
    }
    return lowbit::tools::run_info(std::cout);
  }
  throw lowbit::InputError("unknown command '" + cmd + "'; run 'lowbit --help' for the list");
}

}  // namespace

// Whether this process is one rank of several (false when the world itself failed to start).
bool several_ranks() {
  try {
    return lowbit::dist::is_distributed();
  } catch (const std::exception&) {
    return false;
  }
}

int main(int argc, char** argv) {
  int code = 0;
  std::string message;
  try {
    code = run(argc, argv);
    // Communicators go while CUDA and MPI are still up (not in static destruction).
    lowbit::dist::shutdown();
    return code;
  } catch (const lowbit::InputError& e) {
    code = 2;
    message = e.what();
  } catch (const std::exception& e) {
    code = 1;
    message = e.what();
  }
  // One rank's error ends the whole job (MPI_Abort), never a hang of the others; the message
  // names the rank.
  if (several_ranks()) lowbit::dist::abort_job(code, "error: " + message);
  std::cerr << "lowbit: error: " << message << "\n";
  return code;
}
