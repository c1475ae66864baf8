// Data-parallel training (PyTorch's DistributedDataParallel, without a wrapper module): every
// rank holds the whole model, trains on its shard of each global batch, and before each
// optimizer step the gradients are averaged over the ranks, so N ranks of batch B take the
// steps of one process of batch N*B (the loss is a mean, and the mean of the ranks' mean
// gradients is the gradient of the mean over the global batch).
//
// Buckets. The parameters are taken in reverse registration order (about the order backward
// produces their gradients) and packed into flat buckets of at most bucket_bytes (a parameter
// larger than that gets a bucket of its own). A hook on each parameter (post-accumulate-grad)
// counts the gradients of its bucket; when a bucket is complete, and every bucket before it
// has been launched, its gradients are copied into the bucket's flat buffer and an
// asynchronous all-reduce (mean) starts, while backward goes on with the layers below:
// communication overlaps computation (CPU: the mpi group's communication thread; GPU: NCCL on
// its own stream). finish() launches what is left, waits, and copies the averages back.
//
// Accumulation. With accumulate_steps k, the first k - 1 micro-batches only accumulate .grad
// (set_sync(false): the hooks do nothing); the k-th reduces the accumulated sum once.
//
// A parameter that got no gradient in this backward (not used by the forward) is reduced as
// zeros and keeps an undefined .grad; the forward is the same on every rank, so they agree.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "dist/process_group.h"
#include "layers/module.h"

namespace lowbit::train {

// Rank 0's parameters and buffers, copied into every rank's model (in place).
void broadcast_module(layers::Module& model, dist::ProcessGroup& group);

// A hash of the model's state: names, dtypes and shapes, and with `values` every byte. Equal on
// every rank iff the models are (check_same_on_all_ranks compares it across ranks).
uint64_t hash_module(const layers::Module& model, bool values = true);
// The same over the parameters alone (what the all-reduced gradients keep identical; buffers
// such as per-rank BN statistics may differ until broadcast_module).
uint64_t hash_parameters(const layers::Module& model);

// Throws (InputError when input_error, else Error), naming `what` and the ranks that differ
// from rank 0, unless every rank passes the same value.
void check_same_on_all_ranks(uint64_t value, const std::string& what, dist::ProcessGroup& group,
                             bool input_error);

class GradientReducer {
 public:
  // params: the model's trainable parameters in registration order.
  GradientReducer(std::vector<Tensor> params, dist::ProcessGroup& group, int64_t bucket_bytes);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Whether the next backward reduces (the last micro-batch of an accumulation) or only
  // accumulates. Call before backward.
  void set_sync(bool sync);
  // After backward: every gradient is the mean over the ranks. No-op when not syncing.
  void finish();

  int64_t num_buckets() const;
  // Seconds finish() spent waiting for communication that backward did not hide, summed.
  double wait_seconds() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace lowbit::train
