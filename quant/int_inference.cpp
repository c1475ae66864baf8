// Integer-only reference inference: requantization arithmetic, code packing, the model's files
// and the loops that run it (see int_inference.h). Plain CPU loops, parallel over output rows:
// this is the reference a deployment is checked against, not a fast kernel.
#include "quant/int_inference.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/parallel.h"
#include "layers/conv2d.h"
#include "layers/pooling.h"

namespace lowbit::quant {

namespace fs = std::filesystem;
using nlohmann::json;

// --- requantization ------------------------------------------------------------------------

int64_t round_scaled(int64_t v, double m) { return int64_t(std::nearbyint(double(v) * m)); }

FixedPointMultiplier fixed_point_multiplier(double m) {
  LOWBIT_CHECK(std::isfinite(m) && m > 0 && m < double(1 << 30),
               "fixed_point_multiplier: the multiplier must be in (0, 2^30), got ", m);
  int e = 0;
  const double f = std::frexp(m, &e);  // m = f 2^e, f in [0.5, 1)
  int64_t m0 = int64_t(std::llround(std::ldexp(f, 31)));
  if (m0 == (int64_t(1) << 31)) {
    m0 >>= 1;
    ++e;
  }
  return {m0, 31 - e};
}

int64_t round_scaled_fixed(int64_t v, FixedPointMultiplier f) {
  using i128 = __int128;
  if (f.shift >= 126) return 0;  // |v m0| < 2^94: below one half
  const i128 p = i128(v) * f.m0;
  // Multiplications by powers of two, not left shifts: shifting a negative value left is
  // undefined in C++17 (UBSan reports it).
  if (f.shift <= 0) return int64_t(p * (i128(1) << -f.shift));
  i128 q = p >> f.shift;  // floor (arithmetic shift)
  const i128 rem = p - q * (i128(1) << f.shift), half = i128(1) << (f.shift - 1);
  if (rem > half || (rem == half && (q & 1))) ++q;
  return int64_t(q);
}

// --- packing -------------------------------------------------------------------------------

std::vector<uint8_t> pack_codes(const std::vector<int32_t>& q, int bits, int32_t qmin) {
  LOWBIT_CHECK(bits >= 1 && bits <= 8, "pack_codes: bits must be in [1, 8], got ", bits);
  const int64_t n = int64_t(q.size());
  std::vector<uint8_t> out(size_t((n * bits + 7) / 8), 0);
  const int64_t levels = int64_t(1) << bits;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t u = int64_t(q[size_t(i)]) - qmin;
    LOWBIT_CHECK(u >= 0 && u < levels, "pack_codes: code ", q[size_t(i)], " is outside [", qmin,
                 ", ", qmin + levels - 1, "]");
    for (int b = 0; b < bits; ++b) {
      const int64_t bit = i * bits + b;
      if ((u >> b) & 1) out[size_t(bit / 8)] |= uint8_t(1u << (bit % 8));
    }
  }
  return out;
}

std::vector<int32_t> unpack_codes(const std::vector<uint8_t>& bytes, int64_t n, int bits,
                                  int32_t qmin) {
  LOWBIT_CHECK(bits >= 1 && bits <= 8, "unpack_codes: bits must be in [1, 8], got ", bits);
  LOWBIT_CHECK(int64_t(bytes.size()) * 8 >= n * bits, "unpack_codes: ", bytes.size(),
               " bytes hold fewer than ", n, " codes of ", bits, " bits");
  std::vector<int32_t> q(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int32_t u = 0;
    for (int b = 0; b < bits; ++b) {
      const int64_t bit = i * bits + b;
      u |= int32_t((bytes[size_t(bit / 8)] >> (bit % 8)) & 1) << b;
    }
    q[size_t(i)] = u + qmin;
  }
  return q;
}

// --- validation ----------------------------------------------------------------------------

namespace {

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

const char* kind_name(IntValueKind k) {
  switch (k) {
    case IntValueKind::float_input:
      return "float_input";
    case IntValueKind::codes:
      return "codes";
    case IntValueKind::wide:
      return "wide";
  }
  return "?";
}

IntValueKind parse_kind(const std::string& s, const std::string& what) {
  if (s == "float_input") return IntValueKind::float_input;
  if (s == "codes") return IntValueKind::codes;
  LOWBIT_CHECK_INPUT(s == "wide", what, ": value kind '", s,
                     "' is not one of float_input, codes, wide");
  return IntValueKind::wide;
}

}  // namespace

void validate_int_model(const IntModel& m, const std::string& what) {
  const int nv = int(m.values.size());
  for (int i = 0; i < nv; ++i) {
    const IntValue& v = m.values[size_t(i)];
    LOWBIT_CHECK_INPUT(!v.shape.empty() && numel(v.shape) > 0, what, ": value ", i,
                       " has an empty shape");
    if (v.kind == IntValueKind::float_input) continue;
    const size_t want = v.kind == IntValueKind::codes ? 1 : size_t(v.channels());
    LOWBIT_CHECK_INPUT(v.scale.size() == want, what, ": value ", i, " (", kind_name(v.kind),
                       ") has ", v.scale.size(), " scales, expected ", want);
    for (double s : v.scale)
      LOWBIT_CHECK_INPUT(std::isfinite(s) && s > 0, what, ": value ", i, " has scale ", s,
                         "; scales must be positive and finite");
    if (v.kind == IntValueKind::codes)
      LOWBIT_CHECK_INPUT(
          v.lo <= v.zero_point && v.zero_point <= v.hi && v.lo >= -32768 && v.hi <= 32767, what,
          ": value ", i, " has codes [", v.lo, ", ", v.hi, "] and zero point ", v.zero_point,
          "; want lo <= z <= hi in 16 bits");
  }
  std::vector<bool> defined(size_t(nv), false);
  for (int i = 0; i < nv; ++i)
    defined[size_t(i)] = m.values[size_t(i)].kind == IntValueKind::float_input;
  for (const IntOp& op : m.ops) {
    const std::string where = str_cat(what, ": op '", op.kind, "' (", op.name, ")");
    LOWBIT_CHECK_INPUT(op.output >= 0 && op.output < nv && !defined[size_t(op.output)], where,
                       ": output value ", op.output, " is out of range or written twice");
    for (int in : op.inputs)
      LOWBIT_CHECK_INPUT(in >= 0 && in < nv && defined[size_t(in)], where, ": input value ", in,
                         " is out of range or not computed yet");
    const size_t want_inputs = op.kind == "add" ? 2 : 1;
    LOWBIT_CHECK_INPUT(op.inputs.size() == want_inputs, where, ": has ", op.inputs.size(),
                       " inputs, expected ", want_inputs);
    const IntValue& x = m.values[size_t(op.inputs[0])];
    const IntValue& y = m.values[size_t(op.output)];
    auto want = [&](const IntValue& v, IntValueKind k, const char* role) {
      LOWBIT_CHECK_INPUT(v.kind == k, where, ": its ", role, " must be ", kind_name(k), ", is ",
                         kind_name(v.kind));
    };
    if (op.kind == "quantize") {
      want(x, IntValueKind::float_input, "input");
      want(y, IntValueKind::codes, "output");
      LOWBIT_CHECK_INPUT(x.shape == y.shape, where, ": shape changes");
    } else if (op.kind == "requant") {
      want(x, IntValueKind::wide, "input");
      want(y, IntValueKind::codes, "output");
      LOWBIT_CHECK_INPUT(x.shape == y.shape, where, ": shape changes");
    } else if (op.kind == "conv" || op.kind == "linear") {
      want(x, IntValueKind::codes, "input");
      want(y, IntValueKind::wide, "output");
      const bool conv = op.kind == "conv";
      LOWBIT_CHECK_INPUT(
          op.groups >= 1 && op.in_channels % op.groups == 0 && op.out_channels % op.groups == 0,
          where, ": groups ", op.groups, " do not divide the channels");
      LOWBIT_CHECK_INPUT(op.bits >= 1 && op.bits <= 8 && op.weight_qmin <= op.weight_qmax &&
                             op.weight_qmax - op.weight_qmin < (int64_t(1) << op.bits),
                         where, ": weight codes [", op.weight_qmin, ", ", op.weight_qmax,
                         "] do not fit ", op.bits, " bits");
      if (conv) {
        LOWBIT_CHECK_INPUT(x.shape.size() == 3 && x.shape[2] == op.in_channels, where,
                           ": input must be (H, W, ", op.in_channels, ")");
        LOWBIT_CHECK_INPUT(op.kernel_h >= 1 && op.kernel_w >= 1 && op.stride_h >= 1 &&
                               op.stride_w >= 1 && op.pad_h >= 0 && op.pad_w >= 0 &&
                               op.dilation_h >= 1 && op.dilation_w >= 1,
                           where, ": bad geometry");
        const std::vector<int64_t> out{
            layers::conv_out_size(x.shape[0], op.kernel_h, op.stride_h, op.pad_h, op.dilation_h),
            layers::conv_out_size(x.shape[1], op.kernel_w, op.stride_w, op.pad_w, op.dilation_w),
            op.out_channels};
        LOWBIT_CHECK_INPUT(y.shape == out, where, ": output shape does not follow the geometry");
      } else {
        const std::vector<int64_t> want_x{op.in_channels}, want_y{op.out_channels};
        LOWBIT_CHECK_INPUT(x.shape == want_x && y.shape == want_y && op.groups == 1 &&
                               op.kernel_h == 1 && op.kernel_w == 1,
                           where, ": a linear maps (", op.in_channels, ") to (", op.out_channels,
                           ")");
      }
      const int64_t per_k = op.in_channels / op.groups * op.kernel_h * op.kernel_w;
      LOWBIT_CHECK_INPUT(int64_t(op.weight.size()) == op.out_channels * per_k &&
                             int64_t(op.bias.size()) == op.out_channels &&
                             int64_t(op.weight_scale.size()) == op.out_channels &&
                             int64_t(op.weight_zero_point.size()) == op.out_channels,
                         where, ": weight, bias or weight scales have the wrong size");
      int64_t wmax = 0;
      for (size_t k = 0; k < size_t(op.out_channels); ++k) {
        const int64_t z = op.weight_zero_point[k];
        LOWBIT_CHECK_INPUT(op.weight_qmin <= z && z <= op.weight_qmax, where,
                           ": weight zero point ", z, " is outside the code range");
        wmax = std::max({wmax, std::abs(op.weight_qmin - z), std::abs(op.weight_qmax - z)});
      }
      for (int32_t q : op.weight)
        LOWBIT_CHECK_INPUT(q >= op.weight_qmin && q <= op.weight_qmax, where, ": weight code ", q,
                           " is outside [", op.weight_qmin, ", ", op.weight_qmax, "]");
      // int32 accumulation: the largest |sum| the codes allow, bias included.
      const int64_t xmax = std::max(x.zero_point - x.lo, x.hi - x.zero_point);
      int64_t bmax = 0;
      for (int32_t b : op.bias) bmax = std::max<int64_t>(bmax, std::abs(int64_t(b)));
      LOWBIT_CHECK_INPUT(double(per_k) * double(xmax) * double(wmax) + double(bmax) < 2147483647.0,
                         where, ": an int32 accumulator could overflow (", per_k, " products of ",
                         xmax, " x ", wmax, " plus bias ", bmax, ")");
      for (size_t k = 0; k < size_t(op.out_channels); ++k) {
        const double s = x.scale[0] * op.weight_scale[k];
        LOWBIT_CHECK_INPUT(std::isfinite(s) && s > 0, where, ": weight scale ", op.weight_scale[k],
                           " of channel ", k, " is not positive");
        // The output's scale is s_x s_w[k] (what the bias is quantized with).
        LOWBIT_CHECK_INPUT(y.scale[k] == s, where, ": output scale of channel ", k, " is ",
                           y.scale[k], ", expected s_x * s_w = ", s);
      }
    } else if (op.kind == "relu" || op.kind == "relu6") {
      want(x, IntValueKind::wide, "input");
      want(y, IntValueKind::wide, "output");
      LOWBIT_CHECK_INPUT(x.shape == y.shape && x.scale == y.scale, where,
                         ": shape or scales change");
    } else if (op.kind == "add") {
      const IntValue& b = m.values[size_t(op.inputs[1])];
      want(x, IntValueKind::wide, "first input");
      want(b, IntValueKind::wide, "second input");
      want(y, IntValueKind::wide, "output");
      LOWBIT_CHECK_INPUT(x.shape == y.shape && b.shape == y.shape, where, ": shapes differ");
    } else if (op.kind == "pad_channels") {
      want(x, IntValueKind::wide, "input");
      want(y, IntValueKind::wide, "output");
      const std::vector<int64_t> want_shape{(x.shape[0] - 1) / op.stride_h + 1,
                                            (x.shape[1] - 1) / op.stride_h + 1,
                                            x.shape[2] + 2 * op.pad};
      LOWBIT_CHECK_INPUT(
          x.shape.size() == 3 && op.stride_h >= 1 && op.pad >= 0 && y.shape == want_shape, where,
          ": output shape does not follow stride and pad");
    } else if (op.kind == "max_pool") {
      want(x, IntValueKind::wide, "input");
      want(y, IntValueKind::wide, "output");
      const bool geom = x.shape.size() == 3 && op.kernel_h >= 1 && op.kernel_w >= 1 &&
                        op.stride_h >= 1 && op.stride_w >= 1;
      LOWBIT_CHECK_INPUT(geom, where, ": bad window or input shape");
      const std::vector<int64_t> want_shape{
          layers::pooled_size(x.shape[0], op.kernel_h, op.stride_h, op.pad_h, op.ceil_mode),
          layers::pooled_size(x.shape[1], op.kernel_w, op.stride_w, op.pad_w, op.ceil_mode),
          x.shape[2]};
      LOWBIT_CHECK_INPUT(x.scale == y.scale && y.shape == want_shape, where,
                         ": output shape or scales do not follow the window");
    } else if (op.kind == "global_avg_pool") {
      want(x, IntValueKind::wide, "input");
      want(y, IntValueKind::wide, "output");
      const std::vector<int64_t> want_shape{x.shape.size() == 3 ? x.shape[2] : 0};
      LOWBIT_CHECK_INPUT(x.shape.size() == 3 && y.shape == want_shape, where,
                         ": maps (H, W, C) to (C)");
    } else if (op.kind == "flatten") {
      want(x, IntValueKind::wide, "input");
      want(y, IntValueKind::wide, "output");
      const std::vector<int64_t> want_shape{numel(x.shape)};
      LOWBIT_CHECK_INPUT(y.shape == want_shape, where, ": maps (H, W, C) to (H W C)");
    } else {
      LOWBIT_CHECK_INPUT(false, where,
                         ": unknown op kind; known: quantize, conv, linear, requant, relu, "
                         "relu6, add, pad_channels, max_pool, global_avg_pool, flatten");
    }
    defined[size_t(op.output)] = true;
  }
  LOWBIT_CHECK_INPUT(m.output >= 0 && m.output < nv && defined[size_t(m.output)] &&
                         m.values[size_t(m.output)].kind == IntValueKind::wide &&
                         m.values[size_t(m.output)].shape.size() == 1,
                     what, ": the output must be a computed wide (classes) value");
}

// --- files ---------------------------------------------------------------------------------

namespace {

constexpr int kFormatVersion = 1;

template <typename T>
void append_bytes(std::string& blob, const std::vector<T>& v) {
  blob.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Writes `text` to `path` through a temporary name and a rename.
void write_file_atomic(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    LOWBIT_CHECK_INPUT(f.good(), tmp.string(), ": cannot open for writing");
    f.write(text.data(), std::streamsize(text.size()));
    f.close();
    LOWBIT_CHECK_INPUT(f.good(), tmp.string(), ": write failed");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  LOWBIT_CHECK_INPUT(!ec, path.string(),
                     ": cannot rename the written file into place: ", ec.message());
}

}  // namespace

void save_int_model(const IntModel& m, const std::string& dir) {
  validate_int_model(m, dir);
  std::string blob;
  json j;
  j["format"] = "lowbit-int";
  j["version"] = kFormatVersion;
  j["output"] = m.output;
  json values = json::array();
  for (const IntValue& v : m.values) {
    json e{{"kind", kind_name(v.kind)}, {"shape", v.shape}};
    if (v.kind != IntValueKind::float_input) e["scale"] = v.scale;
    if (v.kind == IntValueKind::codes) {
      e["zero_point"] = v.zero_point;
      e["lo"] = v.lo;
      e["hi"] = v.hi;
    }
    values.push_back(e);
  }
  j["values"] = values;
  json ops = json::array();
  for (const IntOp& op : m.ops) {
    json e{{"kind", op.kind}, {"name", op.name}, {"inputs", op.inputs}, {"output", op.output}};
    if (op.kind == "conv" || op.kind == "linear") {
      e["in_channels"] = op.in_channels;
      e["out_channels"] = op.out_channels;
      e["groups"] = op.groups;
      e["kernel"] = {op.kernel_h, op.kernel_w};
      e["stride"] = {op.stride_h, op.stride_w};
      e["padding"] = {op.pad_h, op.pad_w};
      e["dilation"] = {op.dilation_h, op.dilation_w};
      e["bits"] = op.bits;
      e["weight_qmin"] = op.weight_qmin;
      e["weight_qmax"] = op.weight_qmax;
      e["weight_scale"] = op.weight_scale;
      e["weight_zero_point"] = op.weight_zero_point;
      const std::vector<uint8_t> packed = pack_codes(op.weight, op.bits, int32_t(op.weight_qmin));
      e["weight"] = {
          {"offset", blob.size()}, {"bytes", packed.size()}, {"count", op.weight.size()}};
      append_bytes(blob, packed);
      e["bias"] = {{"offset", blob.size()}, {"count", op.bias.size()}};
      append_bytes(blob, op.bias);  // int32, little-endian (x86 and ARM hosts)
    } else if (op.kind == "max_pool") {
      e["kernel"] = {op.kernel_h, op.kernel_w};
      e["stride"] = {op.stride_h, op.stride_w};
      e["padding"] = {op.pad_h, op.pad_w};
      e["ceil_mode"] = op.ceil_mode;
    } else if (op.kind == "pad_channels") {
      e["stride"] = op.stride_h;
      e["pad"] = op.pad;
    }
    ops.push_back(e);
  }
  j["ops"] = ops;
  std::error_code ec;
  fs::create_directories(dir, ec);
  LOWBIT_CHECK_INPUT(!ec && fs::is_directory(dir), dir,
                     ": cannot create the output folder: ", ec ? ec.message() : "not a folder");
  // weights.bin first, model.json last: a folder with model.json is complete.
  write_file_atomic(fs::path(dir) / "weights.bin", blob);
  write_file_atomic(fs::path(dir) / "model.json", j.dump(1) + "\n");
}

IntModel load_int_model(const std::string& dir) {
  const fs::path jpath = fs::path(dir) / "model.json", bpath = fs::path(dir) / "weights.bin";
  const std::string what = jpath.string();
  std::ifstream jf(jpath);
  LOWBIT_CHECK_INPUT(jf.good(), what,
                     ": cannot open (an integer model folder holds model.json "
                     "and weights.bin, written by lowbit export --format int)");
  std::ifstream bf(bpath, std::ios::binary);
  LOWBIT_CHECK_INPUT(bf.good(), bpath.string(), ": cannot open");
  const std::string blob((std::istreambuf_iterator<char>(bf)), std::istreambuf_iterator<char>());
  IntModel m;
  try {
    const json j = json::parse(jf);
    LOWBIT_CHECK_INPUT(j.at("format") == "lowbit-int" && j.at("version") == kFormatVersion, what,
                       ": not a lowbit-int version ", kFormatVersion, " model");
    m.output = j.at("output").get<int>();
    for (const json& e : j.at("values")) {
      IntValue v;
      v.kind = parse_kind(e.at("kind").get<std::string>(), what);
      v.shape = e.at("shape").get<std::vector<int64_t>>();
      if (v.kind != IntValueKind::float_input) v.scale = e.at("scale").get<std::vector<double>>();
      if (v.kind == IntValueKind::codes) {
        v.zero_point = e.at("zero_point").get<int64_t>();
        v.lo = e.at("lo").get<int64_t>();
        v.hi = e.at("hi").get<int64_t>();
      }
      m.values.push_back(v);
    }
    for (const json& e : j.at("ops")) {
      IntOp op;
      op.kind = e.at("kind").get<std::string>();
      op.name = e.at("name").get<std::string>();
      op.inputs = e.at("inputs").get<std::vector<int>>();
      op.output = e.at("output").get<int>();
      auto pair = [&](const char* key, int64_t& a, int64_t& b) {
        const auto v = e.at(key).get<std::vector<int64_t>>();
        LOWBIT_CHECK_INPUT(v.size() == 2, what, ": op ", op.name, ": ", key, " needs 2 values");
        a = v[0];
        b = v[1];
      };
      if (op.kind == "conv" || op.kind == "linear") {
        op.in_channels = e.at("in_channels").get<int64_t>();
        op.out_channels = e.at("out_channels").get<int64_t>();
        op.groups = e.at("groups").get<int64_t>();
        pair("kernel", op.kernel_h, op.kernel_w);
        pair("stride", op.stride_h, op.stride_w);
        pair("padding", op.pad_h, op.pad_w);
        pair("dilation", op.dilation_h, op.dilation_w);
        op.bits = e.at("bits").get<int>();
        op.weight_qmin = e.at("weight_qmin").get<int64_t>();
        op.weight_qmax = e.at("weight_qmax").get<int64_t>();
        op.weight_scale = e.at("weight_scale").get<std::vector<double>>();
        op.weight_zero_point = e.at("weight_zero_point").get<std::vector<int64_t>>();
        LOWBIT_CHECK_INPUT(op.bits >= 1 && op.bits <= 8 && op.weight_qmin >= INT32_MIN, what,
                           ": op ", op.name, ": bits ", op.bits, " not in [1, 8]");
        const auto& w = e.at("weight");
        const uint64_t off = w.at("offset"), bytes = w.at("bytes"), count = w.at("count");
        LOWBIT_CHECK_INPUT(off <= blob.size() && bytes <= blob.size() - off &&
                               bytes * 8 >= count * uint64_t(op.bits),
                           what, ": op ", op.name, ": weight bytes [", off, ", +", bytes,
                           ") are outside ", bpath.string(), " (", blob.size(), " bytes)");
        std::vector<uint8_t> packed(blob.begin() + int64_t(off),
                                    blob.begin() + int64_t(off + bytes));
        op.weight = unpack_codes(packed, int64_t(count), op.bits, int32_t(op.weight_qmin));
        const auto& b = e.at("bias");
        const uint64_t boff = b.at("offset"), bcount = b.at("count");
        LOWBIT_CHECK_INPUT(boff <= blob.size() && bcount <= (blob.size() - boff) / 4, what, ": op ",
                           op.name, ": bias is outside ", bpath.string());
        op.bias.resize(size_t(bcount));
        std::copy_n(blob.data() + boff, bcount * 4, reinterpret_cast<char*>(op.bias.data()));
      } else if (op.kind == "max_pool") {
        pair("kernel", op.kernel_h, op.kernel_w);
        pair("stride", op.stride_h, op.stride_w);
        pair("padding", op.pad_h, op.pad_w);
        op.ceil_mode = e.at("ceil_mode").get<bool>();
      } else if (op.kind == "pad_channels") {
        op.stride_h = op.stride_w = e.at("stride").get<int64_t>();
        op.pad = e.at("pad").get<int64_t>();
      }
      m.ops.push_back(std::move(op));
    }
  } catch (const json::exception& ex) {
    throw InputError(str_cat(what, ": ", ex.what()));
  }
  validate_int_model(m, what);
  return m;
}

// --- running -------------------------------------------------------------------------------

namespace {

// Sums stay far inside int64 (|v| < 2^62) so that no addition can wrap.
int64_t checked_sum(int64_t a, int64_t b, const IntOp& op) {
  constexpr int64_t kMax = int64_t(1) << 62;
  LOWBIT_CHECK(a > -kMax && a < kMax && b > -kMax && b < kMax, "integer inference: op '", op.kind,
               "' (", op.name, ") overflows int64");
  return a + b;
}

// The multipliers of a rescale: per channel of `from`, to the output scale(s).
struct Rescale {
  std::vector<double> m;
  std::vector<FixedPointMultiplier> f;
  bool fixed = false;
  int64_t apply(int64_t v, size_t c) const {
    return fixed ? round_scaled_fixed(v, f[c]) : round_scaled(v, m[c]);
  }
};

Rescale make_rescale(const std::vector<double>& from, const std::vector<double>& to, bool fixed) {
  Rescale r;
  r.fixed = fixed;
  for (size_t c = 0; c < from.size(); ++c) {
    r.m.push_back(from[c] / to[to.size() == 1 ? 0 : c]);
    if (fixed) r.f.push_back(fixed_point_multiplier(r.m.back()));
  }
  return r;
}

IntTensor run_conv(const IntOp& op, const IntValue& xv, const IntValue& yv, const IntTensor& x) {
  const int64_t n = x.shape[0];
  const bool conv = op.kind == "conv";
  const int64_t h = conv ? xv.shape[0] : 1, w = conv ? xv.shape[1] : 1;
  const int64_t p = conv ? yv.shape[0] : 1, q = conv ? yv.shape[1] : 1;
  const int64_t cin = op.in_channels, k_out = op.out_channels, g = op.groups;
  const int64_t cg = cin / g, kg = k_out / g, r_ = op.kernel_h, s_ = op.kernel_w;
  IntTensor y;
  y.shape = {n};
  for (int64_t d : yv.shape) y.shape.push_back(d);
  y.data.assign(size_t(n * p * q * k_out), 0);
  // Zero points subtracted once: (q_x - z_x) and (q_w - z_w[k]).
  std::vector<int32_t> xs(x.data.size()), ws(op.weight.size());
  for (size_t i = 0; i < x.data.size(); ++i) xs[i] = int32_t(x.data[i] - xv.zero_point);
  const int64_t per_k = r_ * s_ * cg;
  for (int64_t k = 0; k < k_out; ++k)
    for (int64_t i = 0; i < per_k; ++i)
      ws[size_t(k * per_k + i)] =
          op.weight[size_t(k * per_k + i)] - int32_t(op.weight_zero_point[size_t(k)]);
  core::for_each_index(
      n * p,
      [&](int64_t row) {
        const int64_t b = row / p, oh = row % p;
        for (int64_t ow = 0; ow < q; ++ow) {
          int64_t* out = y.data.data() + ((b * p + oh) * q + ow) * k_out;
          for (int64_t k = 0; k < k_out; ++k) {
            const int64_t c0 = (k / kg) * cg;
            int32_t acc = op.bias[size_t(k)];  // int32 accumulation (bounded at validation)
            for (int64_t r = 0; r < r_; ++r) {
              const int64_t ih = oh * op.stride_h - op.pad_h + r * op.dilation_h;
              if (ih < 0 || ih >= h) continue;  // padding: x_hat = 0, code z_x
              for (int64_t s = 0; s < s_; ++s) {
                const int64_t iw = ow * op.stride_w - op.pad_w + s * op.dilation_w;
                if (iw < 0 || iw >= w) continue;
                const int32_t* xp = xs.data() + ((b * h + ih) * w + iw) * cin + c0;
                const int32_t* wp = ws.data() + ((k * r_ + r) * s_ + s) * cg;
                for (int64_t c = 0; c < cg; ++c) acc += xp[c] * wp[c];
              }
            }
            out[k] = acc;
          }
        }
      },
      1);
  return y;
}

}  // namespace

std::vector<float> run_int_model(const IntModel& m, const float* x, int64_t n,
                                 const IntRunOptions& o) {
  std::vector<IntTensor> vals(m.values.size());
  auto batch_shape = [&](const IntValue& v) {
    std::vector<int64_t> s{n};
    s.insert(s.end(), v.shape.begin(), v.shape.end());
    return s;
  };
  for (const IntOp& op : m.ops) {
    const IntValue& xv = m.values[size_t(op.inputs[0])];
    const IntValue& yv = m.values[size_t(op.output)];
    IntTensor y;
    y.shape = batch_shape(yv);
    const int64_t total = numel(y.shape);
    const IntTensor* in = op.kind == "quantize" ? nullptr : &vals[size_t(op.inputs[0])];
    if (op.kind == "quantize") {
      // The boundary: f32 x * (1 / s) rounded half to even, as fake quantization computes it.
      const float inv_s = 1.0f / float(yv.scale[0]);
      y.data.resize(size_t(total));
      for (int64_t i = 0; i < total; ++i)
        y.data[size_t(i)] =
            clamp_code(int64_t(std::nearbyint(x[i] * inv_s)), yv.zero_point, yv.lo, yv.hi);
    } else if (op.kind == "conv" || op.kind == "linear") {
      y = run_conv(op, xv, yv, *in);
    } else if (op.kind == "requant") {
      const Rescale r = make_rescale(xv.scale, yv.scale, o.fixed_point);
      const int64_t c = xv.channels();
      y.data.resize(size_t(total));
      for (int64_t i = 0; i < total; ++i)
        y.data[size_t(i)] =
            clamp_code(r.apply(in->data[size_t(i)], size_t(i % c)), yv.zero_point, yv.lo, yv.hi);
    } else if (op.kind == "relu" || op.kind == "relu6") {
      const int64_t c = xv.channels();
      std::vector<int64_t> top(size_t(c), INT64_MAX);
      if (op.kind == "relu6")
        for (int64_t k = 0; k < c; ++k)
          top[size_t(k)] = int64_t(std::nearbyint(6.0 / xv.scale[size_t(k)]));
      y.data.resize(size_t(total));
      for (int64_t i = 0; i < total; ++i)
        y.data[size_t(i)] =
            std::min<int64_t>(std::max<int64_t>(in->data[size_t(i)], 0), top[size_t(i % c)]);
    } else if (op.kind == "add") {
      const IntValue& bv = m.values[size_t(op.inputs[1])];
      const IntTensor& b = vals[size_t(op.inputs[1])];
      const Rescale ra = make_rescale(xv.scale, yv.scale, o.fixed_point);
      const Rescale rb = make_rescale(bv.scale, yv.scale, o.fixed_point);
      const int64_t c = xv.channels();
      y.data.resize(size_t(total));
      for (int64_t i = 0; i < total; ++i) {
        const size_t ch = size_t(i % c);
        y.data[size_t(i)] =
            checked_sum(ra.apply(in->data[size_t(i)], ch), rb.apply(b.data[size_t(i)], ch), op);
      }
    } else if (op.kind == "pad_channels") {
      const int64_t h = xv.shape[0], w = xv.shape[1], c = xv.shape[2];
      const int64_t p = yv.shape[0], q = yv.shape[1], co = yv.shape[2];
      y.data.assign(size_t(total), 0);
      for (int64_t b = 0; b < n; ++b)
        for (int64_t i = 0; i < p; ++i)
          for (int64_t j = 0; j < q; ++j)
            std::copy_n(in->data.data() + ((b * h + i * op.stride_h) * w + j * op.stride_h) * c, c,
                        y.data.data() + ((b * p + i) * q + j) * co + op.pad);
    } else if (op.kind == "max_pool") {
      const int64_t h = xv.shape[0], w = xv.shape[1], c = xv.shape[2];
      const int64_t p = yv.shape[0], q = yv.shape[1];
      y.data.resize(size_t(total));
      for (int64_t b = 0; b < n; ++b)
        for (int64_t i = 0; i < p; ++i)
          for (int64_t j = 0; j < q; ++j) {
            int64_t h0, h1, w0, w1;
            layers::detail::pool_window(i, op.stride_h, op.pad_h, op.kernel_h, h, &h0, &h1);
            layers::detail::pool_window(j, op.stride_w, op.pad_w, op.kernel_w, w, &w0, &w1);
            for (int64_t k = 0; k < c; ++k) {
              int64_t best = INT64_MIN;
              for (int64_t a = h0; a < h1; ++a)
                for (int64_t e = w0; e < w1; ++e)
                  best = std::max(best, in->data[size_t(((b * h + a) * w + e) * c + k)]);
              y.data[size_t(((b * p + i) * q + j) * c + k)] = best;
            }
          }
    } else if (op.kind == "global_avg_pool") {
      const int64_t hw = xv.shape[0] * xv.shape[1], c = xv.shape[2];
      y.data.resize(size_t(total));
      for (int64_t b = 0; b < n; ++b)
        for (int64_t k = 0; k < c; ++k) {
          int64_t s = 0;
          for (int64_t i = 0; i < hw; ++i)
            s = checked_sum(s, in->data[size_t((b * hw + i) * c + k)], op);
          y.data[size_t(b * c + k)] = s;  // the scale carries 1 / (H W)
        }
    } else if (op.kind == "flatten") {
      y.data = in->data;
    } else {
      LOWBIT_FAIL("integer inference: unknown op kind '", op.kind, "'");
    }
    if (o.observer) o.observer(op, y);
    vals[size_t(op.output)] = std::move(y);
  }
  const IntValue& ov = m.values[size_t(m.output)];
  const IntTensor& out = vals[size_t(m.output)];
  const int64_t c = ov.channels();
  std::vector<float> logits(out.data.size());
  for (size_t i = 0; i < out.data.size(); ++i)
    logits[i] = float(double(out.data[i]) * ov.scale[i % size_t(c)]);
  return logits;
}

}  // namespace lowbit::quant
