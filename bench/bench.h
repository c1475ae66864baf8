// lowbit's benchmarks: single kernels (convolution, batch norm, elementwise, optimizer steps,
// cross-entropy) measured against the device's copy bandwidth, and full training steps of a
// registered model on synthetic data. bench/pytorch_reference.py measures the same work with
// PyTorch; docs/benchmarks.md explains every number.
//
// Timing: each call is timed after warm-up and the median is reported. CUDA calls are timed with
// events recorded on the device's current stream (the stream lowbit's kernels use), so the
// numbers are device time and no host sync sits between calls; CPU calls with steady_clock.
// A training step is timed as a whole (N steps between two synchronisations, divided by N),
// which is what a training run sees, launch gaps included.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"

namespace lowbit::bench {

// --- timing ----------------------------------------------------------------------------------

struct Timing {
  double median_ms = 0.0;
  double min_ms = 0.0;
  int64_t iters = 0;
};

// Runs fn `warmup` times untimed, then `iters` times, each timed on its own (CUDA events on the
// current stream of `device`, steady_clock on the CPU). iters >= 1, warmup >= 0.
Timing time_calls(Device device, int64_t warmup, int64_t iters, const std::function<void()>& fn);

// Blocks until all work issued to `device` is done (no-op on the CPU).
void synchronize(Device device);

// The CPU thread count of OpenMP (oneDNN, lowbit's loops) and OpenBLAS; n >= 1.
void set_threads(int n);
// OpenMP's thread count (what a parallel region of lowbit's gets).
int threads();

// --- kernel benchmarks -----------------------------------------------------------------------

struct KernelOptions {
  Device device = Device::cpu();
  DType dtype = DType::f32;
  int64_t iters = 20;
  int64_t warmup = 3;
  std::vector<int64_t> size;  // the kernel's geometry (see kernel_help); empty = its default
};

struct KernelResult {
  std::string kernel;         // "conv_forward", "bn_backward", "copy", ...
  std::string device;         // "cpu", "cuda:0"
  std::string dtype;          // "f32", "bf16"
  std::vector<int64_t> size;  // the geometry used
  std::string shape;          // the geometry in words ("N=128 H=32 W=32 C=16 K=16 R=S=3 ...")
  Timing timing;
  // Compulsory memory traffic of one call: every input read once, every output written once
  // (0 for compute-bound kernels). GB/s = bytes / median time.
  double bytes = 0.0;
  // Floating-point operations of one call (multiply-add = 2), 0 where not counted.
  double flops = 0.0;

  // Collectives: nccl-tests' bus bandwidth, busbw = algbw * 2(n-1)/n for an all-reduce of n
  // ranks (algbw = bytes / time: gb_per_s()), 0 for other kernels.
  double bus_factor = 0.0;

  double gb_per_s() const;     // 0 when bytes == 0
  double gflop_per_s() const;  // 0 when flops == 0
};

// One entry of the kernel table: its name, what --size means and its default, the runner
// (which may produce several results, e.g. forward and backward), and a check of the options
// that throws InputError before anything is allocated or timed.
struct KernelBench {
  std::string name;
  std::string size_help;  // "N,H,W,C,K,R[,STRIDE[,GROUPS]] (default 128,32,32,16,16,3)"
  std::string what;       // one line
  std::function<std::vector<KernelResult>(const KernelOptions&)> run;
  std::function<void(const KernelOptions&)> check;
};

// Every kernel benchmark, in the order `all` runs them ("copy" first).
const std::vector<KernelBench>& kernel_benches();
// The entry named `name`; throws InputError listing the names otherwise.
const KernelBench& find_kernel_bench(const std::string& name);

// The copy bandwidth of `device`: dst.copy_(src) of `elements` f32 elements (default 32M =
// 128 MiB per buffer), counted as read + write bytes. Every kernel run reports it first, and
// memory-bound kernels are compared against it.
KernelResult measure_copy(const KernelOptions& opts);

// --- training-step benchmark -----------------------------------------------------------------

struct TrainOptions {
  std::string model = "resnet20";
  int64_t batch = 128;
  int64_t hw = 32;  // square inputs
  int64_t cin = 3;  // input channels
  int64_t classes = 10;
  int64_t steps = 20;  // timed steps
  int64_t warmup = 3;  // untimed steps first (primitive creation, allocator warm-up)
  Device device = Device::cpu();
  // "fp32": everything in f32. "bf16": the trainer's `amp: bf16` (core/autocast.h, see
  // docs/benchmarks.md): f32 weights and optimizer, convolutions and linear layers in bf16, BN
  // statistics in f32, loss in f32.
  std::string mode = "fp32";
  // "qat": the model converted by quantize_model (quant/convert.h) with `quantizer` for weights
  // (per-channel) and activations at `bits` bits, first and last layers at 8 bits, BN folded.
  // "bf16": the step under the trainer's `amp: bf16` whatever the mode (qat with amp: bf16, as
  // users train); "off": f32 unless mode is "bf16".
  std::string amp = "off";
  std::string quantizer = "lsq";
  int64_t bits = 4;
  uint64_t seed = 0;
  double bucket_mb = 25.0;  // data-parallel gradient buckets (train/ddp.h)
};

struct TrainResult {
  TrainOptions options;
  int threads = 0;  // OpenMP threads of the CPU side
  int64_t params = 0;
  double ms_per_step = 0.0;
  double images_per_s = 0.0;
  double final_loss = 0.0;  // the last step's loss (a sanity check: finite)
  // CUDA: the caching allocator's peak of bytes in use since the benchmark started (model,
  // optimizer state, activations). CPU: the process's peak resident set size (getrusage).
  int64_t peak_mem_bytes = 0;
  std::string peak_mem_kind;  // "cuda caching allocator peak" / "peak RSS"
  // Data-parallel runs (mpirun -np N lowbit bench train): images/s above are global (every
  // rank's batch); comm_wait_share is the part of the step rank 0 spent waiting for gradient
  // all-reduces that backward did not hide.
  int world_size = 1;
  double comm_wait_share = 0.0;
};

// Full training steps: forward, cross-entropy, backward, SGD (momentum 0.9, weight decay 5e-4,
// lr 0.01) on one synthetic batch (randn images, randint labels) kept on the device, so no data
// loading is measured. Throws InputError for bad options (unknown model, mode).
TrainResult run_train_bench(const TrainOptions& opts);

// --- input-pipeline benchmark ----------------------------------------------------------------

struct DataOptions {
  std::string folder;  // an image folder: folder/<class>/*.jpg
  int64_t size = 224;  // random_resized_crop output (size x size)
  int64_t batch = 64;
  int64_t workers = 0;    // loader threads; 0: on the calling thread (one core)
  int64_t images = 2000;  // samples timed (whole batches), after 2 workers + 1 untimed batches
  bool scaled_decode = true;
  uint64_t seed = 0;
};

struct DataResult {
  DataOptions options;
  int64_t images = 0;  // samples timed
  double seconds = 0.0;
  double images_per_s = 0.0;
  double images_per_s_per_core = 0.0;  // images_per_s / max(1, workers)
};

// The ImageNet training pipeline of lowbit's data loader over an image folder: read, decode
// (scaled and cropped, or whole), random_resized_crop(size), random_horizontal_flip, ImageNet
// normalisation into f32 NHWC batches. Throws InputError for a bad folder or option.
DataResult run_data_bench(const DataOptions& opts);

}  // namespace lowbit::bench
