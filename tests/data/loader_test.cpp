// DataLoader: coverage of each epoch, seeded order, sharding like DistributedSampler, identical
// batches for any number of workers, drop_last, epochs restarted mid-way, error propagation
// from workers, and (on a GPU) pinned batches equal to the CPU ones.
#include "data/loader.h"

#include <algorithm>
#include <atomic>
#include <numeric>
#include <set>

#include "data/in_memory_dataset.h"
#include "tests/common/test_util.h"
#include "tests/data/data_test_util.h"

namespace lowbit {
namespace {

using data::Batch;
using data::DataLoader;
using data::LoaderOptions;

// n images of 2x2x1 whose pixels all equal the index (mod 256) and label index % 5.
std::shared_ptr<data::InMemoryDataset> index_dataset(int64_t n) {
  std::vector<uint8_t> px;
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < n; ++i) {
    for (int k = 0; k < 4; ++k) px.push_back(uint8_t(i % 256));
    labels.push_back(i % 5);
  }
  return std::make_shared<data::InMemoryDataset>(px, labels, Shape{2, 2, 1}, 5, "index dataset");
}

std::vector<Batch> epoch_batches(DataLoader& loader) {
  std::vector<Batch> out;
  Batch b;
  while (loader.next(b)) out.push_back(b);
  return out;
}

std::vector<int64_t> flat_indices(const std::vector<Batch>& batches) {
  std::vector<int64_t> out;
  for (const Batch& b : batches) out.insert(out.end(), b.indices.begin(), b.indices.end());
  return out;
}

LoaderOptions opts(int64_t batch, bool shuffle, int64_t workers, uint64_t seed = 1) {
  LoaderOptions o;
  o.batch_size = batch;
  o.shuffle = shuffle;
  o.num_workers = workers;
  o.seed = seed;
  return o;
}

TEST(DataLoader, EpochCoversDatasetExactlyOnce) {
  DataLoader loader(index_dataset(23), opts(4, true, 2));
  EXPECT_EQ(loader.size(), 6);
  EXPECT_EQ(loader.num_samples(), 23);
  const std::vector<Batch> batches = epoch_batches(loader);
  ASSERT_EQ(batches.size(), 6u);
  std::vector<int64_t> seen = flat_indices(batches);
  std::sort(seen.begin(), seen.end());
  std::vector<int64_t> all(23);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(seen, all);
  EXPECT_EQ(batches.back().size(), 3);
  for (size_t k = 0; k < batches.size(); ++k) {
    const Batch& b = batches[k];
    EXPECT_EQ(b.number, int64_t(k));
    EXPECT_EQ(b.epoch, 0);
    ASSERT_EQ(b.images.shape(), (Shape{b.size(), 2, 2, 1}));
    ASSERT_EQ(b.images.dtype(), DType::f32);
    ASSERT_EQ(b.labels.shape(), (Shape{b.size()}));
    ASSERT_EQ(b.labels.dtype(), DType::i64);
    EXPECT_TRUE(b.images.device().is_cpu());
    const std::vector<float> img = b.images.to_vector<float>();
    const std::vector<int64_t> lab = b.labels.to_vector<int64_t>();
    for (int64_t j = 0; j < b.size(); ++j) {
      const int64_t i = b.indices[size_t(j)];
      EXPECT_EQ(lab[size_t(j)], i % 5);
      for (int p = 0; p < 4; ++p) EXPECT_FLOAT_EQ(img[size_t(j * 4 + p)], float(i) / 255.0f);
    }
  }
  Batch extra;
  EXPECT_FALSE(loader.next(extra));  // exhausted until set_epoch or reset
  EXPECT_FALSE(loader.next(extra));
}

TEST(DataLoader, SameSeedSameOrderEpochsDiffer) {
  DataLoader a(index_dataset(50), opts(8, true, 2, 42));
  DataLoader b(index_dataset(50), opts(8, true, 0, 42));
  DataLoader c(index_dataset(50), opts(8, true, 2, 43));
  const std::vector<int64_t> a0 = flat_indices(epoch_batches(a));
  EXPECT_EQ(a0, flat_indices(epoch_batches(b)));
  EXPECT_NE(a0, flat_indices(epoch_batches(c)));
  std::vector<int64_t> identity(50);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(a0, identity);
  a.set_epoch(1);
  const std::vector<int64_t> a1 = flat_indices(epoch_batches(a));
  EXPECT_NE(a0, a1);
  b.set_epoch(1);
  EXPECT_EQ(a1, flat_indices(epoch_batches(b)));
  a.set_epoch(0);
  EXPECT_EQ(a0, flat_indices(epoch_batches(a)));
  EXPECT_EQ(a0, data::permutation(50, 42, 0));
}

TEST(DataLoader, NoShuffleIsDatasetOrder) {
  DataLoader loader(index_dataset(10), opts(3, false, 1));
  std::vector<int64_t> identity(10);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_EQ(flat_indices(epoch_batches(loader)), identity);
  loader.set_epoch(5);
  EXPECT_EQ(flat_indices(epoch_batches(loader)), identity);
}

TEST(DataLoader, ShardingMatchesDistributedSampler) {
  // n = 5, 3 ranks, no shuffle: padded to [0 1 2 3 4 0]; rank r takes r, r + 3.
  EXPECT_EQ(data::shard_indices(5, false, 0, 0, 0, 3), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(data::shard_indices(5, false, 0, 0, 1, 3), (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(data::shard_indices(5, false, 0, 0, 2, 3), (std::vector<int64_t>{2, 0}));
  // Padding longer than the data repeats it: n = 2, 5 ranks -> [0 1 0 1 0].
  EXPECT_EQ(data::shard_indices(2, false, 0, 0, 4, 5), (std::vector<int64_t>{0}));
  EXPECT_EQ(data::shard_indices(2, false, 0, 0, 3, 5), (std::vector<int64_t>{1}));
  // Shuffled: the shared permutation, strided.
  const std::vector<int64_t> perm = data::permutation(7, 3, 2);
  EXPECT_EQ(data::shard_indices(7, true, 3, 2, 1, 2),
            (std::vector<int64_t>{perm[1], perm[3], perm[5], perm[0]}));
  EXPECT_INPUT_ERROR(data::shard_indices(7, true, 3, 2, 2, 2), "rank 2");
}

TEST(DataLoader, TwoRanksPartitionTheIndices) {
  for (int64_t n : {24, 23}) {
    std::vector<std::vector<int64_t>> per_rank;
    for (int64_t r = 0; r < 2; ++r) {
      LoaderOptions o = opts(5, true, 2, 9);
      o.rank = r;
      o.world_size = 2;
      DataLoader loader(index_dataset(n), o);
      loader.set_epoch(3);
      EXPECT_EQ(loader.num_samples(), (n + 1) / 2);
      EXPECT_EQ(loader.size(), ((n + 1) / 2 + 4) / 5);
      per_rank.push_back(flat_indices(epoch_batches(loader)));
      EXPECT_EQ(int64_t(per_rank.back().size()), (n + 1) / 2);
    }
    std::multiset<int64_t> both(per_rank[0].begin(), per_rank[0].end());
    both.insert(per_rank[1].begin(), per_rank[1].end());
    std::set<int64_t> distinct(both.begin(), both.end());
    EXPECT_EQ(int64_t(distinct.size()), n);        // every index somewhere
    EXPECT_EQ(int64_t(both.size()), n + (n % 2));  // odd n: one index padded twice
    if (n % 2 == 0) {
      std::vector<int64_t> inter;
      std::vector<int64_t> r0 = per_rank[0], r1 = per_rank[1];
      std::sort(r0.begin(), r0.end());
      std::sort(r1.begin(), r1.end());
      std::set_intersection(r0.begin(), r0.end(), r1.begin(), r1.end(), std::back_inserter(inter));
      EXPECT_TRUE(inter.empty());
    }
  }
}

TEST(DataLoader, WorkerCountDoesNotChangeBatches) {
  auto ds = data::synthetic(37, 8, 8, 3, 4, 5);
  data::Pipeline p(
      {data::random_crop(6, 6, 2), data::random_horizontal_flip(), data::random_resized_crop(5, 5)},
      data::to_tensor_normalize(data::kCifar10Mean, data::kCifar10Std));
  std::vector<std::vector<Batch>> runs;
  for (int64_t workers : {0, 1, 3}) {
    LoaderOptions o = opts(4, true, workers, 77);
    o.prefetch = workers == 3 ? 2 : 0;  // fewer in flight than workers: still the same
    DataLoader loader(ds, o, p);
    loader.set_epoch(2);
    runs.push_back(epoch_batches(loader));
  }
  for (size_t r = 1; r < runs.size(); ++r) {
    ASSERT_EQ(runs[r].size(), runs[0].size());
    for (size_t k = 0; k < runs[0].size(); ++k) {
      EXPECT_EQ(runs[r][k].indices, runs[0][k].indices);
      EXPECT_TENSOR_NEAR(runs[r][k].images, runs[0][k].images, 0, 0);
      EXPECT_TENSOR_NEAR(runs[r][k].labels, runs[0][k].labels, 0, 0);
    }
  }
  EXPECT_EQ(runs[0][0].images.shape(), (Shape{4, 5, 5, 3}));
}

TEST(DataLoader, AugmentationDependsOnEpoch) {
  auto ds = data::synthetic(8, 8, 8, 1, 2, 5);
  data::Pipeline p({data::random_crop(8, 8, 3)});
  DataLoader loader(ds, opts(8, false, 1), p);
  Batch e0, e1, e0_again;
  ASSERT_TRUE(loader.next(e0));
  loader.set_epoch(1);
  ASSERT_TRUE(loader.next(e1));
  loader.set_epoch(0);
  ASSERT_TRUE(loader.next(e0_again));
  EXPECT_FALSE(allclose(e0.images, e1.images));
  EXPECT_TENSOR_NEAR(e0.images, e0_again.images, 0, 0);
}

TEST(DataLoader, DropLast) {
  LoaderOptions o = opts(4, true, 2);
  o.drop_last = true;
  DataLoader loader(index_dataset(23), o);
  EXPECT_EQ(loader.size(), 5);
  const std::vector<Batch> batches = epoch_batches(loader);
  ASSERT_EQ(batches.size(), 5u);
  for (const Batch& b : batches) EXPECT_EQ(b.size(), 4);
  o.batch_size = 30;
  DataLoader none(index_dataset(23), o);
  EXPECT_EQ(none.size(), 0);
  Batch b;
  EXPECT_FALSE(none.next(b));
}

TEST(DataLoader, ResetAndSetEpochMidway) {
  DataLoader loader(index_dataset(40), opts(4, true, 3, 8));
  const std::vector<int64_t> full = flat_indices(epoch_batches(loader));
  loader.reset();
  Batch b;
  ASSERT_TRUE(loader.next(b));
  ASSERT_TRUE(loader.next(b));
  loader.reset();  // back to batch 0 with prefetched batches in flight
  EXPECT_EQ(flat_indices(epoch_batches(loader)), full);
  loader.set_epoch(1);
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(b.epoch, 1);
  loader.set_epoch(0);
  EXPECT_EQ(flat_indices(epoch_batches(loader)), full);
}

TEST(DataLoader, DestroyWhilePrefetching) {
  for (int rep = 0; rep < 5; ++rep) {
    DataLoader loader(data::synthetic(400, 16, 16, 3, 10, 1), opts(8, true, 3));
    Batch b;
    ASSERT_TRUE(loader.next(b));
  }  // destructors join workers that are mid-batch
  DataLoader idle(index_dataset(4), opts(2, false, 2));  // never started
}

// Throws from get() for one index.
class FailingDataset final : public data::Dataset {
 public:
  FailingDataset(int64_t bad, bool input_error) : bad_(bad), input_error_(input_error) {}
  int64_t size() const override { return 20; }
  int64_t num_classes() const override { return 2; }
  Shape image_shape() const override { return {1, 1, 1}; }
  std::string description() const override { return "failing dataset"; }
  data::Sample get(int64_t i) const override {
    if (i == bad_) {
      if (input_error_) throw InputError("/data/broken.jpg: corrupt JPEG data");
      throw std::runtime_error("disk on fire");
    }
    data::Sample s;
    s.image = {uint8_t(i)};
    s.height = s.width = s.channels = 1;
    s.label = i % 2;
    return s;
  }

 private:
  int64_t bad_;
  bool input_error_;
};

TEST(DataLoader, WorkerExceptionSurfacesWithItsMessage) {
  for (int64_t workers : {0, 1, 3}) {
    DataLoader loader(std::make_shared<FailingDataset>(13, true), opts(4, false, workers));
    Batch b;
    for (int k = 0; k < 3; ++k) ASSERT_TRUE(loader.next(b)) << "batch " << k;
    EXPECT_INPUT_ERROR(loader.next(b), "/data/broken.jpg: corrupt JPEG data", "sample 13",
                       "batch 3 of epoch 0", "failing dataset");
    EXPECT_TRUE(loader.next(b));  // the loader carries on with batch 4
    EXPECT_EQ(b.number, 4);
    EXPECT_FALSE(loader.next(b));
  }
  // Other exceptions become lowbit::Error (not InputError) with the message kept.
  DataLoader loader(std::make_shared<FailingDataset>(2, false), opts(4, false, 2));
  Batch b;
  try {
    loader.next(b);
    ADD_FAILURE() << "no exception";
  } catch (const InputError&) {
    ADD_FAILURE() << "became InputError";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("disk on fire"), std::string::npos) << e.what();
  }
}

TEST(DataLoader, DifferentImageSizesInABatchAreAnError) {
  class Mixed final : public data::Dataset {
   public:
    int64_t size() const override { return 4; }
    int64_t num_classes() const override { return 1; }
    Shape image_shape() const override { return {-1, -1, 3}; }
    std::string description() const override { return "mixed sizes"; }
    data::Sample get(int64_t i) const override {
      data::Sample s;
      s.height = 2 + i;
      s.width = 3;
      s.channels = 3;
      s.image.assign(size_t(s.numel()), 7);
      return s;
    }
  };
  DataLoader bad(std::make_shared<Mixed>(), opts(2, false, 1));
  Batch b;
  EXPECT_INPUT_ERROR(bad.next(b), "sample 1", "[3, 3, 3]", "[2, 3, 3]", "resize or crop");
  DataLoader fixed(std::make_shared<Mixed>(), opts(2, false, 1),
                   data::Pipeline({data::resize(4, 4)}));
  ASSERT_TRUE(fixed.next(b));
  EXPECT_EQ(b.images.shape(), (Shape{2, 4, 4, 3}));
}

TEST(DataLoader, BadOptions) {
  auto ds = index_dataset(4);
  LoaderOptions o;
  o.batch_size = 0;
  EXPECT_INPUT_ERROR(DataLoader(ds, o), "batch_size", "0");
  o = LoaderOptions();
  o.num_workers = -1;
  EXPECT_INPUT_ERROR(DataLoader(ds, o), "num_workers");
  o = LoaderOptions();
  o.world_size = 2;
  o.rank = 2;
  EXPECT_INPUT_ERROR(DataLoader(ds, o), "rank 2");
  o = LoaderOptions();
  o.prefetch = -1;
  EXPECT_INPUT_ERROR(DataLoader(ds, o), "prefetch");
}

TEST(DataLoader, CpuBatchesAreNotPinned) {
  LoaderOptions o = opts(2, false, 1);
  o.pin_memory = true;
  DataLoader loader(index_dataset(4), o);
  EXPECT_FALSE(loader.pinned());  // pinned memory only serves copies to a GPU
}

TEST(DataLoader, CudaWithoutGpuIsAClearError) {
  if (testing::gpu_available()) GTEST_SKIP() << "a GPU is present";
  LoaderOptions o = opts(2, false, 1);
  o.device = Device::cuda(0);
  try {
    DataLoader loader(index_dataset(4), o);
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_TRUE(msg.find("without CUDA") != std::string::npos ||
                msg.find("device(s) are visible") != std::string::npos)
        << msg;
  }
}

TEST(DataLoaderGpu, PinnedBatchesMatchCpu) {
  LOWBIT_SKIP_WITHOUT_GPU();
  auto ds = data::synthetic(50, 8, 8, 3, 4, 5);
  data::Pipeline p({data::random_crop(8, 8, 2), data::random_horizontal_flip()},
                   data::to_tensor_normalize(data::kCifar10Mean, data::kCifar10Std));
  LoaderOptions o = opts(8, true, 2, 3);
  DataLoader cpu(ds, o, p);
  o.device = Device::cuda(0);
  DataLoader gpu(ds, o, p);
  EXPECT_TRUE(gpu.pinned());
  o.pin_memory = false;
  DataLoader pageable(ds, o, p);
  EXPECT_FALSE(pageable.pinned());
  for (int64_t epoch : {0, 1}) {
    cpu.set_epoch(epoch);
    gpu.set_epoch(epoch);
    pageable.set_epoch(epoch);
    Batch c, g, q;
    while (cpu.next(c)) {
      ASSERT_TRUE(gpu.next(g));
      ASSERT_TRUE(pageable.next(q));
      EXPECT_TRUE(g.images.is_cuda());
      EXPECT_TRUE(g.labels.is_cuda());
      EXPECT_TENSOR_NEAR(g.images.to(Device::cpu()), c.images, 0, 0);
      EXPECT_TENSOR_NEAR(g.labels.to(Device::cpu()), c.labels, 0, 0);
      EXPECT_TENSOR_NEAR(q.images.to(Device::cpu()), c.images, 0, 0);
    }
    EXPECT_FALSE(gpu.next(g));
  }
}

}  // namespace
}  // namespace lowbit
