// Lowering a QAT model to the integer model (see int_export.h).
#include "quant/int_export.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <utility>

#include "core/autograd.h"
#include "core/error.h"
#include "core/ops.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "layers/pooling.h"
#include "quant/model_walk.h"
#include "quant/qlayers.h"

namespace lowbit::quant {

namespace {

std::vector<float> host_f32(const Tensor& t) {
  const Tensor c = t.detach().to(Device::cpu(), DType::f32).contiguous();
  return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}

// The integer form of a layer's input quantizer, or an InputError saying what to do.
IntegerForm input_form(Quantizer* q, const std::string& layer) {
  LOWBIT_CHECK_INPUT(q != nullptr && q->enabled(), "export: layer '", layer,
                     "' has a float input (no input quantizer, or it is disabled); the integer "
                     "format needs every conv and linear input quantized: quantize it (quant "
                     "rules, quantize_input: true) or export --format onnx");
  auto f = q->integer_form();
  LOWBIT_CHECK_INPUT(f.has_value(), "export: layer '", layer, "': its input quantizer '", q->name(),
                     "' has no integer form (integer forms: uniform, pow2, lsq); "
                     "re-train that layer with one of them, or export --format onnx");
  LOWBIT_CHECK_INPUT(f->scale.size() == 1, "export: layer '", layer,
                     "': a per-channel activation quantizer has no integer form here");
  return *f;
}

IntegerForm weight_form(Quantizer* q, const std::string& layer, int64_t channels) {
  auto f = q->integer_form();
  LOWBIT_CHECK_INPUT(f.has_value(), "export: layer '", layer, "': its weight quantizer '",
                     q->name(),
                     "' has no integer form (integer forms: uniform, pow2, lsq); "
                     "re-train that layer with one of them, or export --format onnx");
  LOWBIT_CHECK_INPUT(f->range.qmax - f->range.qmin < 256, "export: layer '", layer,
                     "': weights of more than 8 bits are not supported by the integer format");
  if (f->scale.size() == 1) {
    f->scale.assign(size_t(channels), f->scale[0]);
    f->zero_point.assign(size_t(channels), f->zero_point[0]);
  }
  LOWBIT_CHECK_INPUT(int64_t(f->scale.size()) == channels, "export: layer '", layer,
                     "': weight quantizer has ", f->scale.size(), " scales for ", channels,
                     " output channels");
  return *f;
}

int bits_for(const QuantRange& r) {
  int b = 1;
  while ((int64_t(1) << b) <= r.qmax - r.qmin) ++b;
  return b;
}

class Lowerer : public ModelWalker {
 public:
  Lowerer(const LowerOptions& o) : o_(o) {}

  IntModel run(layers::Module& model, const std::vector<int64_t>& input_shape) {
    IntValue in;
    in.kind = IntValueKind::float_input;
    in.shape = input_shape;
    m_.values.push_back(in);
    m_.output = walk(model, "", 0);
    const IntValue& out = m_.values[size_t(m_.output)];
    LOWBIT_CHECK_INPUT(out.kind == IntValueKind::wide && out.shape.size() == 1,
                       "export: the model must end in a quantized linear (its output is ",
                       out.shape.size(), "-D)");
    validate_int_model(m_, "export");
    return std::move(m_);
  }

 private:
  int add_value(IntValue v) {
    m_.values.push_back(std::move(v));
    return int(m_.values.size()) - 1;
  }
  const IntValue& val(int v) const { return m_.values[size_t(v)]; }
  int emit(IntOp op, IntValue out) {
    op.output = add_value(std::move(out));
    m_.ops.push_back(std::move(op));
    return m_.ops.back().output;
  }
  int unary(const char* kind, const std::string& name, int v) {
    IntOp op;
    op.kind = kind;
    op.name = name;
    op.inputs = {v};
    const int y = emit(op, val(v));
    if (fine_.count(v)) fine_.insert(y);
    return y;
  }
  void need_wide(int v, const std::string& name, const std::string& what) {
    LOWBIT_CHECK_INPUT(val(v).kind == IntValueKind::wide, "export: '", name, "' (", what,
                       ") reads the float model input directly; the integer format needs a "
                       "quantized conv first");
  }

  // v as the codes of quantizer form f: the boundary quantize (model input) or a requant.
  int codes_for(int v, const IntegerForm& f) {
    IntValue out = val(v);
    out.kind = IntValueKind::codes;
    out.scale = {f.scale[0]};
    out.zero_point = f.zero_point[0];
    out.lo = f.range.qmin;
    out.hi = f.range.qmax;
    IntOp op;
    op.kind = val(v).kind == IntValueKind::float_input ? "quantize" : "requant";
    op.name = "input quantizer";
    op.inputs = {v};
    return emit(op, out);
  }

  int lower_qconv(QConv2d& c, const std::string& name, int v) {
    const layers::Conv2dOptions& co = c.options();
    LOWBIT_CHECK_INPUT(!c.bias_map().defined(), "export: layer '", name,
                       "' has a PfQ bias map (border = exact); export models pruned with the "
                       "default border handling");
    const IntegerForm fx = input_form(c.input_quantizer(), name);
    const int xc = codes_for(v, fx);
    m_.ops.back().name = name;
    const IntegerForm fw = weight_form(c.weight_quantizer(), name, co.out_channels);
    IntOp op;
    op.kind = "conv";
    op.name = name;
    op.inputs = {xc};
    op.in_channels = co.in_channels;
    op.out_channels = co.out_channels;
    op.groups = co.groups;
    op.kernel_h = co.kernel[0];
    op.kernel_w = co.kernel[1];
    op.stride_h = co.stride[0];
    op.stride_w = co.stride[1];
    op.pad_h = co.padding[0];
    op.pad_w = co.padding[1];
    op.dilation_h = co.dilation[0];
    op.dilation_w = co.dilation[1];
    Tensor wq;
    {
      autograd::NoGradGuard ng;
      wq = c.quantized_weight();  // FQ(W sf), exactly what the fake-quant forward uses
    }
    // Folded bias b_f = beta + (b - mu) gamma / std_r (docs/methods.md, "BN folding for QAT"), in
    // double.
    std::vector<double> bf(size_t(co.out_channels), 0.0);
    if (c.bias().defined()) {
      const auto b = host_f32(c.bias());
      for (size_t k = 0; k < bf.size(); ++k) bf[k] = b[k];
    }
    layers::BatchNorm2d* bn = c.folded_bn();
    if (bn) {
      const auto g = host_f32(bn->weight()), be = host_f32(bn->bias());
      const auto mu = host_f32(bn->running_mean()), var = host_f32(bn->running_var());
      for (size_t k = 0; k < bf.size(); ++k)
        bf[k] = double(be[k]) + (bf[k] - double(mu[k])) * double(g[k]) /
                                    std::sqrt(double(var[k]) + bn->options().eps);
    }
    const int y = finish_layer(op, fw, wq, bf, xc, name, bn ? &bn->bias() : &c.bias());
    last_conv_ = &c;
    last_conv_out_ = y;
    return y;
  }

  // Global average pooling: the sum over H x W, the scale divided by H W (exact).
  int global_avg_pool(const std::string& name, int v) override {
    need_wide(v, name, "global average pooling");
    IntOp p;
    p.kind = "global_avg_pool";
    p.name = name;
    p.inputs = {v};
    IntValue out = val(v);
    LOWBIT_CHECK_INPUT(out.shape.size() == 3, "export: '", name, "' pools a ", out.shape.size(),
                       "-D value");
    const double hw = double(out.shape[0] * out.shape[1]);
    for (double& s : out.scale) s /= hw;
    out.shape = {out.shape[2]};
    return emit(p, out);
  }
  int flatten(const std::string& name, int v) override {
    need_wide(v, name, "flatten");
    IntOp p;
    p.kind = "flatten";
    p.name = name;
    p.inputs = {v};
    IntValue out = val(v);
    std::vector<double> sc;
    int64_t n = 1;
    for (size_t d = 0; d + 1 < out.shape.size(); ++d) n *= out.shape[d];
    for (int64_t i = 0; i < n; ++i) sc.insert(sc.end(), out.scale.begin(), out.scale.end());
    out.scale = sc;
    out.shape = {n * out.shape.back()};
    return emit(p, out);
  }

  int lower_qlinear(QLinear& l, const std::string& name, int v) {
    const IntegerForm fx = input_form(l.input_quantizer(), name);
    const int xc = codes_for(v, fx);
    m_.ops.back().name = name;
    const IntegerForm fw = weight_form(l.weight_quantizer(), name, l.out_features());
    IntOp op;
    op.kind = "linear";
    op.name = name;
    op.inputs = {xc};
    op.in_channels = l.in_features();
    op.out_channels = l.out_features();
    Tensor wq;
    {
      autograd::NoGradGuard ng;
      wq = l.weight_quantizer()->forward(l.weight());
    }
    std::vector<double> bf(size_t(l.out_features()), 0.0);
    if (l.bias().defined()) {
      const auto b = host_f32(l.bias());
      for (size_t k = 0; k < bf.size(); ++k) bf[k] = b[k];
    }
    return finish_layer(op, fw, wq, bf, xc, name, &l.bias());
  }

  // Weight codes from the fake-quantized weight, the int32 bias, the output value; snaps the
  // model's bias tensor (`bias_param`, BN beta for a folded conv) to the integer grid.
  int finish_layer(IntOp& op, const IntegerForm& fw, const Tensor& wq,
                   const std::vector<double>& bf, int xc, const std::string& name,
                   Tensor* bias_param) {
    const int64_t k_out = op.out_channels;
    const std::vector<float> w = host_f32(wq);
    const int64_t per_k = int64_t(w.size()) / k_out;
    op.bits = bits_for(fw.range);
    op.weight_qmin = fw.range.qmin;
    op.weight_qmax = fw.range.qmax;
    op.weight_scale = fw.scale;
    op.weight_zero_point = fw.zero_point;
    op.weight.resize(w.size());
    for (int64_t k = 0; k < k_out; ++k) {
      const double s = fw.scale[size_t(k)];
      for (int64_t i = 0; i < per_k; ++i) {
        // w_hat = (q - z) s exactly in f32, so w_hat / s recovers q - z.
        const double q =
            std::nearbyint(double(w[size_t(k * per_k + i)]) / s) + double(fw.zero_point[size_t(k)]);
        LOWBIT_CHECK(q >= double(fw.range.qmin) && q <= double(fw.range.qmax), "export: layer '",
                     name, "': weight code ", q, " outside the quantizer's range");
        op.weight[size_t(k * per_k + i)] = int32_t(q);
      }
    }
    IntValue out;
    out.kind = IntValueKind::wide;
    const IntValue& xv = val(xc);
    if (op.kind == "conv") {
      out.shape = {
          layers::conv_out_size(xv.shape[0], op.kernel_h, op.stride_h, op.pad_h, op.dilation_h),
          layers::conv_out_size(xv.shape[1], op.kernel_w, op.stride_w, op.pad_w, op.dilation_w),
          k_out};
    } else {
      out.shape = {k_out};
    }
    op.bias.resize(size_t(k_out));
    std::vector<float> delta(size_t(k_out), 0.0f);
    bool changed = false;
    for (int64_t k = 0; k < k_out; ++k) {
      const double s = xv.scale[0] * fw.scale[size_t(k)];
      out.scale.push_back(s);
      const double b = std::nearbyint(bf[size_t(k)] / s);
      LOWBIT_CHECK_INPUT(std::fabs(b) < 1e9, "export: layer '", name, "': bias ", bf[size_t(k)],
                         " is ", b, " steps of s_x s_w, too large for int32");
      op.bias[size_t(k)] = int32_t(b);
      delta[size_t(k)] = float(b * s - bf[size_t(k)]);
      changed = changed || delta[size_t(k)] != 0.0f;
    }
    if (o_.snap_biases && changed) {
      autograd::NoGradGuard ng;
      if (!bias_param->defined()) {
        LOWBIT_CHECK(false, "export: layer '", name, "' needs a bias to snap");
      }
      Tensor d = from_vector(delta, {k_out}, TensorOptions(DType::f32, bias_param->device()));
      bias_param->copy_(*bias_param + d.to(bias_param->dtype()));
    }
    return emit(op, out);
  }

  int add(const std::string& name, int a, int b) override {
    need_wide(a, name, "residual add");
    need_wide(b, name, "residual add");
    LOWBIT_CHECK_INPUT(val(a).shape == val(b).shape, "export: '", name,
                       "': residual add of different shapes");
    IntOp op;
    op.kind = "add";
    op.name = name;
    op.inputs = {a, b};
    // One scale t for the sum (int64), finer than both inputs so each rescales by a multiplier
    // >= 1: 2^-16 of the finest accumulator scale, or the scale of an input that is itself
    // a sum (a residual stream keeps its scale from block to block). Rounding to t moves a value
    // by at most t / 2, far below a code of the next quantizer.
    double t = INFINITY;
    for (int v : {a, b})
      for (double s : val(v).scale) t = std::min(t, fine_.count(v) ? s : s / kResidualScale);
    IntValue out = val(a);
    out.scale.assign(out.scale.size(), t);
    const int y = emit(op, out);
    fine_.insert(y);
    return y;
  }

  std::vector<int64_t> shape_of(int v) const override { return val(v).shape; }
  std::string format_name() const override { return "the integer format"; }

  static void need_quantized(const layers::Module& m, const char* want, const std::string& name) {
    LOWBIT_CHECK_INPUT(m.type_name() == want, "export: layer '", name, "' is a float ",
                       m.type_name(),
                       "; the integer format needs every conv and linear quantized "
                       "(quant rules without skip), or export --format onnx");
  }
  int conv(layers::Conv2d& c, const std::string& name, int v) override {
    need_quantized(c, "QConv2d", name);
    return lower_qconv(static_cast<QConv2d&>(c), name, v);
  }
  int linear(layers::Linear& l, const std::string& name, int v) override {
    need_quantized(l, "QLinear", name);
    return lower_qlinear(static_cast<QLinear&>(l), name, v);
  }
  int batch_norm(layers::BatchNorm2d& bn, const std::string& name, int v) override {
    const bool folded = last_conv_ && last_conv_->folded_bn() == &bn && v == last_conv_out_;
    LOWBIT_CHECK_INPUT(folded || bn.bypass(), "export: BatchNorm2d '", name,
                       "' is not folded into the quantized conv before it; quantize with "
                       "quant.fold_bn: true");
    return bn.options().fuse_relu ? unary("relu", name, v) : v;
  }
  int relu(const std::string& name, int v, bool six) override {
    need_wide(v, name, six ? "ReLU6" : "ReLU");
    return unary(six ? "relu6" : "relu", name, v);
  }
  int max_pool(const layers::Pool2dOptions& p, const std::string& name, int v) override {
    need_wide(v, name, "MaxPool2d");
    IntOp op;
    op.kind = "max_pool";
    op.name = name;
    op.inputs = {v};
    op.kernel_h = p.kernel_h;
    op.kernel_w = p.kernel_w;
    op.stride_h = p.stride_h;
    op.stride_w = p.stride_w;
    op.pad_h = p.pad_h;
    op.pad_w = p.pad_w;
    op.ceil_mode = p.ceil_mode;
    IntValue out = val(v);
    out.shape[0] = layers::pooled_size(out.shape[0], p.kernel_h, p.stride_h, p.pad_h, p.ceil_mode);
    out.shape[1] = layers::pooled_size(out.shape[1], p.kernel_w, p.stride_w, p.pad_w, p.ceil_mode);
    return emit(op, out);
  }
  int shortcut_a(const std::string& name, int v, int64_t stride, int64_t pad) override {
    need_wide(v, name, "shortcut");
    IntOp op;
    op.kind = "pad_channels";
    op.name = name;
    op.inputs = {v};
    op.stride_h = op.stride_w = stride;
    op.pad = pad;
    IntValue out = val(v);
    out.shape = {(out.shape[0] - 1) / stride + 1, (out.shape[1] - 1) / stride + 1,
                 out.shape[2] + 2 * pad};
    const double s_min = *std::min_element(out.scale.begin(), out.scale.end());
    out.scale.insert(out.scale.begin(), size_t(pad), s_min);
    out.scale.insert(out.scale.end(), size_t(pad), s_min);
    const int s = emit(op, out);
    if (fine_.count(v)) fine_.insert(s);
    return s;
  }
  std::string unsupported_hint() const override { return "; export --format onnx"; }

  static constexpr double kResidualScale = 65536.0;  // 16 bits finer than an accumulator

  LowerOptions o_;
  IntModel m_;
  std::set<int> fine_;  // values on a residual stream's scale (sums, and ReLU / pad of them)
  QConv2d* last_conv_ = nullptr;
  int last_conv_out_ = -1;
};

// Records the input of every quantized layer.
class InputRecorder : public layers::ForwardRecorder {
 public:
  void on_forward(layers::Module& m, const Tensor& input, const Tensor&) override {
    if (m.type_name() == "QConv2d" || m.type_name() == "QLinear") seen.emplace_back(&m, input);
  }
  std::vector<std::pair<layers::Module*, Tensor>> seen;
};

}  // namespace

IntModel lower_to_int(layers::Module& model, const std::vector<int64_t>& input_shape,
                      const LowerOptions& o) {
  model.eval();
  return Lowerer(o).run(model, input_shape);
}

std::map<std::string, std::vector<int32_t>> fake_quant_codes(layers::Module& model, const Tensor& x,
                                                             Tensor* logits) {
  autograd::NoGradGuard ng;
  model.eval();
  InputRecorder rec;
  {
    layers::RecordForward guard(&rec);
    Tensor y = model.forward(x);
    if (logits) *logits = y;
  }
  std::map<layers::Module*, std::string> names;
  for (auto& [n, mod] : model.named_modules()) names[mod.get()] = n;
  std::map<std::string, std::vector<int32_t>> out;
  for (auto& [mod, in] : rec.seen) {
    Quantizer* q = mod->type_name() == "QConv2d" ? static_cast<QConv2d*>(mod)->input_quantizer()
                                                 : static_cast<QLinear*>(mod)->input_quantizer();
    const std::string& name = names.at(mod);
    const IntegerForm f = input_form(q, name);
    const std::vector<float> v = host_f32(in);
    const float inv_s = 1.0f / float(f.scale[0]);  // as the fake-quant kernels: x * (1 / s) in f32
    std::vector<int32_t> codes(v.size());
    for (size_t i = 0; i < v.size(); ++i)
      codes[i] = clamp_code(int64_t(std::nearbyint(v[i] * inv_s)), f.zero_point[0], f.range.qmin,
                            f.range.qmax);
    out[name] = std::move(codes);
  }
  return out;
}

void CodeStats::add(const CodeStats& o) {
  total += o.total;
  equal += o.equal;
  max_diff = std::max(max_diff, o.max_diff);
}

CodeStats CodeComparison::total() const {
  CodeStats t;
  for (const auto& [name, s] : layers) t.add(s);
  return t;
}

void CodeComparison::add(const CodeComparison& o) {
  if (layers.empty())
    layers = o.layers;
  else {
    LOWBIT_CHECK(layers.size() == o.layers.size(), "CodeComparison::add: different models");
    for (size_t i = 0; i < layers.size(); ++i) layers[i].second.add(o.layers[i].second);
  }
  int_logits.insert(int_logits.end(), o.int_logits.begin(), o.int_logits.end());
  fake_quant_logits.insert(fake_quant_logits.end(), o.fake_quant_logits.begin(),
                           o.fake_quant_logits.end());
}

CodeComparison compare_with_fake_quant(layers::Module& model, const IntModel& im, const Tensor& x,
                                       bool fixed_point, bool per_layer) {
  Tensor fl;
  const auto want = fake_quant_codes(model, x, &fl);
  CodeComparison c;
  c.fake_quant_logits = host_f32(fl);
  IntRunOptions o;
  o.fixed_point = fixed_point;
  o.observer = [&](const IntOp& op, IntTensor& t) {
    if (op.kind != "requant" && op.kind != "quantize") return;
    auto it = want.find(op.name);
    LOWBIT_CHECK(it != want.end() && it->second.size() == t.data.size(),
                 "compare_with_fake_quant: no fake-quant codes of the size of layer '", op.name,
                 "' input");
    CodeStats s;
    s.total = int64_t(t.data.size());
    for (size_t i = 0; i < t.data.size(); ++i) {
      const int64_t d = std::llabs(t.data[i] - int64_t(it->second[i]));
      s.equal += d == 0;
      s.max_diff = std::max(s.max_diff, d);
    }
    c.layers.emplace_back(op.name, s);
    if (per_layer) t.data.assign(it->second.begin(), it->second.end());
  };
  const Tensor xc = x.detach().to(Device::cpu(), DType::f32).contiguous();
  c.int_logits = run_int_model(im, xc.data<float>(), xc.size(0), o);
  LOWBIT_CHECK(c.layers.size() == want.size(), "compare_with_fake_quant: the integer model has ",
               c.layers.size(), " quantized inputs, the model ", want.size());
  return c;
}

}  // namespace lowbit::quant
