// DataLoader (see loader.h for the contract). One mutex guards the epoch state; workers take a
// batch number under it, build the batch without it, and file the result under it again. A
// generation counter, bumped by set_epoch/reset, tells a worker that the batch it just built
// belongs to an abandoned epoch (it is dropped) and lets it stop early between samples.
#include "data/loader.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <numeric>
#include <thread>

#include "core/backend.h"
#include "core/error.h"
#include "core/philox.h"

namespace lowbit::data {

// ---------------------------------------------------------------------------- sampling

std::vector<int64_t> permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> p(size_t(std::max<int64_t>(n, 0)));
  std::iota(p.begin(), p.end(), int64_t(0));
  // A key of its own, so the shuffle stream never coincides with an augmentation stream.
  const uint64_t key = seed ^ 0x9e3779b97f4a7c15ULL;
  for (int64_t i = n - 1; i > 0; --i) {
    const core::Philox4x32 r = core::Philox4x32::generate(
        uint32_t(i), uint32_t(uint64_t(i) >> 32), uint32_t(epoch), uint32_t(uint64_t(epoch) >> 32),
        uint32_t(key), uint32_t(key >> 32));
    const uint64_t bits = (uint64_t(r.c[0]) << 32) | r.c[1];
    std::swap(p[size_t(i)], p[size_t(bits % uint64_t(i + 1))]);
  }
  return p;
}

int64_t shard_size(int64_t n, int64_t rank, int64_t world_size, bool pad) {
  if (world_size == 1 || n <= 0) return std::max<int64_t>(n, 0);
  return pad ? (n + world_size - 1) / world_size : (n - rank + world_size - 1) / world_size;
}

std::vector<int64_t> shard_indices(int64_t n, bool shuffle, uint64_t seed, int64_t epoch,
                                   int64_t rank, int64_t world_size, bool pad) {
  LOWBIT_CHECK_INPUT(world_size >= 1, "data loader: world_size must be >= 1, got ", world_size);
  LOWBIT_CHECK_INPUT(rank >= 0 && rank < world_size, "data loader: rank ", rank,
                     " outside [0, world_size = ", world_size, ")");
  std::vector<int64_t> order;
  if (shuffle) {
    order = permutation(n, seed, epoch);
  } else {
    order.resize(size_t(std::max<int64_t>(n, 0)));
    std::iota(order.begin(), order.end(), int64_t(0));
  }
  if (world_size == 1 || n == 0) return order;
  if (!pad) {
    std::vector<int64_t> mine;
    for (int64_t k = rank; k < n; k += world_size) mine.push_back(order[size_t(k)]);
    return mine;
  }
  // DistributedSampler(drop_last=False): pad with the head of the order (repeated if needed).
  const int64_t per_rank = (n + world_size - 1) / world_size;
  const int64_t total = per_rank * world_size;
  for (int64_t k = n; k < total; ++k) order.push_back(order[size_t((k - n) % n)]);
  std::vector<int64_t> mine(static_cast<size_t>(per_rank));
  for (int64_t k = 0; k < per_rank; ++k) mine[size_t(k)] = order[size_t(rank + k * world_size)];
  return mine;
}

// ---------------------------------------------------------------------------- State

namespace {

// Page-locked host memory from the CUDA backend's pinned allocator.
struct PinnedFree {
  void operator()(void* p) const {
    if (p != nullptr) core::cuda_backend().deallocate_pinned(p);
  }
};
using PinnedPtr = std::unique_ptr<void, PinnedFree>;

PinnedPtr allocate_pinned(size_t nbytes) {
  return PinnedPtr(core::cuda_backend().allocate_pinned(std::max<size_t>(nbytes, 1)));
}

// A batch as built by a worker, still on the host.
struct HostBatch {
  Shape image_shape;  // (N, H, W, C)
  std::vector<int64_t> indices;
  Tensor images;  // host tensors, when not pinned
  Tensor labels;
  PinnedPtr pinned_images;  // pinned buffers, when pinned
  PinnedPtr pinned_labels;
  std::exception_ptr error;
};

}  // namespace

struct DataLoader::State {
  DatasetPtr dataset;
  LoaderOptions opts;
  Pipeline transform;
  bool pinned = false;
  int64_t window = 1;  // batches in flight

  std::mutex mu;
  std::condition_variable work_cv;   // workers: work available or stop
  std::condition_variable ready_cv;  // consumer: a batch was filed
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> generation{0};
  bool started = false;
  int64_t epoch = 0;
  std::shared_ptr<const std::vector<int64_t>> order;  // this rank's indices in the epoch
  int64_t num_batches = 0;
  int64_t next_build = 0;
  int64_t next_deliver = 0;
  std::map<int64_t, HostBatch> ready;
  std::vector<std::thread> workers;

  int64_t samples_per_epoch() const {
    return shard_size(dataset->size(), opts.rank, opts.world_size, opts.pad_shards);
  }
  int64_t batches_per_epoch() const {
    const int64_t s = samples_per_epoch();
    return opts.drop_last ? s / opts.batch_size : (s + opts.batch_size - 1) / opts.batch_size;
  }

  void start_epoch(int64_t e, int64_t first_batch = 0) {
    auto indices = std::make_shared<const std::vector<int64_t>>(shard_indices(
        dataset->size(), opts.shuffle, opts.seed, e, opts.rank, opts.world_size, opts.pad_shards));
    std::map<int64_t, HostBatch> dropped;
    {
      std::lock_guard<std::mutex> lock(mu);
      generation.fetch_add(1);
      dropped.swap(ready);  // freed outside the lock
      epoch = e;
      order = std::move(indices);
      num_batches = batches_per_epoch();
      next_build = std::min(first_batch, num_batches);
      next_deliver = next_build;
      started = true;
    }
    work_cv.notify_all();
  }

  std::vector<int64_t> batch_indices(const std::vector<int64_t>& o, int64_t b) const {
    const int64_t begin = b * opts.batch_size;
    const int64_t end = std::min<int64_t>(begin + opts.batch_size, int64_t(o.size()));
    return std::vector<int64_t>(o.begin() + begin, o.begin() + end);
  }

  // Builds batch `number` of epoch `ep` from dataset indices `idx`. Returns early (an empty
  // batch, never delivered) once `gen` is stale. Throws with the sample in the message.
  HostBatch build(int64_t ep, int64_t number, std::vector<int64_t> idx, uint64_t gen) const {
    HostBatch hb;
    hb.indices = std::move(idx);
    const int64_t n = int64_t(hb.indices.size());
    float* images = nullptr;
    int64_t* labels = nullptr;
    int64_t sample_numel = 0;
    for (int64_t k = 0; k < n; ++k) {
      if (stop.load(std::memory_order_relaxed) ||
          generation.load(std::memory_order_relaxed) != gen) {
        return HostBatch();
      }
      const int64_t i = hb.indices[size_t(k)];
      try {
        Sample s = dataset->get_encoded(i);  // the pipeline decodes it
        SampleRng rng(opts.seed, uint64_t(ep), uint64_t(i));
        transform.augment(s, rng);
        LOWBIT_CHECK(int64_t(s.image.size()) == s.numel() && s.numel() > 0, "the sample holds ",
                     s.image.size(), " bytes for an image of ", s.shape());
        LOWBIT_CHECK(s.label >= 0 && s.label < dataset->num_classes(), "label ", s.label,
                     " outside [0, ", dataset->num_classes(), ")");
        if (k == 0) {
          hb.image_shape = {n, s.height, s.width, s.channels};
          sample_numel = s.numel();
          if (pinned) {
            hb.pinned_images = allocate_pinned(size_t(n * sample_numel) * sizeof(float));
            hb.pinned_labels = allocate_pinned(size_t(n) * sizeof(int64_t));
            images = static_cast<float*>(hb.pinned_images.get());
            labels = static_cast<int64_t*>(hb.pinned_labels.get());
          } else {
            hb.images = empty(hb.image_shape, DType::f32);
            hb.labels = empty({n}, DType::i64);
            images = hb.images.data<float>();
            labels = hb.labels.data<int64_t>();
          }
        } else {
          LOWBIT_CHECK_INPUT(s.height == hb.image_shape[1] && s.width == hb.image_shape[2] &&
                                 s.channels == hb.image_shape[3],
                             "after the transforms the image is ", s.shape(),
                             " but the batch's first image is ",
                             Shape{hb.image_shape[1], hb.image_shape[2], hb.image_shape[3]},
                             "; images of different sizes need a resize or crop transform");
        }
        transform.normalize.apply(s.image.data(), s.height * s.width, s.channels,
                                  images + k * sample_numel);
        labels[k] = s.label;
      } catch (const InputError& e) {
        throw InputError(context(i, number, ep) + e.what());
      } catch (const std::exception& e) {
        throw Error(context(i, number, ep) + e.what());
      }
    }
    return hb;
  }

  std::string context(int64_t i, int64_t number, int64_t ep) const {
    return str_cat("data loader (", dataset->description(), "): sample ", i, " (batch ", number,
                   " of epoch ", ep, "): ");
  }

  void worker_loop() {
    std::unique_lock<std::mutex> lock(mu);
    while (true) {
      work_cv.wait(lock, [&] {
        return stop.load() ||
               (started && next_build < num_batches && next_build < next_deliver + window);
      });
      if (stop.load()) return;
      const int64_t b = next_build++;
      const uint64_t gen = generation.load();
      const int64_t ep = epoch;
      std::vector<int64_t> idx = batch_indices(*order, b);
      lock.unlock();
      HostBatch hb;
      try {
        hb = build(ep, b, std::move(idx), gen);
      } catch (...) {
        hb = HostBatch();
        hb.error = std::current_exception();  // rethrown by the consumer's next()
      }
      lock.lock();
      if (gen == generation.load()) {
        ready.emplace(b, std::move(hb));
        ready_cv.notify_all();
      } else {
        lock.unlock();
        hb = HostBatch();  // stale: drop it outside the lock
        lock.lock();
      }
    }
  }

  // Moves a host batch to the loader's device.
  void deliver(HostBatch& hb, Batch& out) const {
    const Device dev = opts.device;
    if (pinned) {
      out.images = empty(hb.image_shape, TensorOptions(DType::f32, dev));
      out.labels = empty({hb.image_shape[0]}, TensorOptions(DType::i64, dev));
      // Asynchronous on the current stream; the pinned allocator keeps the blocks out of reuse
      // until the copies are done (record_use in the CUDA backend), so freeing them now is safe.
      core::DeviceBackend& backend = core::cuda_backend(dev.index);
      backend.copy(out.images.raw_data(), dev, hb.pinned_images.get(), Device::cpu(),
                   size_t(out.images.nbytes()));
      backend.copy(out.labels.raw_data(), dev, hb.pinned_labels.get(), Device::cpu(),
                   size_t(out.labels.nbytes()));
      hb.pinned_images.reset();
      hb.pinned_labels.reset();
    } else {
      out.images = hb.images.to(dev);
      out.labels = hb.labels.to(dev);
    }
    out.indices = std::move(hb.indices);
  }
};

// ---------------------------------------------------------------------------- DataLoader

DataLoader::DataLoader(DatasetPtr dataset, LoaderOptions options, Pipeline transform)
    : state_(std::make_unique<State>()) {
  LOWBIT_CHECK(dataset != nullptr, "data loader: null dataset");
  const LoaderOptions& o = options;
  LOWBIT_CHECK_INPUT(o.batch_size >= 1, "data loader: batch_size must be >= 1, got ", o.batch_size);
  LOWBIT_CHECK_INPUT(o.num_workers >= 0 && o.num_workers <= 256,
                     "data loader: num_workers must be in [0, 256], got ", o.num_workers);
  LOWBIT_CHECK_INPUT(o.world_size >= 1, "data loader: world_size must be >= 1, got ", o.world_size);
  LOWBIT_CHECK_INPUT(o.rank >= 0 && o.rank < o.world_size, "data loader: rank ", o.rank,
                     " outside [0, world_size = ", o.world_size, ")");
  LOWBIT_CHECK_INPUT(o.prefetch >= 0, "data loader: prefetch must be >= 0, got ", o.prefetch);
  for (const TransformPtr& t : transform.steps) {
    LOWBIT_CHECK(t != nullptr, "data loader: null transform in the pipeline");
  }
  // A CUDA device must exist; the check throws naming the device and what is visible.
  if (o.device.is_cuda()) core::cuda_backend(o.device.index);

  State& s = *state_;
  s.dataset = std::move(dataset);
  s.opts = options;
  s.transform = std::move(transform);
  s.pinned = o.pin_memory && o.device.is_cuda() && core::cuda_device_count() > 0;
  s.window = o.prefetch > 0 ? o.prefetch : std::max<int64_t>(2 * o.num_workers, 1);
  s.workers.reserve(size_t(o.num_workers));
  for (int64_t w = 0; w < o.num_workers; ++w) {
    s.workers.emplace_back([&s] { s.worker_loop(); });
  }
}

DataLoader::~DataLoader() {
  State& s = *state_;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.stop.store(true);
  }
  s.work_cv.notify_all();
  for (std::thread& t : s.workers) t.join();
}

void DataLoader::set_epoch(int64_t epoch) {
  LOWBIT_CHECK_INPUT(epoch >= 0, "data loader: epoch must be >= 0, got ", epoch);
  state_->start_epoch(epoch);
}

void DataLoader::reset() { state_->start_epoch(epoch()); }

void DataLoader::seek(int64_t batch) {
  LOWBIT_CHECK_INPUT(batch >= 0 && batch <= size(), "data loader: batch ", batch, " outside [0, ",
                     size(), "]");
  state_->start_epoch(epoch(), batch);
}

bool DataLoader::next(Batch& batch) {
  State& s = *state_;
  bool started = false;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    started = s.started;
  }
  if (!started) s.start_epoch(epoch());

  HostBatch hb;
  int64_t number = 0;
  int64_t ep = 0;
  if (s.workers.empty()) {
    std::vector<int64_t> idx;
    uint64_t gen = 0;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      if (s.next_deliver >= s.num_batches) return false;
      number = s.next_deliver++;
      ep = s.epoch;
      gen = s.generation.load();
      idx = s.batch_indices(*s.order, number);
    }
    hb = s.build(ep, number, std::move(idx), gen);
  } else {
    std::unique_lock<std::mutex> lock(s.mu);
    if (s.next_deliver >= s.num_batches) return false;
    number = s.next_deliver;
    ep = s.epoch;
    s.ready_cv.wait(lock, [&] { return s.ready.count(number) > 0; });
    auto it = s.ready.find(number);
    hb = std::move(it->second);
    s.ready.erase(it);
    ++s.next_deliver;
    lock.unlock();
    s.work_cv.notify_all();
  }
  if (hb.error) std::rethrow_exception(hb.error);
  s.deliver(hb, batch);
  batch.epoch = ep;
  batch.number = number;
  return true;
}

int64_t DataLoader::size() const { return state_->batches_per_epoch(); }
int64_t DataLoader::num_samples() const { return state_->samples_per_epoch(); }
int64_t DataLoader::epoch() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->epoch;
}
bool DataLoader::pinned() const { return state_->pinned; }
const LoaderOptions& DataLoader::options() const { return state_->opts; }
const Dataset& DataLoader::dataset() const { return *state_->dataset; }
const Pipeline& DataLoader::transform() const { return state_->transform; }

}  // namespace lowbit::data
