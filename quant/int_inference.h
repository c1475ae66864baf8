// Integer-only reference inference (docs/methods.md, "Integer inference"; docs/export.md): the
// integer model that `lowbit export --format int` writes, how it is stored, and the loops that run
// it.
//
// A model is a list of ops on values. A value is one of
//   - the float input (the normalised image; quantized once by a `quantize` op),
//   - codes: activation codes q with one scale s, zero point z and range [lo, hi] (x = (q - z) s),
//   - wide: integer values v with a scale per channel (x = v * scale[c]), the int32 accumulators
//     of a conv or linear (bias included) and what residual adds, ReLU/ReLU6 and pooling make
//     of them. A residual stream (a sum) is held in int64 at a scale 2^-16 of the finest
//     accumulator scale feeding it: lowbit's fake quantization adds the float values and
//     quantizes only at the next layer's input, and rounding the sum to a coarser grid (int8, as
//     a deployment that requantizes every add would) moves codes by one in ~1% of places.
// Ops (kind: inputs -> output):
//   quantize     float input -> codes            q = clamp(round(x * (1/s)) + z, lo, hi), f32
//   conv, linear codes -> wide                   acc[k] = sum (q_x - z_x)(q_w - z_w[k]) + bias[k],
//                                                int32 accumulation, weights packed at their bits,
//                                                bias int32 at scale s_x s_w[k] (QLinearConv's)
//   requant      wide -> codes                   q = clamp(round(M[c] v) + z, lo, hi),
//                                                M[c] = scale_in[c] / s (float multiplier in
//                                                double, or a fixed-point multiplier and shift)
//   relu, relu6  wide -> wide                    max(v, 0); min(max(v, 0), round(6 / scale[c]))
//   add          wide, wide -> wide              both rescaled to the output's finer scale t
//                                                (round(M v) with M = scale_in / t >= 1), summed
//                                                in int64
//   pad_channels wide -> wide                    option-A shortcut: x[:, ::stride, ::stride, :]
//                                                with `pad` zero channels each side
//   max_pool     wide -> wide                    max over the window (scales are positive)
//   global_avg_pool wide -> wide                 the sum over H x W; the scale divides by H W
//   flatten      wide -> wide                    (H, W, C) -> (H W C), NHWC order
// The last op's output is the logits, dequantized v * scale[c] at the very end.
//
// Files (save_int_model / load_int_model): DIR/model.json (the graph, every scale and zero
// point as JSON numbers, which round-trip doubles) and DIR/weights.bin (packed weight codes and
// int32 biases, little-endian, at the offsets model.json gives).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace lowbit::quant {

// --- requantization arithmetic -----------------------------------------------------------

// round(v * m), half to even, in double (the float multiplier; |v| < 2^53).
int64_t round_scaled(int64_t v, double m);
// A multiplier as m0 * 2^-shift with m0 in [2^30, 2^31) (gemmlowp / TFLite's form).
struct FixedPointMultiplier {
  int64_t m0 = 0;
  int shift = 0;
};
// Throws unless m is positive, finite and below 2^30.
FixedPointMultiplier fixed_point_multiplier(double m);
// round(v * m0 / 2^shift), half to even, exactly (128-bit product).
int64_t round_scaled_fixed(int64_t v, FixedPointMultiplier f);
// clamp(r + z, lo, hi) as int32.
inline int32_t clamp_code(int64_t r, int64_t z, int64_t lo, int64_t hi) {
  const int64_t q = r + z;
  return int32_t(q < lo ? lo : (q > hi ? hi : q));
}

// --- packing ------------------------------------------------------------------------------

// Codes q in [qmin, qmin + 2^bits) stored as q - qmin in `bits` bits each, least significant
// bit first, ceil(n * bits / 8) bytes (docs/methods.md, "Accounting"'s packed size). bits in [1,
// 8].
std::vector<uint8_t> pack_codes(const std::vector<int32_t>& q, int bits, int32_t qmin);
std::vector<int32_t> unpack_codes(const std::vector<uint8_t>& bytes, int64_t n, int bits,
                                  int32_t qmin);

// --- the model ----------------------------------------------------------------------------

enum class IntValueKind { float_input, codes, wide };

struct IntValue {
  IntValueKind kind = IntValueKind::wide;
  std::vector<int64_t> shape;              // per sample: (H, W, C) or (C)
  std::vector<double> scale;               // codes: one; wide: one per channel; float_input: none
  int64_t zero_point = 0, lo = 0, hi = 0;  // codes only
  int64_t channels() const { return shape.empty() ? 0 : shape.back(); }
};

struct IntOp {
  std::string kind;  // quantize | conv | linear | requant | relu | relu6 | add | pad_channels |
                     // max_pool | global_avg_pool | flatten
  std::string name;  // the lowbit layer it comes from ("layer1.0.conv1")
  std::vector<int> inputs;
  int output = -1;
  // conv / linear: geometry (linear: kernel 1x1 on a (C) value), weights, bias.
  int64_t in_channels = 0, out_channels = 0, groups = 1;
  int64_t kernel_h = 1, kernel_w = 1, stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  bool ceil_mode = false;  // max_pool
  int64_t pad = 0;         // pad_channels: zero channels on each side (stride in stride_h)
  int bits = 8;            // weight code bits (packing)
  int64_t weight_qmin = 0, weight_qmax = 0;
  std::vector<double> weight_scale;        // per output channel
  std::vector<int64_t> weight_zero_point;  // per output channel
  std::vector<int32_t> weight;             // codes, KRSC (K, R, S, C / groups); linear (K, C)
  std::vector<int32_t> bias;               // per output channel, at scale s_x * s_w[k]
};

struct IntModel {
  std::vector<IntValue> values;
  std::vector<IntOp> ops;
  int output = -1;  // the value holding the logits
  int64_t num_classes() const { return values.at(size_t(output)).channels(); }
};

// Checks the graph: value ids, kinds and shapes every op needs, weight and bias sizes, code
// ranges, positive scales, and that int32 accumulators cannot overflow. InputError naming `what`
// (a file) and the op.
void validate_int_model(const IntModel& m, const std::string& what);

void save_int_model(const IntModel& m, const std::string& dir);  // DIR/model.json, weights.bin
IntModel load_int_model(const std::string& dir);

// A batch of one value: shape (N, per-sample shape...), row-major (NHWC). Codes and int32
// accumulators are held in int64 too, which changes none of them.
struct IntTensor {
  std::vector<int64_t> shape;
  std::vector<int64_t> data;
};

struct IntRunOptions {
  bool fixed_point = false;  // requant and add multipliers as FixedPointMultiplier
  // Called after each op with its output (the codes of a requant, the accumulators of a conv).
  // It may change the output: a per-layer check feeds each layer the reference's input codes,
  // so that one layer's rare one-code difference does not spread into the next layers.
  std::function<void(const IntOp&, IntTensor&)> observer;
};

// Runs the model on n images (x: n x the input value's shape, f32, NHWC) and returns the logits
// (n x classes, v * scale).
std::vector<float> run_int_model(const IntModel& m, const float* x, int64_t n,
                                 const IntRunOptions& o = {});

}  // namespace lowbit::quant
