// The shared model walk of the exports (see model_walk.h).
#include "quant/model_walk.h"

#include "core/error.h"

namespace lowbit::quant {

namespace {

std::string join(const std::string& a, const std::string& b) { return a.empty() ? b : a + "." + b; }

layers::Module* find_child(layers::Module& m, const std::string& cn) {
  for (auto& [n, c] : m.named_children())
    if (n == cn) return c.get();
  return nullptr;
}

layers::Module& child(layers::Module& m, const std::string& name, const std::string& cn) {
  layers::Module* c = find_child(m, cn);
  LOWBIT_CHECK_INPUT(c != nullptr, "export: '", name, "' (", m.type_name(), ") has no child '", cn,
                     "'");
  return *c;
}

}  // namespace

int ModelWalker::other(layers::Module& m, const std::string& name, int) {
  LOWBIT_CHECK_INPUT(
      false, "export: module '", name, "' of type ", m.type_name(), " has no form in ",
      format_name(),
      " (supported: Conv2d, BatchNorm2d, Linear, their quantized forms, ReLU, ReLU6, "
      "MaxPool2d, GlobalAvgPool2d, Flatten, residual blocks of ResNet and "
      "MobileNetV2)",
      unsupported_hint());
  return -1;
}

int ModelWalker::walk(layers::Module& m, const std::string& name, int v) {
  const std::string t = m.type_name();
  if (t == "Conv2d" || t == "QConv2d") return conv(static_cast<layers::Conv2d&>(m), name, v);
  if (t == "Linear" || t == "QLinear") {
    auto& l = static_cast<layers::Linear&>(m);
    const std::vector<int64_t> s = shape_of(v);
    if (s.size() == 3) {
      // The shipped heads pool globally (or flatten, VGG's ImageNet head) in their forward.
      v = s[2] == l.in_features() ? global_avg_pool(name + " input", v)
                                  : flatten(name + " input", v);
    }
    const std::vector<int64_t> want{l.in_features()};
    LOWBIT_CHECK_INPUT(shape_of(v) == want, "export: layer '", name, "' wants ", l.in_features(),
                       " features, its input has ", shape_of(v).back());
    return linear(l, name, v);
  }
  if (t == "BatchNorm2d") return batch_norm(static_cast<layers::BatchNorm2d&>(m), name, v);
  if (t == "ReLU" || t == "ReLU6") return relu(name, v, t == "ReLU6");
  if (t == "Identity" || t == "Dropout") return v;
  if (t == "GlobalAvgPool2d") return global_avg_pool(name, v);
  if (t == "Flatten") return shape_of(v).size() == 1 ? v : flatten(name, v);
  if (t == "MaxPool2d") return max_pool(static_cast<layers::MaxPool2d&>(m).options(), name, v);
  if (t == "Sequential" || t == "ResNet" || t == "MobileNetV2" || t == "MobileNetV1" ||
      t == "VGG" || t == "DsNet") {
    for (auto& [cn, c] : m.named_children()) v = walk(*c, join(name, cn), v);
    return v;
  }
  if (t == "BasicBlock" || t == "Bottleneck") {
    const bool basic = t == "BasicBlock";
    int h = v;
    for (const char* cn :
         basic ? std::vector<const char*>{"conv1", "bn1", "conv2", "bn2"}
               : std::vector<const char*>{"conv1", "bn1", "conv2", "bn2", "conv3", "bn3"})
      h = walk(child(m, name, cn), join(name, cn), h);
    const std::string sc = find_child(m, "shortcut") ? "shortcut" : "downsample";
    int s = v;
    if (layers::Module* scm = find_child(m, sc)) {
      if (scm->type_name() == "LambdaLayer") {  // option A: subsample, zero channels
        auto& c1 = static_cast<layers::Conv2d&>(child(m, name, "conv1"));
        const int64_t pad = (shape_of(h).back() - shape_of(v).back()) / 2;
        s = shortcut_a(join(name, sc), v, c1.options().stride[0], pad);
      } else {
        s = walk(*scm, join(name, sc), v);
      }
    }
    return relu(name, add(name, h, s), false);
  }
  if (t == "InvertedResidual") {
    int y = v;
    for (auto& [cn, c] : m.named_children()) y = walk(*c, join(name, cn), y);
    if (shape_of(y) != shape_of(v)) return y;  // stride 2 or a width change: no residual
    return add(name, y, v);
  }
  return other(m, name, v);
}

}  // namespace lowbit::quant
