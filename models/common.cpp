#include "models/common.h"

#include <algorithm>

namespace lowbit::models {

layers::ModulePtr activation(Act act) {
  if (act == Act::relu) return std::make_shared<layers::ReLU>();
  if (act == Act::relu6) return std::make_shared<layers::ReLU6>();
  return nullptr;
}

std::shared_ptr<layers::BatchNorm2d> bn_relu(int64_t channels) {
  layers::BatchNormOptions bn{channels};
  bn.fuse_relu = true;
  return std::make_shared<layers::BatchNorm2d>(bn);
}

std::shared_ptr<layers::Sequential> conv_bn_act(int64_t in, int64_t out, int64_t k, int64_t stride,
                                                int64_t groups, Act act) {
  auto seq = std::make_shared<layers::Sequential>();
  layers::Conv2dOptions o(in, out, k);
  o.stride = {stride, stride};
  o.padding = {(k - 1) / 2, (k - 1) / 2};
  o.groups = groups;
  o.bias = false;
  seq->add(std::make_shared<layers::Conv2d>(o));
  // A ReLU is fused into the BN (one pass); an Identity keeps torchvision's child indices.
  seq->add(act == Act::relu ? bn_relu(out) : std::make_shared<layers::BatchNorm2d>(out));
  if (act == Act::relu)
    seq->add(std::make_shared<layers::Identity>());
  else if (auto a = activation(act))
    seq->add(a);
  return seq;
}

int64_t make_divisible(double v, int64_t divisor) {
  int64_t nv = std::max<int64_t>(divisor, int64_t(v + divisor / 2.0) / divisor * divisor);
  if (double(nv) < 0.9 * v) nv += divisor;
  return nv;
}

}  // namespace lowbit::models
