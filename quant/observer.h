// Observers: the range statistics (x_min, x_max) that the uniform quantizers turn into a scale
// and zero-point with calc_qparams (docs/methods.md, "Observers"). Five are registered by name (the
// `observer` option of a quantizer): minmax (running extremes), ema (PyTorch's moving-average
// min-max, c = 0.01), percentile (numpy-"linear" percentiles of every calibration value), mse (the
// clipping t * (x_min, x_max), t = j/T, with the least squared fake-quant error; ties go to the
// larger t) and kl (the clipping threshold of a histogram of |x| with the least KL divergence
// between the clipped and the quantized distribution, docs/methods.md "KL-entropy observer").
// Per-channel observers reduce over every axis but the channel axis.
//
// minmax and ema update the quantizer's min_val/max_val buffers on the device with tensor ops
// (no host sync), on every training step and calibration batch. percentile and mse need every
// value: they copy calibration batches to the host (calibration is not a training step) and
// compute the range when the quantizer asks for it (finalize); so does kl. Up to `max_values`
// values (default 2^24) are kept exactly; beyond, each channel switches to a 2048-bin histogram
// over its running [min, max] (docs/methods.md, "Observers" allows it for large tensors), re-binned
// as the range grows, with linear interpolation inside a bin; mse then weighs bin centres by their
// counts.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "quant/fake_quant.h"
#include "quant/fused.h"

namespace lowbit::quant {

class OptionReader;

class Observer {
 public:
  virtual ~Observer() = default;
  virtual const char* name() const = 0;
  // Observes x (contiguous, viewed through l). min_val, max_val: f32 (C) on x's device, +inf and
  // -inf until something was observed; minmax/ema update them here, in place.
  virtual void observe(const Tensor& x, const ChannelLayout& l, Tensor& min_val,
                       Tensor& max_val) = 0;
  // Writes the range of everything observed so far into min_val/max_val if observe() left it
  // pending (percentile, mse); a no-op otherwise.
  virtual void finalize(Tensor& min_val, Tensor& max_val) {
    (void)min_val;
    (void)max_val;
  }
  // True when it observes every training step (minmax, ema); false when it only observes while
  // calibrating (percentile, mse), or on the first training batch when nothing was calibrated.
  virtual bool observes_in_training() const = 0;
  // Its options for printing ("ema, c=0.01").
  virtual std::string repr() const { return name(); }
};

// What an observer may need to know about the quantizer (mse evaluates candidate qparams).
struct ObserverContext {
  QuantRange range;
  bool symmetric = false;
};

using ObserverFactory =
    std::function<std::unique_ptr<Observer>(OptionReader& r, const ObserverContext& ctx)>;

// Builds a registered observer, reading its options from r; InputError naming the known
// observers for an unknown name.
std::unique_ptr<Observer> create_observer(const std::string& name, OptionReader& r,
                                          const ObserverContext& ctx);
std::vector<std::string> observer_names();
struct ObserverRegistrar {
  ObserverRegistrar(const std::string& name, ObserverFactory factory);
};

// Per-channel batch extremes of x (contiguous): f32 (C) tensors on x's device. In a
// data-parallel run, the extremes over every rank's x (a collective: all ranks call it together).
std::pair<Tensor, Tensor> batch_min_max(const Tensor& x, const ChannelLayout& l);

// The KL-entropy clipping threshold of a histogram of |x| (equal bins over [0, amax]) for a
// quantizer with `levels` levels on that side of zero (observer "kl").
double kl_threshold(const std::vector<double>& hist, double amax, int64_t levels);

// numpy's "linear" percentile (docs/methods.md, "Observers") of sorted values, p in [0, 100].
double percentile_linear(const std::vector<float>& sorted, double p);

// Calibration values of each channel, on the host: exact up to max_values in all, then
// per-channel histograms.
class ValueStore {
 public:
  static constexpr int kBins = 2048;
  explicit ValueStore(int64_t max_values) : max_values_(max_values) {}
  void add(const Tensor& x, const ChannelLayout& l);  // copies x to the host
  bool empty() const { return channels_.empty(); }
  int64_t channels() const { return int64_t(channels_.size()); }
  bool exact() const { return exact_; }
  float min(int64_t c) const { return channels_[size_t(c)].lo; }
  float max(int64_t c) const { return channels_[size_t(c)].hi; }
  // numpy-"linear" percentile p in [0, 100] of channel c (interpolated inside a bin in
  // histogram mode).
  double percentile(int64_t c, double p);
  // Channel c as weighted points: its values with weight 1 (exact mode) or the bin centres with
  // their counts (histogram mode).
  void points(int64_t c, std::vector<float>* v, std::vector<double>* w) const;

 private:
  struct Channel {
    std::vector<float> values;  // exact mode
    bool sorted = false;
    std::vector<double> counts;  // histogram mode: kBins counts over [lo, hi]
    float lo = 0.0f, hi = 0.0f;  // running min and max
    double total = 0.0;
  };
  void to_histograms();
  void hist_add(Channel& ch, const float* v, int64_t n);

  int64_t max_values_;
  int64_t stored_ = 0;
  bool exact_ = true;
  std::vector<Channel> channels_;
};

}  // namespace lowbit::quant

#define LOWBIT_REGISTER_OBSERVER(name, factory)                                              \
  static ::lowbit::quant::ObserverRegistrar LOWBIT_REGISTER_CAT(lowbit_observer_, __LINE__)( \
      name, factory)
