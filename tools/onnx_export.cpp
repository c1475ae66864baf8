// `lowbit export --format onnx` (tools/onnx_export.h, docs/export.md): the model as an ONNX graph
// (opset 13) built with Debian's ONNX protobuf classes, walked as quant/model_walk.h walks it,
// and a sample of test images with lowbit's logits for scripts/onnx_check.py.
//
// lowbit computes NHWC; the ONNX graph is NCHW, as ONNX's Conv wants: weights KRSC -> OIHW, and a
// Transpose to NHWC before a Flatten that feeds a linear layer, so the linear weights keep their
// (H, W, C) order. A quantized layer's input is QuantizeLinear -> (Clip to the code range when it
// is narrower than the 8-bit type) -> DequantizeLinear; its weight is an int8 / uint8 initializer
// of codes -> DequantizeLinear (per output channel, axis 0), or the fake-quantized float weight
// where the codes do not reproduce it exactly (a quantizer without an integer form).
#include "tools/onnx_export.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/error.h"
#include "data/loader.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "onnx/onnx_pb.h"  // defines ONNX_API, includes onnx-ml.pb.h (ONNX_ML=1)
#include "quant/model_walk.h"
#include "quant/qlayers.h"

namespace lowbit::tools {

namespace fs = std::filesystem;
using nlohmann::json;

void require_onnx_support() {}

namespace {

constexpr int kOpset = 13;

std::vector<float> host_f32(const Tensor& t) {
  const Tensor c = t.detach().to(Device::cpu(), DType::f32).contiguous();
  return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}

// (K, R, S, C) -> (K, C, R, S).
std::vector<float> krsc_to_kcrs(const std::vector<float>& w, int64_t k, int64_t r, int64_t s,
                                int64_t c) {
  std::vector<float> o(w.size());
  for (int64_t a = 0; a < k; ++a)
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < s; ++j)
        for (int64_t b = 0; b < c; ++b)
          o[size_t(((a * c + b) * r + i) * s + j)] = w[size_t(((a * r + i) * s + j) * c + b)];
  return o;
}

// The 8-bit ONNX type that holds a code range, or an InputError.
struct CodeType {
  bool is_unsigned;
  int64_t lo, hi;  // the type's range
};
CodeType code_type(const quant::QuantRange& r, const std::string& layer, const char* what) {
  if (r.qmin >= 0 && r.qmax <= 255) return {true, 0, 255};
  if (r.qmin >= -128 && r.qmax <= 127) return {false, -128, 127};
  LOWBIT_CHECK_INPUT(false, "export: layer '", layer, "': its ", what, " codes [", r.qmin, ", ",
                     r.qmax,
                     "] do not fit int8 or uint8, the types of ONNX opset 13's QuantizeLinear; "
                     "quantize it to 8 bits or fewer");
  return {};
}

class OnnxWriter : public quant::ModelWalker {
 public:
  OnnxWriter(onnx::GraphProto* g, const std::vector<int64_t>& input_hwc) : g_(g) {
    values_.push_back({"input", input_hwc});
  }

  // Walks the model; the graph's output is "logits".
  void run(layers::Module& model) {
    const int out = walk(model, "", 0);
    LOWBIT_CHECK_INPUT(values_[size_t(out)].shape.size() == 1,
                       "export: the model must end in a linear layer (its output is ",
                       values_[size_t(out)].shape.size(), "-D)");
    node("Identity", "output", {name(out)}, "logits");
    classes_ = values_[size_t(out)].shape[0];
  }
  int64_t classes() const { return classes_; }
  json layers_json() const { return layers_; }
  json float_weights_json() const { return float_weights_; }
  json grid_weights_json() const { return grid_weights_; }
  bool quantized() const { return quantized_; }

 protected:
  std::vector<int64_t> shape_of(int v) const override { return values_[size_t(v)].shape; }
  std::string format_name() const override { return "ONNX export"; }

  int conv(layers::Conv2d& c, const std::string& name_, int v) override {
    const layers::Conv2dOptions& co = c.options();
    const std::vector<int64_t>& in = shape_of(v);
    LOWBIT_CHECK_INPUT(in.size() == 3, "export: conv '", name_, "' reads a ", in.size(),
                       "-D value");
    json entry{{"layer", name_}, {"op", "Conv"}};
    const int64_t k = co.out_channels, cg = co.in_channels / co.groups;
    const int64_t r = co.kernel[0], s = co.kernel[1];
    Tensor w;
    std::vector<double> bias;  // empty: none
    quant::QConv2d* qc = c.type_name() == "QConv2d" ? static_cast<quant::QConv2d*>(&c) : nullptr;
    std::vector<float> map_scale(size_t(k), 1.0f);  // a PfQ bias map, times sf when BN is folded
    if (c.bias().defined()) {
      const auto b = host_f32(c.bias());
      bias.assign(b.begin(), b.end());
    }
    if (qc) {
      v = qdq_input(v, qc->input_quantizer(), name_, &entry);
      {
        autograd::NoGradGuard ng;
        w = qc->quantized_weight();  // FQ(W sf) with folding, exactly what the forward uses
      }
      if (layers::BatchNorm2d* bn = qc->folded_bn()) {
        // Folded bias b_f = beta + (b - mu) gamma / std_r (docs/methods.md), in double.
        const auto g = bn_gamma(*bn), be = bn_beta(*bn);
        const auto mu = host_f32(bn->running_mean()), var = host_f32(bn->running_var());
        if (bias.empty()) bias.assign(size_t(k), 0.0);
        for (size_t i = 0; i < bias.size(); ++i) {
          const double sf = double(g[i]) / std::sqrt(double(var[i]) + bn->options().eps);
          bias[i] = double(be[i]) + (bias[i] - double(mu[i])) * sf;
          map_scale[i] = float(sf);
        }
      }
    } else {
      autograd::NoGradGuard ng;
      w = c.effective_weight();
      entry["weight"] = "float";
    }
    const std::vector<float> wk = krsc_to_kcrs(host_f32(w), k, r, s, cg);
    const std::string wname = weight_input(wk, {k, cg, r, s}, qc ? qc->weight_quantizer() : nullptr,
                                           qc && qc->sat_rescale(), name_, &entry);
    std::vector<std::string> inputs{name(v), wname};
    if (!bias.empty()) inputs.push_back(init_f32(name_ + ".bias", {k}, to_f32(bias)));
    const int64_t p = layers::conv_out_size(in[0], r, co.stride[0], co.padding[0], co.dilation[0]);
    const int64_t q = layers::conv_out_size(in[1], s, co.stride[1], co.padding[1], co.dilation[1]);
    const std::string y = fresh(name_);
    onnx::NodeProto* n = node("Conv", name_, inputs, y);
    attr_ints(n, "kernel_shape", {r, s});
    attr_ints(n, "strides", {co.stride[0], co.stride[1]});
    attr_ints(n, "pads", {co.padding[0], co.padding[1], co.padding[0], co.padding[1]});
    attr_ints(n, "dilations", {co.dilation[0], co.dilation[1]});
    attr_i(n, "group", co.groups);
    int out = add_value(y, {p, q, k});
    if (c.bias_map().defined()) {  // PfQ border = exact: a (P, Q, K) map added to the output
      const std::vector<float> m = host_f32(c.bias_map());
      LOWBIT_CHECK_INPUT(int64_t(m.size()) == p * q * k, "export: conv '", name_,
                         "': its bias map does not match its ", p, "x", q, "x", k, " output");
      std::vector<float> chw(m.size());
      for (int64_t i = 0; i < p * q; ++i)
        for (int64_t ch = 0; ch < k; ++ch)
          chw[size_t(ch * p * q + i)] = m[size_t(i * k + ch)] * map_scale[size_t(ch)];
      const std::string mname = init_f32(name_ + ".bias_map", {k, p, q}, chw);
      const std::string ym = fresh(name_ + "/bias_map");
      node("Add", name_ + "/bias_map", {name(out), mname}, ym);
      out = add_value(ym, {p, q, k});
      entry["bias_map"] = true;
    }
    layers_.push_back(entry);
    last_conv_ = qc;
    last_conv_out_ = out;
    return out;
  }

  int linear(layers::Linear& l, const std::string& name_, int v) override {
    json entry{{"layer", name_}, {"op", "Gemm"}};
    Tensor w;
    quant::QLinear* ql = l.type_name() == "QLinear" ? static_cast<quant::QLinear*>(&l) : nullptr;
    if (ql) {
      v = qdq_input(v, ql->input_quantizer(), name_, &entry);
      autograd::NoGradGuard ng;
      w = ql->quantized_weight();
    } else {
      autograd::NoGradGuard ng;
      w = l.effective_weight();
      entry["weight"] = "float";
    }
    const int64_t k = l.out_features();
    const std::string wname =
        weight_input(host_f32(w), {k, l.in_features()}, ql ? ql->weight_quantizer() : nullptr,
                     ql && ql->sat_rescale(), name_, &entry);
    std::vector<std::string> inputs{name(v), wname};
    if (l.bias().defined()) inputs.push_back(init_f32(name_ + ".bias", {k}, host_f32(l.bias())));
    const std::string y = fresh(name_);
    onnx::NodeProto* n = node("Gemm", name_, inputs, y);
    attr_i(n, "transB", 1);
    layers_.push_back(entry);
    return add_value(y, {k});
  }

  int batch_norm(layers::BatchNorm2d& bn, const std::string& name_, int v) override {
    const bool folded = last_conv_ && last_conv_->folded_bn() == &bn && v == last_conv_out_;
    if (!folded && !bn.bypass()) {
      LOWBIT_CHECK_INPUT(bn.running_mean().defined() && bn.running_var().defined(),
                         "export: BatchNorm2d '", name_,
                         "' has no running statistics (track_running_stats: false): it normalises "
                         "with batch statistics in eval, which ONNX's BatchNormalization does not");
      const int64_t c = bn.options().num_features;
      const std::string y = fresh(name_);
      onnx::NodeProto* n =
          node("BatchNormalization", name_,
               {name(v), init_f32(name_ + ".weight", {c}, bn_gamma(bn)),
                init_f32(name_ + ".bias", {c}, bn_beta(bn)),
                init_f32(name_ + ".running_mean", {c}, host_f32(bn.running_mean())),
                init_f32(name_ + ".running_var", {c}, host_f32(bn.running_var()))},
               y);
      attr_f(n, "epsilon", float(bn.options().eps));
      v = add_value(y, shape_of(v));
    }
    return bn.options().fuse_relu ? relu(name_ + "/relu", v, false) : v;
  }

  int relu(const std::string& name_, int v, bool six) override {
    const std::string y = fresh(name_ + (six ? "/relu6" : "/relu"));
    if (six)
      node("Clip", name_, {name(v), scalar_f32(0.0f), scalar_f32(6.0f)}, y);
    else
      node("Relu", name_, {name(v)}, y);
    return add_value(y, shape_of(v));
  }

  int max_pool(const layers::Pool2dOptions& p, const std::string& name_, int v) override {
    std::vector<int64_t> sh = shape_of(v);
    const std::string y = fresh(name_);
    onnx::NodeProto* n = node("MaxPool", name_, {name(v)}, y);
    attr_ints(n, "kernel_shape", {p.kernel_h, p.kernel_w});
    attr_ints(n, "strides", {p.stride_h, p.stride_w});
    attr_ints(n, "pads", {p.pad_h, p.pad_w, p.pad_h, p.pad_w});
    attr_i(n, "ceil_mode", p.ceil_mode ? 1 : 0);
    sh[0] = layers::pooled_size(sh[0], p.kernel_h, p.stride_h, p.pad_h, p.ceil_mode);
    sh[1] = layers::pooled_size(sh[1], p.kernel_w, p.stride_w, p.pad_w, p.ceil_mode);
    return add_value(y, sh);
  }

  int global_avg_pool(const std::string& name_, int v) override {
    const std::vector<int64_t>& sh = shape_of(v);
    LOWBIT_CHECK_INPUT(sh.size() == 3, "export: '", name_, "' pools a ", sh.size(), "-D value");
    const std::string p = fresh(name_ + "/pool");
    node("GlobalAveragePool", name_, {name(v)}, p);
    const std::string y = fresh(name_ + "/flatten");
    attr_i(node("Flatten", name_ + "/flatten", {p}, y), "axis", 1);
    return add_value(y, {sh[2]});
  }

  int flatten(const std::string& name_, int v) override {
    const std::vector<int64_t>& sh = shape_of(v);
    // lowbit flattens (H, W, C): back to NHWC first, so the linear weights keep their order.
    const std::string t = fresh(name_ + "/nhwc");
    attr_ints(node("Transpose", name_ + "/nhwc", {name(v)}, t), "perm", {0, 2, 3, 1});
    const std::string y = fresh(name_ + "/flatten");
    attr_i(node("Flatten", name_, {t}, y), "axis", 1);
    int64_t n = 1;
    for (int64_t d : sh) n *= d;
    return add_value(y, {n});
  }

  int add(const std::string& name_, int a, int b) override {
    LOWBIT_CHECK_INPUT(shape_of(a) == shape_of(b), "export: '", name_,
                       "': residual add of different shapes");
    const std::string y = fresh(name_ + "/add");
    node("Add", name_ + "/add", {name(a), name(b)}, y);
    return add_value(y, shape_of(a));
  }

  int shortcut_a(const std::string& name_, int v, int64_t stride, int64_t pad) override {
    const std::vector<int64_t>& sh = shape_of(v);
    const int64_t big = std::numeric_limits<int64_t>::max();
    const std::string sl = fresh(name_ + "/slice");
    node("Slice", name_ + "/slice",
         {name(v), init_i64(name_ + ".starts", {2}, {0, 0}),
          init_i64(name_ + ".ends", {2}, {big, big}), init_i64(name_ + ".axes", {2}, {2, 3}),
          init_i64(name_ + ".steps", {2}, {stride, stride})},
         sl);
    const std::string y = fresh(name_ + "/pad");
    node("Pad", name_ + "/pad", {sl, init_i64(name_ + ".pads", {8}, {0, pad, 0, 0, 0, pad, 0, 0})},
         y);
    return add_value(y, {(sh[0] - 1) / stride + 1, (sh[1] - 1) / stride + 1, sh[2] + 2 * pad});
  }

  int other(layers::Module& m, const std::string& name_, int v) override {
    if (m.type_name() != "QuantAct") return ModelWalker::other(m, name_, v);
    // An activation followed by its quantizer (PACT's models).
    auto& qa = static_cast<quant::QuantAct&>(m);
    const std::string act = qa.extra_repr();
    if (act == "relu" || act == "relu6") v = relu(name_, v, act == "relu6");
    json entry{{"layer", name_}, {"op", "QuantAct"}};
    v = qdq_input(v, qa.quantizer(), name_, &entry);
    layers_.push_back(entry);
    return v;
  }

 private:
  struct Value {
    std::string name;
    std::vector<int64_t> shape;  // per sample, (H, W, C) or (F)
  };

  const std::string& name(int v) const { return values_[size_t(v)].name; }
  int add_value(const std::string& n, std::vector<int64_t> shape) {
    values_.push_back({n, std::move(shape)});
    return int(values_.size()) - 1;
  }
  // A tensor name not used yet.
  std::string fresh(const std::string& base) {
    std::string n = base.empty() ? "x" : base;
    for (int i = 1; used_.count(n); ++i) n = base + "_" + std::to_string(i);
    used_.insert(n);
    return n;
  }

  onnx::NodeProto* node(const std::string& op, const std::string& nm,
                        const std::vector<std::string>& inputs, const std::string& output) {
    onnx::NodeProto* n = g_->add_node();
    n->set_op_type(op);
    n->set_name(fresh_node(nm.empty() ? op : nm));
    for (const auto& i : inputs) n->add_input(i);
    n->add_output(output);
    return n;
  }
  std::string fresh_node(const std::string& base) {
    std::string n = base;
    for (int i = 1; node_names_.count(n); ++i) n = base + "_" + std::to_string(i);
    node_names_.insert(n);
    return n;
  }
  static void attr_i(onnx::NodeProto* n, const char* key, int64_t v) {
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name(key);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }
  static void attr_f(onnx::NodeProto* n, const char* key, float v) {
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name(key);
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(v);
  }
  static void attr_ints(onnx::NodeProto* n, const char* key, const std::vector<int64_t>& v) {
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name(key);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t x : v) a->add_ints(x);
  }

  // Initializers (raw little-endian data).
  std::string init_raw(const std::string& base, int type, const std::vector<int64_t>& dims,
                       const void* data, size_t bytes) {
    const std::string n = fresh(base);
    onnx::TensorProto* t = g_->add_initializer();
    t->set_name(n);
    t->set_data_type(type);
    for (int64_t d : dims) t->add_dims(d);
    t->set_raw_data(std::string(static_cast<const char*>(data), bytes));
    return n;
  }
  std::string init_f32(const std::string& base, const std::vector<int64_t>& dims,
                       const std::vector<float>& v) {
    return init_raw(base, onnx::TensorProto::FLOAT, dims, v.data(), v.size() * sizeof(float));
  }
  std::string init_i64(const std::string& base, const std::vector<int64_t>& dims,
                       const std::vector<int64_t>& v) {
    return init_raw(base, onnx::TensorProto::INT64, dims, v.data(), v.size() * sizeof(int64_t));
  }
  std::string init_codes(const std::string& base, const std::vector<int64_t>& dims,
                         const std::vector<int64_t>& v, bool is_unsigned) {
    std::vector<uint8_t> b(v.size());
    for (size_t i = 0; i < v.size(); ++i)
      b[i] = is_unsigned ? uint8_t(v[i]) : uint8_t(int8_t(v[i]));  // two's complement bytes
    return init_raw(base, is_unsigned ? onnx::TensorProto::UINT8 : onnx::TensorProto::INT8, dims,
                    b.data(), b.size());
  }
  std::string init_i32(const std::string& base, const std::vector<int64_t>& dims,
                       const std::vector<int64_t>& v) {
    const std::vector<int32_t> b(v.begin(), v.end());
    return init_raw(base, onnx::TensorProto::INT32, dims, b.data(), b.size() * sizeof(int32_t));
  }
  std::string scalar_f32(float v) {
    const std::string key = "f32:" + std::to_string(v);
    auto it = constants_.find(key);
    if (it != constants_.end()) return it->second;
    return constants_[key] = init_f32(v == 0.0f ? "zero" : "const", {}, {v});
  }
  static std::vector<float> to_f32(const std::vector<double>& v) {
    return std::vector<float>(v.begin(), v.end());
  }
  static std::vector<float> bn_gamma(layers::BatchNorm2d& bn) {
    return bn.weight().defined() ? host_f32(bn.weight())
                                 : std::vector<float>(size_t(bn.options().num_features), 1.0f);
  }
  static std::vector<float> bn_beta(layers::BatchNorm2d& bn) {
    return bn.bias().defined() ? host_f32(bn.bias())
                               : std::vector<float>(size_t(bn.options().num_features), 0.0f);
  }

  // v through QuantizeLinear -> (Clip) -> DequantizeLinear for quantizer q; v itself for a float
  // input. InputError for a quantizer ONNX cannot express.
  int qdq_input(int v, quant::Quantizer* q, const std::string& layer, json* entry) {
    if (q == nullptr || !q->enabled()) {
      (*entry)["input"] = "float";
      return v;
    }
    quantized_ = true;
    auto f = q->integer_form();
    LOWBIT_CHECK_INPUT(f.has_value(), "export: layer '", layer, "': its input quantizer '",
                       q->name(),
                       "' has no integer form, so QuantizeLinear / DequantizeLinear cannot "
                       "express it (integer forms: uniform, pow2, lsq); re-train that layer's "
                       "activations with one of them");
    LOWBIT_CHECK_INPUT(f->scale.size() == 1, "export: layer '", layer,
                       "': a per-channel activation quantizer has no ONNX form here");
    const CodeType ct = code_type(f->range, layer, "input");
    const int64_t z = f->zero_point[0];
    const std::string s = init_f32(layer + ".input_scale", {}, {float(f->scale[0])});
    const std::string zp = init_codes(layer + ".input_zero_point", {}, {z}, ct.is_unsigned);
    std::string qn = fresh(layer + "/input_q");
    node("QuantizeLinear", layer + "/input_q", {name(v), s, zp}, qn);
    const bool clip = f->range.qmin != ct.lo || f->range.qmax != ct.hi;
    if (clip) {
      const std::string c = fresh(layer + "/input_clip");
      node("Clip", layer + "/input_clip",
           {qn, init_codes(layer + ".input_qmin", {}, {f->range.qmin}, ct.is_unsigned),
            init_codes(layer + ".input_qmax", {}, {f->range.qmax}, ct.is_unsigned)},
           c);
      qn = c;
    }
    const std::string y = fresh(layer + "/input_dq");
    node("DequantizeLinear", layer + "/input_dq", {qn, s, zp}, y);
    (*entry)["input"] = json{{"quantizer", q->name()},
                             {"type", ct.is_unsigned ? "uint8" : "int8"},
                             {"qmin", f->range.qmin},
                             {"qmax", f->range.qmax},
                             {"clip", clip}};
    return add_value(y, shape_of(v));
  }

  // The weight input of a conv / linear: codes -> DequantizeLinear where the quantizer's integer
  // form reproduces the fake-quantized weight w (ONNX layout, output channel first) exactly,
  // else w as floats (recorded in float_weights_ with the reason).
  std::string weight_input(const std::vector<float>& w, const std::vector<int64_t>& dims,
                           quant::Quantizer* q, bool sat, const std::string& layer, json* entry) {
    if (q == nullptr) return init_f32(layer + ".weight", dims, w);
    std::string why;
    std::optional<quant::IntegerForm> f = q->integer_form();
    const int64_t k = dims[0], per_k = int64_t(w.size()) / k;
    std::vector<int64_t> codes(w.size());
    if (!f) {
      why = "its weight quantizer '" + q->name() + "' has no integer form";
    } else if (sat) {
      why = "SAT rescales its quantized weight by a constant";
    } else if (f->range.qmax - f->range.qmin > 255) {
      why = "its weight codes need more than 8 bits";
    } else {
      const bool per_channel = f->scale.size() > 1;
      for (int64_t c = 0; c < k && why.empty(); ++c) {
        const size_t j = per_channel ? size_t(c) : 0;
        const float s = float(f->scale[j]);
        const int64_t z = f->zero_point[j];
        for (int64_t i = 0; i < per_k; ++i) {
          const float x = w[size_t(c * per_k + i)];
          const int64_t code = int64_t(std::nearbyint(double(x) / double(s))) + z;
          // DequantizeLinear computes (q - z) * s in f32.
          if (code < f->range.qmin || code > f->range.qmax || float(code - z) * s != x) {
            why = "its integer codes do not reproduce the fake-quantized weight exactly";
            break;
          }
          codes[size_t(c * per_k + i)] = code;
        }
      }
    }
    if (!why.empty()) {
      // No integer form: the fake-quantized values may still lie on a grid q s per output
      // channel (DoReFa: odd multiples of 1 / (2^b - 1); binary: +-mean|w|; times SAT's
      // constant): int8 codes then, each value reproduced within f32 rounding (grid_codes).
      if (auto gw = grid_codes(w, k)) {
        // int8 when the codes fit, else int32 (DequantizeLinear takes both; 8-bit DoReFa's odd
        // codes reach +-255).
        bool fits = true;
        for (int64_t v : gw->first) fits = fits && v >= -128 && v <= 127;
        const std::vector<int64_t> zeros(size_t(k), 0);
        const std::string wc = fits ? init_codes(layer + ".weight_codes", dims, gw->first, false)
                                    : init_i32(layer + ".weight_codes", dims, gw->first);
        const std::string sc = init_f32(layer + ".weight_scale", {k}, gw->second);
        const std::string zp = fits ? init_codes(layer + ".weight_zero_point", {k}, zeros, false)
                                    : init_i32(layer + ".weight_zero_point", {k}, zeros);
        const std::string y = fresh(layer + ".weight");
        attr_i(node("DequantizeLinear", layer + "/weight_dq", {wc, sc, zp}, y), "axis", 0);
        (*entry)["weight"] =
            json{{"quantizer", q->name()},
                 {"type", fits ? "int8" : "int32"},
                 {"grid", "codes of the fake-quantized values, within f32 rounding (" + why + ")"},
                 {"per_channel", true}};
        grid_weights_.push_back(json{{"layer", layer}, {"why", why}});
        return y;
      }
      float_weights_.push_back(json{{"layer", layer}, {"why", why}});
      (*entry)["weight"] = "float (fake-quantized values)";
      return init_f32(layer + ".weight", dims, w);
    }
    const CodeType ct = code_type(f->range, layer, "weight");
    const bool per_channel = f->scale.size() > 1;
    const std::vector<int64_t> sdims =
        per_channel ? std::vector<int64_t>{k} : std::vector<int64_t>{};
    std::vector<float> sc;
    for (double s : f->scale) sc.push_back(float(s));
    const std::string wc = init_codes(layer + ".weight_codes", dims, codes, ct.is_unsigned);
    const std::string s = init_f32(layer + ".weight_scale", sdims, sc);
    const std::string zp =
        init_codes(layer + ".weight_zero_point", sdims, f->zero_point, ct.is_unsigned);
    const std::string y = fresh(layer + ".weight");
    onnx::NodeProto* n = node("DequantizeLinear", layer + "/weight_dq", {wc, s, zp}, y);
    if (per_channel) attr_i(n, "axis", 0);
    (*entry)["weight"] = json{{"quantizer", q->name()},
                              {"type", ct.is_unsigned ? "uint8" : "int8"},
                              {"qmin", f->range.qmin},
                              {"qmax", f->range.qmax},
                              {"per_channel", per_channel}};
    return y;
  }

  // Per output channel (rows of w), a scale s = max|w| / j (the smallest j in 1..255 that works)
  // and integer codes q with |q s - w| <= 2^-21 max|w|: the grid within f32 rounding (DoReFa's
  // 2 (k / n) - 1 cancels to an error of 2^-23); nullopt when some channel has none.
  static std::optional<std::pair<std::vector<int64_t>, std::vector<float>>> grid_codes(
      const std::vector<float>& w, int64_t k) {
    const int64_t per_k = int64_t(w.size()) / k;
    std::vector<int64_t> codes(w.size(), 0);
    std::vector<float> scales(static_cast<size_t>(k), 1.0f);
    for (int64_t c = 0; c < k; ++c) {
      const float* wc = w.data() + c * per_k;
      int64_t* qc = codes.data() + c * per_k;
      float m = 0.0f;
      for (int64_t i = 0; i < per_k; ++i) {
        if (!std::isfinite(wc[i])) return std::nullopt;
        m = std::max(m, std::fabs(wc[i]));
      }
      if (m == 0.0f) continue;  // an all-zero channel: codes 0
      const double tol = double(m) * 0x1p-21;
      bool found = false;
      for (int j = 1; j <= 255 && !found; ++j) {
        const float s = m / float(j);
        bool ok = true;
        for (int64_t i = 0; i < per_k && ok; ++i) {
          const double q = std::nearbyint(double(wc[i]) / double(s));
          ok = std::fabs(double(float(q) * s) - double(wc[i])) <= tol;
          qc[i] = int64_t(q);
        }
        if (ok) {
          found = true;
          scales[size_t(c)] = s;
        }
      }
      if (!found) return std::nullopt;
    }
    return std::make_pair(codes, scales);
  }

  onnx::GraphProto* g_;
  std::vector<Value> values_;
  std::set<std::string> used_, node_names_;
  std::map<std::string, std::string> constants_;
  json layers_ = json::array(), float_weights_ = json::array(), grid_weights_ = json::array();
  bool quantized_ = false;
  int64_t classes_ = 0;
  quant::QConv2d* last_conv_ = nullptr;
  int last_conv_out_ = -1;
};

void set_tensor_type(onnx::ValueInfoProto* v, const std::string& name,
                     const std::vector<int64_t>& dims) {
  v->set_name(name);
  onnx::TypeProto_Tensor* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  onnx::TensorShapeProto* s = t->mutable_shape();
  s->add_dim()->set_dim_param("N");
  for (int64_t d : dims) s->add_dim()->set_dim_value(d);
}

// A little-endian .npy file (format 1.0) of a C-order array.
void write_npy(const fs::path& p, const char* descr, const std::vector<int64_t>& shape,
               const void* data, size_t bytes) {
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ", ";
  if (shape.size() > 1) dims.erase(dims.size() - 2);  // "(n,)" for one dimension
  std::string header =
      std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::ofstream f(p, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = uint16_t(header.size());
  const char l[2] = {char(len & 0xff), char(len >> 8)};
  f.write(l, 2);
  f.write(header.data(), std::streamsize(header.size()));
  f.write(static_cast<const char*>(data), std::streamsize(bytes));
  LOWBIT_CHECK_INPUT(f.good(), p.string(), ": cannot write");
}

}  // namespace

void export_onnx(layers::Module& model, train::DataSource& data, const fs::path& dir,
                 int64_t samples, json& report) {
  const int64_t h = data.image_size, w = data.image_size, c = data.channels;
  onnx::ModelProto mp;
  mp.set_ir_version(onnx::IR_VERSION);
  mp.set_producer_name("lowbit");
  mp.set_doc_string(
      "Input: the normalised image, NCHW, as lowbit's data loader gives it (docs/export.md).");
  onnx::OperatorSetIdProto* op = mp.add_opset_import();
  op->set_domain("");
  op->set_version(kOpset);
  onnx::GraphProto* g = mp.mutable_graph();
  g->set_name("lowbit");
  OnnxWriter wr(g, {h, w, c});
  model.eval();
  wr.run(model);
  set_tensor_type(g->add_input(), "input", {c, h, w});
  set_tensor_type(g->add_output(), "logits", {wr.classes()});
  std::string bytes;
  LOWBIT_CHECK(mp.SerializeToString(&bytes), "export: cannot serialise the ONNX model");
  {
    std::ofstream f(dir / "model.onnx", std::ios::binary);
    f.write(bytes.data(), std::streamsize(bytes.size()));
    LOWBIT_CHECK_INPUT(f.good(), (dir / "model.onnx").string(), ": cannot write");
  }
  report["onnx_opset"] = kOpset;
  report["onnx_ir_version"] = int64_t(onnx::IR_VERSION);
  report["onnx_nodes"] = g->node_size();
  report["model_onnx_bytes"] = int64_t(bytes.size());
  report["quantized"] = wr.quantized();
  report["input"] = json{{"name", "input"}, {"layout", "NCHW"}, {"shape", {"N", c, h, w}}};
  report["layers"] = wr.layers_json();
  report["float_weights"] = wr.float_weights_json();
  report["grid_weights"] = wr.grid_weights_json();

  // The sample: test images (NCHW), their labels and lowbit's logits.
  const Device cpu = Device::cpu();
  std::vector<float> images, logits;
  std::vector<int64_t> labels;
  int64_t seen = 0, correct = 0;
  const int64_t classes = wr.classes();
  data.test->reset();
  data::Batch b;
  autograd::NoGradGuard ng;
  while (seen < samples && data.test->next(b)) {
    const int64_t n = std::min<int64_t>(b.labels.size(0), samples - seen);
    const Tensor x = b.images.slice(0, 0, n).to(cpu, DType::f32).contiguous();
    const Tensor y = b.labels.slice(0, 0, n).to(cpu, DType::i64).contiguous();
    const std::vector<float> lg = host_f32(model.forward(x));
    LOWBIT_CHECK(int64_t(lg.size()) == n * classes, "export: logits of an unexpected size");
    const float* px = x.data<float>();
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t p = 0; p < h * w; ++p) images.push_back(px[(i * h * w + p) * c + ch]);
      const float* li = lg.data() + i * classes;
      const int64_t pred = int64_t(std::max_element(li, li + classes) - li);
      labels.push_back(y.data<int64_t>()[i]);
      correct += pred == labels.back();
    }
    logits.insert(logits.end(), lg.begin(), lg.end());
    seen += n;
  }
  if (seen > 0) {
    write_npy(dir / "sample_input.npy", "<f4", {seen, c, h, w}, images.data(),
              images.size() * sizeof(float));
    write_npy(dir / "sample_logits.npy", "<f4", {seen, classes}, logits.data(),
              logits.size() * sizeof(float));
    write_npy(dir / "sample_labels.npy", "<i8", {seen}, labels.data(),
              labels.size() * sizeof(int64_t));
  }
  report["sample_images"] = seen;
  report["lowbit_top1"] = seen ? double(correct) / double(seen) : 0.0;
}

}  // namespace lowbit::tools
