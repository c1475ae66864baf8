// `lowbit bench kernel NAME` and `lowbit bench train`: argument parsing and the text and JSON
// reports. The measurements themselves are in bench/; docs/benchmarks.md explains the numbers.
#include "tools/bench.h"

#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "core/error.h"
#include "dist/world.h"
#include "layers/conv2d.h"
#include "train/trainer.h"

namespace lowbit::tools {

namespace {

using json = nlohmann::json;

const char* kBenchHelp =
    "usage: lowbit bench <kernel|train|data> [options]\n"
    "\n"
    "  kernel NAME   time one kernel (conv, bn, add, relu, sgd, adamw, cross_entropy, copy) or\n"
    "                all of them; reports the median time per call, GB/s against the measured\n"
    "                copy bandwidth, GFLOP/s for convolutions\n"
    "  train         time full training steps (forward, cross-entropy, backward, SGD) of a\n"
    "                model on synthetic data; reports images/s, ms per step, peak memory\n"
    "  data          time the ImageNet input pipeline (JPEG decode, random resized crop, flip,\n"
    "                normalise) over an image folder; reports images/s and images/s per core\n"
    "\n"
    "Run 'lowbit bench kernel --help', 'lowbit bench train --help' or 'lowbit bench data --help'\n"
    "for the options.\n"
    "bench/pytorch_reference.py measures the same work with PyTorch; bench/compare.sh runs\n"
    "both (docs/benchmarks.md).\n";

const char* kTrainHelp =
    "usage: lowbit bench train [--model NAME] [--batch B] [--hw H] [--cin C] [--classes K]\n"
    "                          [--steps N] [--warmup W] [--device auto|cpu|cuda|cuda:N]\n"
    "                          [--mode fp32|bf16|qat] [--amp off|bf16] [--quantizer Q] [--bits B]\n"
    "                          [--threads T] [--cpu-conv A] [--seed S] [--bucket-mb M] [--json]\n"
    "\n"
    "Times N training steps (after W untimed ones) of model NAME on one synthetic batch of B\n"
    "images of HxHxC (randn) with labels in [0, K) (randint): forward, cross-entropy, backward,\n"
    "SGD (lr 0.01, momentum 0.9, weight decay 5e-4). No data loading is measured.\n"
    "\n"
    "  --model NAME   a registered model (default resnet20)\n"
    "  --batch B      batch size (default 128)\n"
    "  --hw H         input height and width (default 32)\n"
    "  --cin C        input channels (default 3)\n"
    "  --classes K    classes (default 10)\n"
    "  --steps N      timed steps (default 20)\n"
    "  --warmup W     untimed steps first (default 3)\n"
    "  --device D     auto (default: cuda:0 when a GPU is visible), cpu, cuda, cuda:N\n"
    "  --mode M       fp32 (default) or bf16: mixed precision as `amp: bf16` (autocast: bf16\n"
    "                 convolutions and linear layers, f32 weights, BN statistics and loss); or "
    "qat:\n"
    "                 quantization-aware training (quantize_model: per-channel weights and\n"
    "                 activations at --bits with --quantizer, first/last layer 8 bit, BN folded);\n"
    "                 or search: the mixed-precision search's step (every conv and linear mixes\n"
    "                 binary and 8-bit weights, one BN per candidate; a weight step, then an\n"
    "                 alpha step on the same batch, docs/methods.md)\n"
    "  --amp A        off (default) or bf16: any mode under `amp: bf16` (--mode qat --amp bf16\n"
    "                 is QAT as users train it; --mode bf16 is --mode fp32 --amp bf16)\n"
    "  --quantizer Q  qat: a registered quantizer (default lsq; uniform, dsq, ...)\n"
    "  --bits B       qat: weight and activation bits (default 4)\n"
    "  --threads T    CPU threads (OpenMP and OpenBLAS; default: OMP_NUM_THREADS or all cores)\n"
    "  --cpu-conv A   CPU 3x3 convolutions, as `cpu_conv:` in YAML: auto (default; lowbit's\n"
    "                 Winograd F(4x4, 3x3) where it applies, oneDNN's direct kernels elsewhere),\n"
    "                 direct (oneDNN's direct kernels everywhere, as PyTorch), winograd (oneDNN's\n"
    "                 Winograd F(4x4, 3x3) wherever it applies), winograd_f4 (lowbit's, as auto)\n"
    "                 or winograd_f2 (lowbit's F(2x2, 3x3): slower, 5-10x less rounding error)\n"
    "  --seed S       seed of the weights and the synthetic batch (default 0)\n"
    "  --bucket-mb M  data-parallel gradient buckets in MiB (default 25; docs/distributed.md)\n"
    "  --json         print one JSON object: model, batch, hw, cin, classes, mode, amp, device,\n"
    "                 threads, cpu_conv, steps, warmup, params, images_per_s, ms_per_step,\n"
    "                 peak_mem_bytes, peak_mem_kind, final_loss, world_size, comm_wait_share;\n"
    "                 qat adds quantizer, bits\n"
    "\n"
    "Under mpirun -np N (or srun -n N) every rank runs batch B data-parallel: images/s is global\n"
    "(N*B per step) and comm_wait_share the part of the step spent waiting for the gradient\n"
    "all-reduces that backward did not hide.\n"
    "\n"
    "Peak memory: on CUDA the caching allocator's peak of bytes in use during the benchmark;\n"
    "on the CPU the process's peak resident set size (getrusage).\n";

const char* kDataHelp =
    "usage: lowbit bench data --folder DIR [--size S] [--batch B] [--workers N] [--images M]\n"
    "                         [--exact-decode] [--seed S] [--json]\n"
    "\n"
    "Times the training input pipeline of an ImageNet config over the JPEG folder DIR\n"
    "(DIR/<class>/*.jpg): read, decode, random_resized_crop(S) (scale 0.08-1, ratio 3/4-4/3),\n"
    "random_horizontal_flip, ImageNet normalisation into f32 batches of B, by the data loader\n"
    "with N worker threads, over M images after 2N+1 untimed batches (start-up and prefetch).\n"
    "scripts/make_jpegs.py writes a folder of test JPEGs; bench/pytorch_reference.py data\n"
    "times torchvision on the same one.\n"
    "\n"
    "  --folder DIR     the image folder (required)\n"
    "  --size S         crop output size (default 224)\n"
    "  --batch B        batch size (default 64)\n"
    "  --workers N      loader threads (default 0: on the calling thread, one core)\n"
    "  --images M       images timed (default 2000; rounded up to whole batches)\n"
    "  --exact-decode   decode whole images, then crop and resize (`data.scaled_decode: false`);\n"
    "                   default: decode only the crop at the smallest JPEG scale that keeps S\n"
    "  --seed S         shuffling and augmentation seed (default 0)\n"
    "  --json           print one JSON object: folder, size, batch, workers, scaled_decode,\n"
    "                   images, seconds, images_per_s, images_per_s_per_core\n";

std::string kernel_help() {
  std::ostringstream os;
  os << "usage: lowbit bench kernel NAME [--size A,B,...] [--device auto|cpu|cuda|cuda:N]\n"
        "                           [--dtype f32|bf16] [--iters N] [--warmup W] [--threads T]\n"
        "                           [--cpu-conv auto|direct|winograd|winograd_f2|winograd_f4] "
        "[--json]\n"
        "\n"
        "Times NAME: the median of N calls (default 20) after W untimed ones (default 3); CUDA\n"
        "with events on the device's stream, the CPU with steady_clock. Every run first\n"
        "measures the device copy bandwidth (a large dst.copy_(src)) and reports it; memory-\n"
        "bound kernels report GB/s (compulsory traffic: inputs read once, outputs written\n"
        "once) and the fraction of the copy bandwidth, convolutions GFLOP/s.\n"
        "\n"
        "kernels and their --size:\n";
  for (const bench::KernelBench& b : bench::kernel_benches()) {
    os << "  " << std::left << std::setw(14) << b.name << b.what << "\n"
       << "  " << std::setw(14) << ""
       << "--size " << b.size_help << "\n";
  }
  os << "  " << std::setw(14) << "all"
     << "every kernel above with its default size\n"
     << "\n"
        "  --dtype T   f32 (default) or bf16 (the CPU convolution needs AVX-512 for bf16)\n"
        "  --cpu-conv A  CPU 3x3 convolution algorithm (lowbit bench train --help)\n"
        "  --json      one JSON object per benchmark and line: kernel, device, dtype, threads,\n"
        "              size, shape, iters, warmup, ms (median), ms_min, and where they apply\n"
        "              bytes, gb_per_s, bw_fraction, flops, gflop_per_s; copy_gb_per_s on all;\n"
        "              cpu_conv on the conv kernels\n";
  return os.str();
}

bool is_help(const std::string& a) { return a == "--help" || a == "-h"; }

int64_t parse_int(const std::string& flag, const std::string& v) {
  size_t used = 0;
  int64_t x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LOWBIT_CHECK_INPUT(used == v.size() && !v.empty(), "bench: ", flag, " wants an integer, got '", v,
                     "'");
  return x;
}

std::vector<int64_t> parse_size(const std::string& v) {
  std::vector<int64_t> out;
  std::stringstream ss(v);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(parse_int("--size", item));
  LOWBIT_CHECK_INPUT(!out.empty(), "bench: --size wants comma-separated integers, got '", v, "'");
  return out;
}

// Walks argv[first..]: `flag VALUE` pairs and bare flags, calling on_flag(flag, value) with
// value = "" for --json; positional arguments go to on_positional.
struct ArgWalker {
  int argc;
  char** argv;
  int first;
  const char* cmd;

  template <typename F, typename P>
  void walk(const std::vector<std::string>& valued, const std::vector<std::string>& bare, F on_flag,
            P on_positional) const {
    for (int i = first; i < argc; ++i) {
      const std::string s = argv[i];
      auto in = [&](const std::vector<std::string>& v) {
        for (const auto& f : v) {
          if (f == s) return true;
        }
        return false;
      };
      if (in(valued)) {
        LOWBIT_CHECK_INPUT(i + 1 < argc, cmd, ": ", s, " needs a value");
        on_flag(s, std::string(argv[++i]));
      } else if (in(bare)) {
        on_flag(s, std::string());
      } else if (!s.empty() && s[0] == '-') {
        throw InputError(str_cat(cmd, ": unknown option '", s, "'; see lowbit ", cmd, " --help"));
      } else {
        on_positional(s);
      }
    }
  }
};

Device parse_device(const std::string& spec) { return train::resolve_device(spec); }

DType parse_bench_dtype(const std::string& v) {
  LOWBIT_CHECK_INPUT(v == "f32" || v == "bf16", "bench kernel: --dtype must be f32 or bf16, got '",
                     v, "'");
  return v == "f32" ? DType::f32 : DType::bf16;
}

std::string fixed(double v, int prec) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(prec) << v;
  return os.str();
}

json kernel_json(const bench::KernelResult& r, const bench::KernelOptions& o, double copy_gbs) {
  json j{{"bench", "kernel"},        {"framework", "lowbit"},    {"kernel", r.kernel},
         {"device", r.device},       {"dtype", r.dtype},         {"threads", bench::threads()},
         {"size", r.size},           {"shape", r.shape},         {"iters", r.timing.iters},
         {"warmup", o.warmup},       {"ms", r.timing.median_ms}, {"ms_min", r.timing.min_ms},
         {"copy_gb_per_s", copy_gbs}};
  if (r.kernel.rfind("conv", 0) == 0)
    j["cpu_conv"] = layers::cpu_conv_algo_name(layers::cpu_conv_algo());
  if (r.bus_factor > 0) j["busbw_gb_per_s"] = r.gb_per_s() * r.bus_factor;
  if (r.bytes > 0) {
    j["bytes"] = r.bytes;
    j["gb_per_s"] = r.gb_per_s();
    j["bw_fraction"] = copy_gbs > 0 ? r.gb_per_s() / copy_gbs : 0.0;
  }
  if (r.flops > 0) {
    j["flops"] = r.flops;
    j["gflop_per_s"] = r.gflop_per_s();
  }
  return j;
}

std::string kernel_line(const bench::KernelResult& r, double copy_gbs) {
  std::ostringstream os;
  os << std::left << std::setw(24) << r.kernel << std::right << std::setw(11)
     << fixed(r.timing.median_ms, r.timing.median_ms < 1 ? 4 : 3) << " ms";
  if (r.bytes > 0) {
    os << std::setw(10) << fixed(r.gb_per_s(), 1) << " GB/s";
    if (r.kernel != "copy" && r.kernel != "allreduce" && copy_gbs > 0) {
      os << " (" << fixed(100 * r.gb_per_s() / copy_gbs, 0) << "% of copy)";
    }
  }
  if (r.bus_factor > 0) os << "  busbw " << fixed(r.gb_per_s() * r.bus_factor, 2) << " GB/s";
  if (r.flops > 0) os << std::setw(10) << fixed(r.gflop_per_s(), 1) << " GFLOP/s";
  os << "   " << r.shape;
  return os.str();
}

int run_kernel(int argc, char** argv, std::ostream& out) {
  std::string name, device = "auto", dtype = "f32";
  bench::KernelOptions o;
  bool as_json = false, help = false;
  int threads = 0;
  ArgWalker{argc, argv, 3, "bench kernel"}.walk(
      {"--size", "--device", "--dtype", "--iters", "--warmup", "--threads", "--cpu-conv"},
      {"--json", "--help", "-h"},
      [&](const std::string& f, const std::string& v) {
        if (f == "--size")
          o.size = parse_size(v);
        else if (f == "--device")
          device = v;
        else if (f == "--dtype")
          dtype = v;
        else if (f == "--iters")
          o.iters = parse_int(f, v);
        else if (f == "--warmup")
          o.warmup = parse_int(f, v);
        else if (f == "--threads")
          threads = int(parse_int(f, v));
        else if (f == "--cpu-conv")
          layers::set_cpu_conv_algo(layers::parse_cpu_conv_algo(v, "bench kernel --cpu-conv"));
        else if (f == "--json")
          as_json = true;
        else
          help = true;
      },
      [&](const std::string& p) {
        LOWBIT_CHECK_INPUT(name.empty(), "bench kernel: unexpected argument '", p, "'");
        name = p;
      });
  if (help) {
    out << kernel_help();
    return 0;
  }
  LOWBIT_CHECK_INPUT(!name.empty(),
                     "bench kernel: a kernel NAME is required; see lowbit bench "
                     "kernel --help");
  LOWBIT_CHECK_INPUT(o.iters >= 1 && o.warmup >= 0, "bench kernel: --iters ", o.iters,
                     " must be >= 1 and --warmup ", o.warmup, " >= 0");
  LOWBIT_CHECK_INPUT(name != "all" || o.size.empty(),
                     "bench kernel all: --size has a different meaning for each kernel; give one "
                     "kernel NAME with --size");
  if (threads != 0) bench::set_threads(threads);
  o.dtype = parse_bench_dtype(dtype);
  o.device = parse_device(device);

  std::vector<const bench::KernelBench*> todo;
  if (name == "all") {
    for (const auto& b : bench::kernel_benches()) {
      if (b.name != "copy") todo.push_back(&b);
    }
  } else if (name != "copy") {
    todo.push_back(&bench::find_kernel_bench(name));
  }

  // The copy bandwidth first, at the default size unless `copy` itself was asked for.
  bench::KernelOptions copy_opts = o;
  if (name != "copy") copy_opts.size.clear();
  bench::find_kernel_bench("copy").check(copy_opts);
  for (const bench::KernelBench* b : todo) b->check(o);
  const bench::KernelResult copy = bench::measure_copy(copy_opts);
  const double copy_gbs = copy.gb_per_s();
  auto emit = [&](const bench::KernelResult& r, const bench::KernelOptions& ro) {
    if (as_json)
      out << kernel_json(r, ro, copy_gbs).dump() << "\n";
    else
      out << kernel_line(r, copy_gbs) << "\n";
    out.flush();
  };
  if (!as_json) {
    out << "lowbit bench kernel " << name << " on " << o.device.str() << ", " << dtype_name(o.dtype)
        << ", " << bench::threads() << " CPU thread(s), median of " << o.iters << " calls after "
        << o.warmup << " warm-up\n";
  }
  emit(copy, copy_opts);
  for (const bench::KernelBench* b : todo) {
    for (const bench::KernelResult& r : b->run(o)) emit(r, o);
  }
  return 0;
}

int run_train(int argc, char** argv, std::ostream& out) {
  bench::TrainOptions o;
  std::string device = "auto";
  bool as_json = false, help = false;
  int threads = 0;
  ArgWalker{argc, argv, 3, "bench train"}.walk(
      {"--model", "--batch", "--hw", "--cin", "--classes", "--steps", "--warmup", "--device",
       "--mode", "--amp", "--threads", "--cpu-conv", "--seed", "--quantizer", "--bits",
       "--bucket-mb"},
      {"--json", "--help", "-h"},
      [&](const std::string& f, const std::string& v) {
        if (f == "--model")
          o.model = v;
        else if (f == "--batch")
          o.batch = parse_int(f, v);
        else if (f == "--hw")
          o.hw = parse_int(f, v);
        else if (f == "--cin")
          o.cin = parse_int(f, v);
        else if (f == "--classes")
          o.classes = parse_int(f, v);
        else if (f == "--steps")
          o.steps = parse_int(f, v);
        else if (f == "--warmup")
          o.warmup = parse_int(f, v);
        else if (f == "--device")
          device = v;
        else if (f == "--mode")
          o.mode = v;
        else if (f == "--amp")
          o.amp = v;
        else if (f == "--threads")
          threads = int(parse_int(f, v));
        else if (f == "--cpu-conv")
          layers::set_cpu_conv_algo(layers::parse_cpu_conv_algo(v, "bench train --cpu-conv"));
        else if (f == "--seed")
          o.seed = uint64_t(parse_int(f, v));
        else if (f == "--quantizer")
          o.quantizer = v;
        else if (f == "--bits")
          o.bits = parse_int(f, v);
        else if (f == "--bucket-mb")
          o.bucket_mb = double(parse_int(f, v));
        else if (f == "--json")
          as_json = true;
        else
          help = true;
      },
      [&](const std::string& p) {
        throw InputError(str_cat("bench train: unexpected argument '", p,
                                 "'; see lowbit bench "
                                 "train --help"));
      });
  if (help) {
    out << kTrainHelp;
    return 0;
  }
  if (threads != 0) bench::set_threads(threads);
  o.device = parse_device(device);
  const bench::TrainResult r = bench::run_train_bench(o);
  if (as_json) {
    json j{{"bench", "train"},
           {"framework", "lowbit"},
           {"model", o.model},
           {"batch", o.batch},
           {"hw", o.hw},
           {"cin", o.cin},
           {"classes", o.classes},
           {"mode", o.mode},
           {"amp", o.mode == "bf16" ? std::string("bf16") : o.amp},
           {"device", o.device.str()},
           {"threads", r.threads},
           {"cpu_conv", layers::cpu_conv_algo_name(layers::cpu_conv_algo())},
           {"steps", o.steps},
           {"warmup", o.warmup},
           {"params", r.params},
           {"images_per_s", r.images_per_s},
           {"ms_per_step", r.ms_per_step},
           {"peak_mem_bytes", r.peak_mem_bytes},
           {"peak_mem_kind", r.peak_mem_kind},
           {"final_loss", r.final_loss},
           {"world_size", r.world_size},
           {"comm_wait_share", r.comm_wait_share}};
    if (o.mode == "qat") {
      j["quantizer"] = o.quantizer;
      j["bits"] = o.bits;
    }
    out << j.dump() << "\n";
  } else {
    out << "lowbit bench train: " << o.model << " batch " << o.batch << " " << o.hw << "x" << o.hw
        << "x" << o.cin << ", " << o.classes << " classes, " << o.mode
        << (o.amp == "bf16" && o.mode != "bf16" ? " amp bf16" : "") << " on " << o.device.str()
        << " (" << r.threads << " CPU thread(s)), " << r.params << " parameters\n"
        << "  " << fixed(r.images_per_s, 1) << " images/s, " << fixed(r.ms_per_step, 2)
        << " ms/step over " << o.steps << " steps after " << o.warmup << " warm-up\n"
        << "  peak memory " << fixed(double(r.peak_mem_bytes) / double(1 << 20), 1) << " MiB ("
        << r.peak_mem_kind << "), last loss " << fixed(r.final_loss, 4) << "\n";
    if (r.world_size > 1) {
      out << "  " << r.world_size << " ranks (global images/s), "
          << fixed(100 * r.comm_wait_share, 1)
          << "% of the step waiting for gradient all-reduces\n";
    }
  }
  return 0;
}

int run_data(int argc, char** argv, std::ostream& out) {
  bench::DataOptions o;
  bool as_json = false, help = false;
  ArgWalker{argc, argv, 3, "bench data"}.walk(
      {"--folder", "--size", "--batch", "--workers", "--images", "--seed"},
      {"--exact-decode", "--json", "--help", "-h"},
      [&](const std::string& f, const std::string& v) {
        if (f == "--folder")
          o.folder = v;
        else if (f == "--size")
          o.size = parse_int(f, v);
        else if (f == "--batch")
          o.batch = parse_int(f, v);
        else if (f == "--workers")
          o.workers = parse_int(f, v);
        else if (f == "--images")
          o.images = parse_int(f, v);
        else if (f == "--seed")
          o.seed = uint64_t(parse_int(f, v));
        else if (f == "--exact-decode")
          o.scaled_decode = false;
        else if (f == "--json")
          as_json = true;
        else
          help = true;
      },
      [&](const std::string& p) {
        throw InputError(
            str_cat("bench data: unexpected argument '", p, "'; see lowbit bench data --help"));
      });
  if (help) {
    out << kDataHelp;
    return 0;
  }
  LOWBIT_CHECK_INPUT(!o.folder.empty(),
                     "bench data: --folder DIR is required (lowbit bench data "
                     "--help)");
  const bench::DataResult r = bench::run_data_bench(o);
  if (as_json) {
    out << json{{"bench", "data"},
                {"framework", "lowbit"},
                {"folder", o.folder},
                {"size", o.size},
                {"batch", o.batch},
                {"workers", o.workers},
                {"scaled_decode", o.scaled_decode},
                {"images", r.images},
                {"seconds", r.seconds},
                {"images_per_s", r.images_per_s},
                {"images_per_s_per_core", r.images_per_s_per_core}}
               .dump()
        << "\n";
  } else {
    out << "lowbit bench data: " << o.folder << ", random_resized_crop(" << o.size << ") + flip + "
        << "normalise, " << (o.scaled_decode ? "scaled window decode" : "whole-image decode")
        << ", batch " << o.batch << ", " << o.workers << " worker(s)\n"
        << "  " << fixed(r.images_per_s, 1) << " images/s (" << fixed(r.images_per_s_per_core, 1)
        << " per core) over " << r.images << " images in " << fixed(r.seconds, 2) << " s\n";
  }
  return 0;
}

}  // namespace

int run_bench(int argc, char** argv, std::ostream& out_all) {
  // Under mpirun every rank runs the benchmark (collectives need them all); rank 0 reports.
  std::ostringstream discard;
  std::ostream& out = dist::is_root() ? out_all : discard;
  if (argc < 3 || is_help(argv[2])) {
    out << kBenchHelp;
    return argc < 3 ? 2 : 0;
  }
  const std::string sub = argv[2];
  if (sub == "kernel") return run_kernel(argc, argv, out);
  if (sub == "train") return run_train(argc, argv, out);
  if (sub == "data") return run_data(argc, argv, out);
  throw InputError(str_cat("bench: unknown subcommand '", sub,
                           "'; use kernel, train or data (lowbit bench --help)"));
}

}  // namespace lowbit::tools
