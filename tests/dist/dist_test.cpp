// dist/ and data-parallel training. The binary runs alone (a world of one, every ctest entry)
// and as one job under `mpirun -np 2` (ctest test dist_mpi2): every test is written for any world
// size, with expected values computed from the ranks' ids, and the data-parallel tests compare
// against a single-process reference that each rank computes on the whole global batch itself.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/random.h"
#include "data/loader.h"
#include "dist/process_group.h"
#include "dist/world.h"
#include "layers/basic.h"
#include "layers/batchnorm.h"
#include "layers/conv2d.h"
#include "quant/observer.h"
#include "tests/common/test_util.h"
#include "train/ddp.h"
#include "train/loss.h"
#include "train/optimizer.h"

namespace lowbit {
namespace {

using testing::error_of;
using ::testing::HasSubstr;

dist::ProcessGroup& cpu_group() { return dist::process_group(Device::cpu()); }

std::vector<double> values_of(const Tensor& t) {
  return t.to(DType::f64).contiguous().to_vector<double>();
}

// x_r[i] = (r + 1) * (i + 1) on rank r.
Tensor rank_tensor(DType dt, int64_t n) {
  Tensor t = empty({n}, TensorOptions(DType::f64));
  for (int64_t i = 0; i < n; ++i) t.data<double>()[i] = double(dist::rank() + 1) * double(i + 1);
  return t.to(dt).contiguous();
}

TEST(Collectives, AllReduceOpsMatchHandComputedValues) {
  const double w = dist::world_size();
  for (DType dt : {DType::f32, DType::f64, DType::i32, DType::i64}) {
    for (dist::ReduceOp op :
         {dist::ReduceOp::sum, dist::ReduceOp::mean, dist::ReduceOp::min, dist::ReduceOp::max}) {
      if (op == dist::ReduceOp::mean && !is_floating(dt)) continue;
      Tensor t = rank_tensor(dt, 5);
      cpu_group().all_reduce(t, op);
      const auto v = values_of(t);
      for (int64_t i = 0; i < 5; ++i) {
        const double k = double(i + 1);
        const double want = op == dist::ReduceOp::sum    ? k * w * (w + 1) / 2
                            : op == dist::ReduceOp::mean ? k * (w + 1) / 2
                            : op == dist::ReduceOp::min  ? k
                                                         : k * w;
        EXPECT_DOUBLE_EQ(v[size_t(i)], want)
            << dtype_name(dt) << " " << dist::reduce_op_name(op) << " i=" << i;
      }
    }
  }
}

TEST(Collectives, BroadcastAndAllGather) {
  const int w = dist::world_size();
  Tensor t = full({3}, double(dist::rank()), TensorOptions(DType::f32));
  cpu_group().broadcast(t, w - 1);
  EXPECT_EQ(values_of(t), std::vector<double>(3, double(w - 1)));

  Tensor mine = full({2, 2}, double(10 * dist::rank()), TensorOptions(DType::i64));
  Tensor all = cpu_group().all_gather(mine);
  ASSERT_EQ(all.shape(), (Shape{w, 2, 2}));
  const auto v = values_of(all);
  for (int r = 0; r < w; ++r) {
    for (int k = 0; k < 4; ++k) EXPECT_EQ(v[size_t(4 * r + k)], 10.0 * r);
  }
  cpu_group().barrier();
}

TEST(Collectives, AsyncWorkCompletesWhateverTheWaitOrder) {
  std::vector<Tensor> ts;
  std::vector<dist::WorkPtr> works;
  for (int k = 0; k < 6; ++k) {
    ts.push_back(full({1000}, double(k + dist::rank()), TensorOptions(DType::f32)));
    works.push_back(cpu_group().all_reduce_async(ts.back(), dist::ReduceOp::max));
  }
  for (int k = 5; k >= 0; --k) {
    works[size_t(k)]->wait();
    EXPECT_EQ(values_of(ts[size_t(k)])[999], double(k + dist::world_size() - 1));
  }
}

TEST(Collectives, RefuseWhatTheyCannotDo) {
  Tensor i = zeros({4}, DType::i64);
  EXPECT_THAT(error_of([&] { cpu_group().all_reduce(i, dist::ReduceOp::mean); }),
              HasSubstr("mean of a i64"));
  Tensor m = zeros({4, 4});
  Tensor strided = m.transpose(0, 1);
  EXPECT_THAT(error_of([&] { cpu_group().all_reduce(strided); }), HasSubstr("contiguous"));
  EXPECT_THAT(error_of([&] { dist::set_timeout(0); }), HasSubstr("timeout_s"));
}

TEST(Observers, BatchExtremesAreTheGlobalBatchsOnEveryRank) {
  // Rank r holds, per channel c, values in [-(r + 1) - c, 2 (r + 1) + c]: the global extremes are
  // those of the last rank.
  const int64_t w = dist::world_size(), r = dist::rank();
  Tensor x = empty({3, 2});  // (N, C), channels last
  for (int64_t c = 0; c < 2; ++c) {
    x.data<float>()[0 * 2 + c] = float(-(r + 1) - c);
    x.data<float>()[1 * 2 + c] = 0.5f;
    x.data<float>()[2 * 2 + c] = float(2 * (r + 1) + c);
  }
  quant::ChannelLayout l;
  l.outer = 3;
  l.channels = 2;
  l.inner = 1;
  auto [mn, mx] = quant::batch_min_max(x, l);
  EXPECT_EQ(values_of(mn), (std::vector<double>{double(-w), double(-w - 1)}));
  EXPECT_EQ(values_of(mx), (std::vector<double>{double(2 * w), double(2 * w + 1)}));
}

TEST(Sampler, TrainingShardsPadAndEvaluationShardsCoverTheDataOnce) {
  for (int64_t w : {1, 2, 3, 4}) {
    const int64_t n = 10;
    std::vector<int64_t> count(size_t(n), 0);
    int64_t padded_total = 0;
    for (int64_t r = 0; r < w; ++r) {
      const auto train = data::shard_indices(n, true, 7, 3, r, w, true);
      EXPECT_EQ(int64_t(train.size()), (n + w - 1) / w);
      EXPECT_EQ(int64_t(train.size()), data::shard_size(n, r, w, true));
      padded_total += int64_t(train.size());
      const auto eval = data::shard_indices(n, false, 7, 3, r, w, false);
      EXPECT_EQ(int64_t(eval.size()), data::shard_size(n, r, w, false));
      for (int64_t i : eval) ++count[size_t(i)];
    }
    // Evaluation: every index exactly once. Training: the padding is the head of the order.
    EXPECT_EQ(count, std::vector<int64_t>(size_t(n), 1)) << "world " << w;
    EXPECT_EQ(padded_total - n, (w - n % w) % w) << "world " << w;
    const auto perm = data::permutation(n, 7, 3);
    std::vector<int64_t> seen;
    for (int64_t k = 0; k < (n + w - 1) / w; ++k) {
      for (int64_t r = 0; r < w; ++r)
        seen.push_back(data::shard_indices(n, true, 7, 3, r, w, true)[size_t(k)]);
    }
    for (int64_t k = 0; k < int64_t(seen.size()); ++k)
      EXPECT_EQ(seen[size_t(k)], perm[size_t(k % n)]);
  }
}

// A small net: conv, (BN,) ReLU, conv (stride 2), ReLU, linear head.
layers::ModulePtr small_net(bool bn = false) {
  auto net = std::make_shared<layers::Sequential>(std::vector<layers::ModulePtr>{
      std::make_shared<layers::Conv2d>(layers::Conv2dOptions(3, 8, 3).with_padding(1)),
      bn ? layers::ModulePtr(std::make_shared<layers::BatchNorm2d>(8))
         : std::make_shared<layers::Identity>(),
      std::make_shared<layers::ReLU>(),
      std::make_shared<layers::Conv2d>(
          layers::Conv2dOptions(8, 8, 3).with_padding(1).with_stride(2)),
      std::make_shared<layers::ReLU>(), std::make_shared<layers::Flatten>(),
      std::make_shared<layers::Linear>(8 * 4 * 4, 5)});
  return net;
}

// Rows r, r + w, r + 2w, ... of x: rank r's share of a global batch, as the sampler deals it.
Tensor shard_rows(const Tensor& x, int64_t r, int64_t w) {
  std::vector<int64_t> idx;
  for (int64_t i = r; i < x.size(0); i += w) idx.push_back(i);
  Tensor index = empty({int64_t(idx.size())}, DType::i64);
  std::copy(idx.begin(), idx.end(), index.data<int64_t>());
  return index_select(x, 0, index);
}

// `steps` SGD steps with momentum on global batches of `global` samples: data-parallel (each
// rank its shard, in `micro` micro-batches, buckets of `bucket_bytes`) against one process on
// the whole batch.
void expect_data_parallel_equals_one_process(int64_t global, int64_t micro, int64_t bucket_bytes,
                                             bool sync_bn = false) {
  const int64_t w = dist::world_size(), r = dist::rank();
  manual_seed(3);
  auto ddp_net = small_net(sync_bn);
  auto ref_net = small_net(sync_bn);
  layers::set_sync_batch_norm(*ddp_net, true);
  ref_net->load_state_dict(ddp_net->state_dict());
  train::broadcast_module(*ddp_net, cpu_group());
  train::broadcast_module(*ref_net, cpu_group());
  train::SGD ddp_opt({train::ParamGroup(ddp_net->parameters(), 0.1, 1e-3)}, {0.9, 0.0, false});
  train::SGD ref_opt({train::ParamGroup(ref_net->parameters(), 0.1, 1e-3)}, {0.9, 0.0, false});
  train::GradientReducer reducer(ddp_net->parameters(), cpu_group(), bucket_bytes);
  if (bucket_bytes < 4096) {
    EXPECT_GT(reducer.num_buckets(), 2);
  }
  for (int step = 0; step < 3; ++step) {
    manual_seed(100 + uint64_t(step));  // the same global batch on every rank
    Tensor x = randn({global, 8, 8, 3});
    Tensor y = randint(0, 5, {global});
    ref_opt.zero_grad();
    train::cross_entropy(ref_net->forward(x), y).backward();
    ref_opt.step();

    Tensor xs = shard_rows(x, r, w), ys = shard_rows(y, r, w);
    const int64_t per = xs.size(0) / micro;
    ddp_opt.zero_grad();
    for (int64_t m = 0; m < micro; ++m) {
      reducer.set_sync(m == micro - 1);
      Tensor loss = train::cross_entropy(ddp_net->forward(xs.narrow(0, m * per, per)),
                                         ys.narrow(0, m * per, per));
      (loss / double(micro)).backward();
    }
    reducer.finish();
    ddp_opt.step();
  }
  const auto sa = ddp_net->state_dict(), sb = ref_net->state_dict();
  std::vector<std::pair<std::string, Tensor>> a(sa.begin(), sa.end()), b(sb.begin(), sb.end());
  for (size_t k = 0; k < a.size(); ++k) {
    SCOPED_TRACE(a[k].first);
    if (a[k].second.dtype() == DType::i64) {
      EXPECT_EQ(values_of(a[k].second), values_of(b[k].second));
      continue;
    }
    // Float sums in another order (per-rank means, then their mean): rounding only.
    EXPECT_TENSOR_NEAR(a[k].second, b[k].second, 1e-4, 1e-6);
  }
  // And the ranks hold the same parameters, bit for bit.
  train::check_same_on_all_ranks(train::hash_parameters(*ddp_net), "parameters", cpu_group(),
                                 false);
}

TEST(DataParallel, RanksOfBatchBStepLikeOneProcessOfTheGlobalBatch) {
  expect_data_parallel_equals_one_process(8 * dist::world_size(), 1, 25 << 20);
}

TEST(DataParallel, SmallBucketsGiveTheSameSteps) {
  expect_data_parallel_equals_one_process(8 * dist::world_size(), 1, 600);
}

TEST(DataParallel, AccumulatedMicroBatchesReduceOnceAndStepLikeTheGlobalBatch) {
  expect_data_parallel_equals_one_process(8 * dist::world_size(), 2, 600);
}

TEST(DataParallel, SyncBatchNormStepsLikeOneProcessOfTheGlobalBatch) {
  // BN statistics, running statistics and the BN backward over the global batch.
  expect_data_parallel_equals_one_process(8 * dist::world_size(), 1, 600, true);
}

TEST(DataParallel, PerRankBatchNormKeepsTheParametersIdenticalButNotTheGlobalBatchStep) {
  const int64_t w = dist::world_size(), r = dist::rank();
  manual_seed(3);
  auto net = small_net(true);
  auto ref = small_net(true);
  ref->load_state_dict(net->state_dict());
  train::SGD opt({train::ParamGroup(net->parameters(), 0.1)});
  train::SGD ref_opt({train::ParamGroup(ref->parameters(), 0.1)});
  train::GradientReducer reducer(net->parameters(), cpu_group(), 25 << 20);
  manual_seed(7);
  Tensor x = randn({4 * w, 8, 8, 3}) * 3.0 + 1.0;
  Tensor y = randint(0, 5, {4 * w});
  train::cross_entropy(net->forward(shard_rows(x, r, w)), shard_rows(y, r, w)).backward();
  reducer.finish();
  opt.step();
  train::cross_entropy(ref->forward(x), y).backward();
  ref_opt.step();
  train::check_same_on_all_ranks(train::hash_parameters(*net), "parameters", cpu_group(), false);
  if (w == 1) return;
  // Per-rank statistics normalise differently from the global batch's: the step differs.
  const auto p = net->named_parameters(), q = ref->named_parameters();
  double diff = 0;
  for (size_t k = 0; k < p.size(); ++k) diff += values_of(sum(abs(p[k].second - q[k].second)))[0];
  EXPECT_GT(diff, 1e-4);
}

TEST(DataParallel, ChecksThatRanksAgree) {
  train::check_same_on_all_ranks(42, "a value", cpu_group(), true);
  if (dist::world_size() == 1) return;
  EXPECT_THAT(error_of([&] {
                train::check_same_on_all_ranks(uint64_t(dist::rank()), "the config", cpu_group(),
                                               true);
              }),
              HasSubstr("the config differs between rank 0 and rank(s) 1"));
}

// --- GPU (label gpu): the nccl backend with one rank, on a local bootstrap ---------------------

TEST(DistGpu, NcclOneRankCollectives) {
  LOWBIT_SKIP_WITHOUT_GPU();
  auto boot = dist::detail::make_local_group();
  auto nccl = dist::detail::make_nccl_group(0, *boot);
  EXPECT_STREQ(nccl->backend(), "nccl");
  const Device gpu = Device::cuda(0);
  Tensor x = rank_tensor(DType::f32, 7).to(gpu);
  for (dist::ReduceOp op :
       {dist::ReduceOp::sum, dist::ReduceOp::mean, dist::ReduceOp::min, dist::ReduceOp::max}) {
    nccl->all_reduce(x, op);
    EXPECT_EQ(values_of(x), values_of(rank_tensor(DType::f32, 7))) << dist::reduce_op_name(op);
  }
  nccl->broadcast(x, 0);
  Tensor g = nccl->all_gather(x);
  EXPECT_EQ(g.shape(), (Shape{1, 7}));
  EXPECT_EQ(values_of(g), values_of(x));
  nccl->barrier();
  EXPECT_THAT(error_of([&] { nccl->all_reduce(zeros({2})); }), HasSubstr("nccl group of cuda:0"));
}

TEST(DistGpu, OneRankDataParallelOnNcclEqualsPlainTraining) {
  // Every bucket goes through NCCL (mean over one rank): the steps must be bit for bit those
  // of plain training.
  LOWBIT_SKIP_WITHOUT_GPU();
  auto boot = dist::detail::make_local_group();
  auto nccl = dist::detail::make_nccl_group(0, *boot);
  const Device gpu = Device::cuda(0);
  manual_seed(3);
  auto a = small_net(true), b = small_net(true);
  b->load_state_dict(a->state_dict());
  a->to(gpu);
  b->to(gpu);
  train::SGD oa({train::ParamGroup(a->parameters(), 0.1)}, {0.9, 0.0, false});
  train::SGD ob({train::ParamGroup(b->parameters(), 0.1)}, {0.9, 0.0, false});
  train::GradientReducer reducer(a->parameters(), *nccl, 600);
  EXPECT_GT(reducer.num_buckets(), 2);
  for (int step = 0; step < 3; ++step) {
    Tensor x = randn({8, 8, 8, 3}, TensorOptions(DType::f32, gpu));
    Tensor y = randint(0, 5, {8}, TensorOptions(DType::i64, gpu));
    oa.zero_grad();
    train::cross_entropy(a->forward(x), y).backward();
    reducer.finish();
    oa.step();
    ob.zero_grad();
    train::cross_entropy(b->forward(x), y).backward();
    ob.step();
  }
  EXPECT_EQ(train::hash_module(*a), train::hash_module(*b));
}

}  // namespace
}  // namespace lowbit
