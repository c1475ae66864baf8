// Channel surgery: physical removal of output channels (a conv's filters, its BN channels, the
// depthwise convs and BNs that follow them, and the matching input channels of every consumer
// conv and Linear), masking (docs/methods.md, "PfQ" mask mode), and rebuilding a pruned structure
// from a state dict. The model is changed in place and stays a plain dense model: new, smaller
// tensors, same module tree, same state-dict keys. Optimizers built before surgery hold the
// old tensors and must be rebuilt.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "layers/module.h"
#include "prune/graph.h"

namespace lowbit::layers {
class BatchNorm2d;
class Conv2d;
}  // namespace lowbit::layers

namespace lowbit::prune {

// Output channels to remove, by dense conv name ("layer1.0.conv1" -> {3, 7}).
using ChannelRequest = std::map<std::string, std::vector<int64_t>>;

struct SurgeryResult {
  std::map<int, std::vector<int64_t>> removed;  // group id -> removed channels (sorted)
  // Requests dropped because another producer of the same residual group keeps the channel.
  std::vector<std::string> kept;
};

// Removes the requested output channels. A channel of a residual group (tied by an addition)
// goes only when every dense conv producing that group requests it; the others are reported in
// `kept`. Throws InputError for a name that is not a dense conv of the graph, a channel out of
// range, a group that cannot change shape (ChannelGroup::why_fixed: use mask_channels), or a
// request that would remove every channel of a layer. `graph` must be traced from `model` as
// it is now (it is stale afterwards).
SurgeryResult remove_channels(layers::Module& model, const ChannelGraph& graph,
                              const ChannelRequest& request);

// The same on group channels directly: `remove` maps group ids to sorted channel lists.
void remove_group_channels(const ChannelGraph& graph,
                           const std::map<int, std::vector<int64_t>>& remove);

// Mask mode (docs/methods.md, "PfQ"): zeroes output channels `channels` of conv (weight rows and
// bias) and freezes them with the conv's weight mask (zero gradient, stays zero), and sets the BN's
// running mean of those channels to 0, so that the BN outputs exactly beta (its fused ReLU:
// max(beta, 0)) in eval. bn may be null.
// freeze = false zeroes the same way without installing the mask.
void mask_channels(layers::Conv2d& conv, layers::BatchNorm2d* bn,
                   const std::vector<int64_t>& channels, bool freeze = true);

// Shrinks the layers of a freshly built `model` to the shapes found in `state` (a state dict of
// a pruned model, in `layout`): conv filters and input channels (depthwise groups follow), BN
// channels, Linear inputs, and the pruning extras (a bias created by PfQ folding, the weight
// mask, the bias map). Values are not copied: call load_state_dict afterwards. Returns the
// number of layers changed. Throws InputError on shapes a pruned model cannot have (a Linear
// with other outputs, a grouped conv with other groups).
int apply_channel_shapes(layers::Module& model, const layers::StateDict& state,
                         layers::Layout layout = layers::Layout::lowbit);

}  // namespace lowbit::prune
