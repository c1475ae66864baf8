// GradientReducer and the module broadcast/hash helpers (ddp.h).
#include "train/ddp.h"

#include <chrono>
#include <cstring>

#include "core/autograd.h"
#include "core/error.h"

namespace lowbit::train {

void broadcast_module(layers::Module& model, dist::ProcessGroup& group) {
  if (group.size() == 1) return;
  autograd::NoGradGuard guard;
  auto send = [&](Tensor t) {
    if (t.is_contiguous()) {
      group.broadcast(t, 0);
    } else {
      Tensor c = t.contiguous();
      group.broadcast(c, 0);
      t.copy_(c);
    }
  };
  for (auto& [name, p] : model.named_parameters()) send(p);
  for (auto& [name, b] : model.named_buffers()) send(b);
}

namespace {

// FNV-1a over names, dtypes, shapes and (with values) every byte of the tensors.
uint64_t hash_tensors(const std::vector<std::pair<std::string, Tensor>>& tensors, bool values) {
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&](const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ULL;
  };
  for (auto& [name, t] : tensors) {
    mix(name.data(), name.size());
    const auto dt = static_cast<uint8_t>(t.dtype());
    mix(&dt, 1);
    for (int64_t d : t.shape()) mix(&d, sizeof(d));
    if (!values) continue;
    Tensor host = t.to(Device::cpu()).contiguous();
    mix(host.raw_data(), size_t(host.nbytes()));
  }
  return h;
}

}  // namespace

uint64_t hash_module(const layers::Module& model, bool values) {
  const auto sd = model.state_dict();
  return hash_tensors(std::vector<std::pair<std::string, Tensor>>(sd.begin(), sd.end()), values);
}

uint64_t hash_parameters(const layers::Module& model) {
  return hash_tensors(model.named_parameters(), true);
}

void check_same_on_all_ranks(uint64_t value, const std::string& what, dist::ProcessGroup& group,
                             bool input_error) {
  if (group.size() == 1) return;
  Tensor mine = empty({1}, TensorOptions(DType::i64));
  std::memcpy(mine.raw_data(), &value, sizeof(value));
  Tensor all = group.all_gather(mine).to(Device::cpu());
  const auto v = all.to_vector<int64_t>();
  std::string differ;
  for (size_t r = 1; r < v.size(); ++r) {
    if (v[r] != v[0]) differ += str_cat(differ.empty() ? "" : ", ", r);
  }
  if (differ.empty()) return;
  const std::string msg = str_cat(what, " differs between rank 0 and rank(s) ", differ);
  if (input_error) throw InputError(msg);
  throw Error(msg);
}

// ------------------------------------------------------------------------------- reducer

struct GradientReducer::State {
  struct Bucket {
    std::vector<size_t> params;  // indices into `params`, in launch order
    std::vector<int64_t> offsets;
    Tensor flat;  // (numel) of the parameters' dtype, on their device
    int64_t ready = 0;
    dist::WorkPtr work;
  };
  dist::ProcessGroup* group = nullptr;
  std::vector<Tensor> params;
  std::vector<size_t> bucket_of;
  std::vector<char> marked;  // got its gradient in this backward
  std::vector<Bucket> buckets;
  size_t next_launch = 0;
  bool sync = true;
  double wait_s = 0.0;

  // The local group of a world of one has nothing to reduce. (A one-rank nccl group still runs
  // every bucket: the GPU test of the reducer.)
  bool plain() const { return group->size() == 1 && std::string(group->backend()) == "local"; }

  void launch(Bucket& b) {
    autograd::NoGradGuard guard;
    for (size_t k = 0; k < b.params.size(); ++k) {
      const Tensor& p = params[b.params[k]];
      Tensor slot = b.flat.narrow(0, b.offsets[k], p.numel());
      Tensor g = p.grad();
      if (g.defined()) {
        slot.copy_(g.reshape({p.numel()}));
      } else {
        slot.zero_();
      }
    }
    b.work = group->all_reduce_async(b.flat, dist::ReduceOp::mean);
  }

  // Launches, in bucket order, every bucket that is complete and not yet launched.
  void launch_ready() {
    while (next_launch < buckets.size() &&
           buckets[next_launch].ready == int64_t(buckets[next_launch].params.size())) {
      launch(buckets[next_launch]);
      ++next_launch;
    }
  }

  void on_grad(size_t i) {
    if (!sync || marked[i]) return;
    marked[i] = 1;
    ++buckets[bucket_of[i]].ready;
    launch_ready();
  }
};

GradientReducer::GradientReducer(std::vector<Tensor> params, dist::ProcessGroup& group,
                                 int64_t bucket_bytes)
    : state_(std::make_shared<State>()) {
  LOWBIT_CHECK_INPUT(bucket_bytes > 0, "dist.bucket_mb must be > 0");
  State& s = *state_;
  s.group = &group;
  for (auto& p : params) {
    if (p.requires_grad()) s.params.push_back(p);
  }
  s.bucket_of.assign(s.params.size(), 0);
  s.marked.assign(s.params.size(), 0);
  // Reverse registration order; a new bucket when full or when dtype/device change.
  State::Bucket cur;
  int64_t cur_bytes = 0;
  auto close = [&] {
    if (cur.params.empty()) return;
    const Tensor& first = s.params[cur.params[0]];
    cur.flat =
        zeros({cur_bytes / first.element_size()}, TensorOptions(first.dtype(), first.device()));
    s.buckets.push_back(std::move(cur));
    cur = State::Bucket();
    cur_bytes = 0;
  };
  for (size_t k = s.params.size(); k-- > 0;) {
    const Tensor& p = s.params[k];
    if (!cur.params.empty()) {
      const Tensor& first = s.params[cur.params[0]];
      if (cur_bytes + p.nbytes() > bucket_bytes || p.dtype() != first.dtype() ||
          p.device() != first.device())
        close();
    }
    cur.offsets.push_back(cur_bytes / p.element_size());
    cur.params.push_back(k);
    s.bucket_of[k] = s.buckets.size();
    cur_bytes += p.nbytes();
  }
  close();
  if (s.plain()) return;  // a world of one: no hooks, plain training
  std::weak_ptr<State> weak = state_;
  for (size_t k = 0; k < s.params.size(); ++k) {
    s.params[k].register_post_accumulate_grad_hook([weak, k](const Tensor&) {
      if (auto st = weak.lock()) st->on_grad(k);
    });
  }
}

// The hooks stay registered on the leaves but hold the state weakly: once the reducer is gone
// they find nothing and return.
GradientReducer::~GradientReducer() = default;

void GradientReducer::set_sync(bool sync) { state_->sync = sync; }

void GradientReducer::finish() {
  State& s = *state_;
  if (!s.sync || s.plain()) return;
  // Buckets whose parameters did not all get a gradient: launched now, in order.
  for (auto& b : s.buckets) b.ready = int64_t(b.params.size());
  s.launch_ready();
  const auto t0 = std::chrono::steady_clock::now();
  for (auto& b : s.buckets) {
    b.work->wait();
    b.work.reset();
  }
  s.wait_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  autograd::NoGradGuard guard;
  for (auto& b : s.buckets) {
    for (size_t k = 0; k < b.params.size(); ++k) {
      const Tensor& p = s.params[b.params[k]];
      Tensor g = p.grad();
      if (g.defined()) g.copy_(b.flat.narrow(0, b.offsets[k], p.numel()).reshape(p.shape()));
    }
    b.ready = 0;
  }
  std::fill(s.marked.begin(), s.marked.end(), 0);
  s.next_launch = 0;
}

int64_t GradientReducer::num_buckets() const { return int64_t(state_->buckets.size()); }
double GradientReducer::wait_seconds() const { return state_->wait_s; }

}  // namespace lowbit::train
