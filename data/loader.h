// DataLoader: batches of (images (N, H, W, C) f32 normalised, labels (N) i64) on a device.
//
// Order. Epoch e visits a permutation of the dataset that is a pure function of (seed, e)
// (Fisher-Yates over a Philox stream), or the identity without shuffle. With world_size w > 1 the
// order is padded by repeating its head to a multiple of w, and rank r takes positions
// r, r + w, r + 2w, ... : PyTorch's DistributedSampler with drop_last=False, so every rank sees
// the same number of batches. pad_shards = false (evaluation) skips the padding: the shards then
// cover the dataset exactly once and may differ in length by one sample. Batches are consecutive
// runs of batch_size of the rank's indices; drop_last drops a short final batch.
//
// Workers. num_workers threads assemble batches ahead of the consumer: read each sample, augment
// it with a SampleRng keyed by (seed, epoch, dataset index), and convert it straight into the
// batch buffer. At most `prefetch` batches are in flight (being built or waiting); they are
// delivered in order, so the batches are identical for any num_workers, 0 included (then next()
// builds the batch itself). A worker's exception is rethrown by the next() that would have
// returned its batch, with the sample, batch and epoch added to the message and its type
// (InputError or Error) kept.
//
// Memory. For a CUDA device with a GPU and pin_memory, batches are built in page-locked host
// memory (cuda::pinned_host_allocator) and copied with an asynchronous host-to-device copy on
// the consumer thread's current stream; the pinned block is not reused until that copy is done.
// Otherwise batches are built in ordinary host memory: on the CPU they are handed over as they
// are, with no copy.
//
// Typical use:
//   DataLoader loader(open_fashion_mnist("", true), opts, Pipeline({random_crop(28, 28, 2)}));
//   for (int64_t e = 0; e < epochs; ++e) {
//     loader.set_epoch(e);
//     Batch b;
//     while (loader.next(b)) step(b.images, b.labels);
//   }
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/device.h"
#include "core/tensor.h"
#include "data/dataset.h"
#include "data/transforms.h"

namespace lowbit::data {

struct LoaderOptions {
  int64_t batch_size = 64;
  bool shuffle = false;
  bool drop_last = false;
  int64_t num_workers = 0;  // 0: next() builds each batch on the calling thread
  uint64_t seed = 0;        // shuffling and augmentation
  int64_t rank = 0;         // data-parallel shard of this process
  int64_t world_size = 1;
  bool pad_shards = true;  // equal shards by repeating the head of the order (training)
  Device device = Device::cpu();
  bool pin_memory = true;  // used only for a CUDA device (pinned memory needs a GPU)
  int64_t prefetch = 0;    // batches in flight; 0 means 2 * num_workers
};

struct Batch {
  Tensor images;                 // (N, H, W, C) f32 on the loader's device
  Tensor labels;                 // (N) i64 on the loader's device
  std::vector<int64_t> indices;  // dataset index of each sample (padding repeats some)
  int64_t epoch = 0;
  int64_t number = 0;  // position of the batch in its epoch
  int64_t size() const { return int64_t(indices.size()); }
};

// The permutation of [0, n) for (seed, epoch): the same on every rank and machine.
std::vector<int64_t> permutation(int64_t n, uint64_t seed, int64_t epoch);
// The dataset indices rank `rank` of `world_size` visits in `epoch`, in order (see above).
std::vector<int64_t> shard_indices(int64_t n, bool shuffle, uint64_t seed, int64_t epoch,
                                   int64_t rank, int64_t world_size, bool pad = true);
// The length of that shard.
int64_t shard_size(int64_t n, int64_t rank, int64_t world_size, bool pad = true);

class DataLoader {
 public:
  // Bad options throw lowbit::InputError naming the option and the value.
  DataLoader(DatasetPtr dataset, LoaderOptions options, Pipeline transform = Pipeline());
  ~DataLoader();  // stops and joins the workers
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // Starts epoch `epoch` from its first batch (workers begin prefetching at once); batches of
  // the previous epoch not yet taken are dropped.
  void set_epoch(int64_t epoch);
  // Restarts the current epoch from its first batch.
  void reset();
  // Restarts the current epoch at batch `batch` (0 <= batch <= size()): the batches are those
  // an uninterrupted epoch would deliver from there (a mid-epoch resume).
  void seek(int64_t batch);
  // The next batch of the current epoch; false once the epoch is exhausted (until set_epoch or
  // reset). The first call starts epoch 0 unless set_epoch came first.
  bool next(Batch& batch);

  int64_t size() const;         // batches per epoch on this rank
  int64_t num_samples() const;  // samples per epoch on this rank, padding included
  int64_t epoch() const;
  bool pinned() const;  // whether batches are staged in pinned host memory
  const LoaderOptions& options() const;
  const Dataset& dataset() const;
  const Pipeline& transform() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace lowbit::data
