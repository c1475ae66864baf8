// The channel dependency graph: which output channels of which layers must be removed together,
// and who reads them. Built from one traced forward pass, as Torch-Pruning's DependencyGraph:
// layers report their calls (layers::ForwardRecorder), and the autograd graph between a
// layer's input and the layer outputs that produce it is walked backwards through the ops that
// keep the channel axis (ReLU/ReLU6, elementwise ops, pooling, global average pooling, flatten,
// the option-A pad_channels shortcut). Channels are tied into groups:
//   - a BatchNorm2d or depthwise Conv2d has the channels of its input (same group);
//   - an elementwise op of two layer outputs (a residual add) ties its operands' channels;
//   - pad_channels shifts channel indices (the group keeps the offset; such groups are
//     mask-only, since the parameterless pad cannot follow a removal).
// Dense convs and Linear layers read a group ("consumers"); their input channels are removed
// with the group's channels. See docs/pruning.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/module.h"

namespace lowbit::layers {
class Conv2d;
class BatchNorm2d;
class Linear;
}  // namespace lowbit::layers

namespace lowbit::prune {

enum class LayerKind { conv, depthwise, grouped, batchnorm, linear };

// Where a layer's input channels come from: output channels of layer `source` (-1: the model
// input) after the ops `path` (node names in forward order, e.g. {"relu6"} or
// {"max_pool2d", "sum", "mul_scalar"}). Input channel (col % C for Linear after flatten) =
// source channel + offset; `spatial` > 1 when a Linear reads a flattened H x W x C map.
struct ChannelSource {
  int source = -1;
  int64_t offset = 0;
  int64_t spatial = 1;
  std::vector<std::string> path;
};

// A Conv2d, BatchNorm2d or Linear called once in the traced forward.
struct GraphLayer {
  std::string name;  // dotted module name
  layers::Module* module = nullptr;
  LayerKind kind = LayerKind::conv;
  int64_t in_channels = 0, out_channels = 0;  // Linear: in/out features
  Shape input_shape, output_shape;            // traced with batch 1
  std::vector<ChannelSource> inputs;          // one entry per contribution (several: a sum)
  int group = -1;      // the group of its output channels (-1: Linear, whose outputs stay)
  int64_t offset = 0;  // its output channel c is channel c + offset of the group

  layers::Conv2d* conv() const;
  layers::BatchNorm2d* bn() const;
  layers::Linear* linear() const;
};

// A layer reading a group's channels through a channel-reducing op (dense conv or Linear).
struct Consumer {
  int layer = -1;
  // Group channel v is input channel v + offset (Linear after flatten: columns p*C + v + offset).
  int64_t offset = 0;
  int64_t spatial = 1;
  // The member it reads and the ops in between; from < 0 when it reads a sum of several members
  // (a residual stream), which PfQ does not fold through.
  int from = -1;
  std::vector<std::string> path;
};

struct ChannelGroup {
  int id = -1;
  std::vector<int> members;  // layers whose outputs hold the group's channels, in trace order
  std::vector<int> roots;    // dense convs among them (the layers that create the channels)
  std::vector<Consumer> consumers;
  bool residual = false;   // tied by an elementwise op between layer outputs
  bool has_input = false;  // holds the model input's channels
  // Channels can be removed (all members at offset 0 with the same width, no pad, not the model
  // input or output, no op the trace cannot follow); otherwise only masking is possible.
  bool removable = true;
  std::string why_fixed;  // why not removable
  int64_t channels = 0;   // group width (removable groups: every member's width)
};

class ChannelGraph {
 public:
  std::vector<GraphLayer> layers;
  std::vector<ChannelGroup> groups;
  Shape sample_hwc;

  int find(const std::string& name) const;                 // -1 when absent
  const GraphLayer& layer(const std::string& name) const;  // throws InputError when absent
  // The Conv2d feeding BN layer `bn` directly (a Conv+BN pair), or -1.
  int conv_of_bn(int bn) const;
  // The BN reading conv layer `conv` directly (a Conv+BN pair), or -1.
  int bn_of_conv(int conv) const;
  // A readable dump: one line per group with members and consumers.
  std::string str() const;
};

// Traces `model` on one zero sample {H, W, C} (NHWC without batch) on the model's device: eval
// mode, parameters temporarily without grad (the model's mode and flags are restored; no
// parameter gets a .grad). Throws InputError when a layer is called twice (shared layers
// cannot be pruned) or the output does not depend on the input.
ChannelGraph trace_channel_graph(layers::Module& model, const Shape& sample_hwc);

// The value of a constant channel after the ops of `path` (ReLU, ReLU6, pooling, mean, flatten,
// identity-like ops); nullopt when the path holds an op whose effect on a constant is unknown.
std::optional<double> constant_through(double value, const std::vector<std::string>& path);
// Applies the activations of `path` (relu, relu6) to a tensor, ignoring the constant-preserving
// ops (pooling, mean, flatten). Used for PfQ's data-mean constant.
Tensor activation_through(const Tensor& x, const std::vector<std::string>& path);

}  // namespace lowbit::prune
