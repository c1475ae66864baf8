// Tensor: a reference-counted view (shape, strides, offset, dtype) on a Storage, plus the
// autograd metadata (requires_grad, grad, grad_fn). Copying a Tensor copies the handle, not the
// data, as in PyTorch. Activations are NHWC and conv weights KRSC by convention (see
// docs/style.md); nothing here transposes behind the caller's back.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"

namespace lowbit {

using Shape = std::vector<int64_t>;
std::ostream& operator<<(std::ostream& os, const Shape& s);
std::string shape_str(const Shape& s);
int64_t numel_of(const Shape& s);
Shape contiguous_strides(const Shape& s);

namespace autograd {
class Node;
}

// Raw memory on one device. The version counter is shared by every view of the storage; ops
// that write in place bump it, and autograd compares it against the version saved at forward.
class Storage {
 public:
  Storage(int64_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  int64_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  uint64_t version() const { return version_.load(std::memory_order_relaxed); }
  void bump_version() { version_.fetch_add(1, std::memory_order_relaxed); }

 private:
  void* data_ = nullptr;
  int64_t nbytes_ = 0;
  Device device_;
  std::atomic<uint64_t> version_{0};
};

class Tensor;
using GradHook = std::function<Tensor(const Tensor&)>;  // returns the new grad, or undefined
// Called with the leaf itself once its .grad holds the gradient of this backward pass
// (PyTorch's register_post_accumulate_grad_hook): data-parallel reducers start here.
using PostAccumulateGradHook = std::function<void(const Tensor& leaf)>;

struct AutogradMeta {
  bool requires_grad = false;
  bool retains_grad = false;
  std::shared_ptr<Tensor> grad;
  std::shared_ptr<autograd::Node> grad_fn;
  uint32_t output_nr = 0;
  std::vector<GradHook> hooks;  // leaf tensors; non-leaf hooks live on grad_fn
  std::vector<PostAccumulateGradHook> post_accumulate_hooks;  // leaf tensors only
  std::weak_ptr<autograd::Node> grad_accumulator;  // leaves: the shared AccumulateGrad node
  std::string name;                                // optional, for error messages
};

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;       // in elements
  int64_t offset = 0;  // in elements
  DType dtype = DType::f32;
  std::unique_ptr<AutogradMeta> autograd;
};

struct TensorOptions {
  DType dtype = DType::f32;
  Device device = Device::cpu();
  bool requires_grad = false;
  TensorOptions() = default;
  TensorOptions(DType t) : dtype(t) {}    // NOLINT: implicit on purpose (zeros({2}, DType::i64))
  TensorOptions(Device d) : device(d) {}  // NOLINT
  TensorOptions(DType t, Device d) : dtype(t), device(d) {}
  TensorOptions with_requires_grad(bool r = true) const {
    TensorOptions o = *this;
    o.requires_grad = r;
    return o;
  }
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool same(const Tensor& o) const { return impl_ == o.impl_; }

  // --- metadata ---
  const Shape& shape() const;
  const Shape& strides() const;
  int64_t size(int64_t dim) const;  // negative dims count from the end
  int64_t stride(int64_t dim) const;
  int64_t dim() const;
  int64_t numel() const;
  int64_t offset() const;
  DType dtype() const;
  Device device() const;
  int64_t element_size() const { return dtype_size(dtype()); }
  int64_t nbytes() const { return numel() * element_size(); }
  bool is_contiguous() const;
  bool is_cuda() const { return device().is_cuda(); }
  const std::shared_ptr<Storage>& storage() const;
  // Pointer to the first element of this view.
  void* raw_data() const;
  template <typename T>
  T* data() const {
    LOWBIT_CHECK(dtype_of<T> == dtype(), "data<", dtype_name(dtype_of<T>),
                 ">() on a tensor of dtype ", dtype());
    return static_cast<T*>(raw_data());
  }
  // Reads one element (any device; synchronises CUDA) as double. For tests and logging.
  double item() const;
  template <typename T>
  std::vector<T> to_vector() const;  // contiguous copy on the host

  // --- autograd ---
  bool requires_grad() const;
  Tensor& requires_grad_(bool r = true);
  Tensor grad() const;  // undefined when none was accumulated
  void set_grad(const Tensor& g) const;
  void zero_grad() const;  // drops .grad
  const std::shared_ptr<autograd::Node>& grad_fn() const;
  bool is_leaf() const;
  void retain_grad() const;
  // Registers a hook called with the gradient of this tensor during backward; a hook may
  // return a replacement gradient (or an undefined tensor to keep it).
  void register_hook(GradHook hook) const;
  // Registers a hook called after this leaf's .grad was updated by a backward pass.
  void register_post_accumulate_grad_hook(PostAccumulateGradHook hook) const;
  Tensor detach() const;  // shares storage, no grad history
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false) const;
  AutogradMeta& autograd_meta() const;  // creates it on first use

  // --- views (share storage; differentiable) ---
  Tensor view(const Shape& shape) const;     // contiguous only; one dim may be -1
  Tensor reshape(const Shape& shape) const;  // view when possible, else copy
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const { return transpose(0, 1); }
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor expand(const Shape& shape) const;
  Tensor squeeze(int64_t dim) const;
  Tensor squeeze() const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor contiguous() const;

  // --- conversion and copies ---
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor to(Device device, DType dtype) const;
  Tensor clone() const;
  // In place: copies src (broadcast, cast, across devices) into this tensor.
  Tensor& copy_(const Tensor& src);
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }

  // --- operators and common ops (free functions in core/ops.h) ---
  Tensor operator-() const;
  Tensor sum(const std::vector<int64_t>& dims = {}, bool keepdim = false) const;
  Tensor mean(const std::vector<int64_t>& dims = {}, bool keepdim = false) const;

  std::string str() const;  // readable printing, as PyTorch's repr

 private:
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// --- factories ---
Tensor empty(const Shape& shape, TensorOptions opts = {});
Tensor zeros(const Shape& shape, TensorOptions opts = {});
Tensor ones(const Shape& shape, TensorOptions opts = {});
Tensor full(const Shape& shape, double value, TensorOptions opts = {});
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor empty_like(const Tensor& t);
Tensor full_like(const Tensor& t, double value);
Tensor arange(double start, double end, double step = 1.0, TensorOptions opts = {});
Tensor arange(int64_t n, TensorOptions opts = {DType::i64});
// Random factories draw from the device's global Philox generator (core/random.h).
Tensor rand(const Shape& shape, TensorOptions opts = {});   // U[0, 1)
Tensor randn(const Shape& shape, TensorOptions opts = {});  // N(0, 1)
Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions opts = {DType::i64});
// A tensor holding a copy of host values.
template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opts = {});
Tensor scalar_tensor(double value, TensorOptions opts = {});

// Wraps the view of `storage` described by shape/strides/offset.
Tensor make_view(const std::shared_ptr<Storage>& storage, const Shape& shape, const Shape& strides,
                 int64_t offset, DType dtype);

}  // namespace lowbit
