// Tensor metadata, storage, views, factories, copies and the Tensor methods of autograd.
// Views share storage and record their backward like any op; copies go through copy_stub on
// one device and DeviceBackend::copy between devices.
#include "core/tensor.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>

#include "core/autograd.h"
#include "core/backend.h"
#include "core/caching_allocator.h"
#include "core/kernels.h"
#include "core/ops.h"
#include "core/random.h"

namespace lowbit {

using autograd::SavedTensor;

std::ostream& operator<<(std::ostream& os, const Shape& s) {
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  return os << "]";
}

std::string shape_str(const Shape& s) { return str_cat(s); }

int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= std::max<int64_t>(s[i], 1);
  }
  return st;
}

// ---------------------------------------------------------------------------- Storage

Storage::Storage(int64_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  LOWBIT_CHECK(nbytes >= 0, "negative allocation size ", nbytes);
  if (nbytes == 0) return;
  if (device.is_cpu()) {
    if (size_t(nbytes) >= core::kCpuCacheMin && core::cpu_cache_enabled()) {
      data_ = core::cpu_allocator().allocate(size_t(nbytes), nullptr);
      return;
    }
    const size_t rounded = (size_t(nbytes) + 63) / 64 * 64;
    data_ = std::aligned_alloc(64, rounded);
    LOWBIT_CHECK(data_ != nullptr, "out of host memory allocating ", nbytes, " bytes");
  } else {
    data_ = core::cuda_backend(device.index).allocate(device.index, size_t(nbytes));
  }
}

Storage::~Storage() {
  if (!data_) return;
  if (device_.is_cpu()) {
    if (size_t(nbytes_) >= core::kCpuCacheMin && core::cpu_cache_enabled()) {
      core::cpu_deallocate(data_);
    } else {
      std::free(data_);
    }
  } else if (auto* b = core::cuda_backend_or_null()) {
    b->deallocate(device_.index, data_);
  }
}

// ---------------------------------------------------------------------------- metadata

namespace {

const TensorImpl& checked(const std::shared_ptr<TensorImpl>& impl) {
  LOWBIT_CHECK(impl != nullptr, "operation on an undefined tensor");
  return *impl;
}

int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  const int64_t n = std::max<int64_t>(ndim, 1);
  LOWBIT_CHECK(dim >= -n && dim < n, op, ": dim ", dim, " out of range for a tensor with ", ndim,
               " dims");
  return dim < 0 ? dim + n : dim;
}

}  // namespace

const Shape& Tensor::shape() const { return checked(impl_).shape; }
const Shape& Tensor::strides() const { return checked(impl_).strides; }
int64_t Tensor::dim() const { return int64_t(shape().size()); }
int64_t Tensor::size(int64_t d) const { return shape()[size_t(wrap_dim(d, dim(), "size"))]; }
int64_t Tensor::stride(int64_t d) const { return strides()[size_t(wrap_dim(d, dim(), "stride"))]; }
int64_t Tensor::numel() const { return numel_of(shape()); }
int64_t Tensor::offset() const { return checked(impl_).offset; }
DType Tensor::dtype() const { return checked(impl_).dtype; }
Device Tensor::device() const { return checked(impl_).storage->device(); }
const std::shared_ptr<Storage>& Tensor::storage() const { return checked(impl_).storage; }

void* Tensor::raw_data() const {
  const TensorImpl& t = checked(impl_);
  return static_cast<char*>(t.storage->data()) + t.offset * dtype_size(t.dtype);
}

bool Tensor::is_contiguous() const {
  const TensorImpl& t = checked(impl_);
  if (numel_of(t.shape) == 0) return true;
  int64_t expected = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] == 1) continue;
    if (t.strides[i] != expected) return false;
    expected *= t.shape[i];
  }
  return true;
}

double Tensor::item() const {
  LOWBIT_CHECK(numel() == 1, "item() wants a tensor with one element, got shape ", shape());
  Tensor h = to(Device::cpu(), DType::f64).contiguous();
  return *static_cast<const double*>(h.raw_data());
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor h = to(Device::cpu(), dtype_of<T>).contiguous();
  const T* p = static_cast<const T*>(h.raw_data());
  return std::vector<T>(p, p + h.numel());
}
template std::vector<float> Tensor::to_vector<float>() const;
template std::vector<double> Tensor::to_vector<double>() const;
template std::vector<int32_t> Tensor::to_vector<int32_t>() const;
template std::vector<int64_t> Tensor::to_vector<int64_t>() const;
template std::vector<uint8_t> Tensor::to_vector<uint8_t>() const;
template std::vector<int8_t> Tensor::to_vector<int8_t>() const;

Tensor make_view(const std::shared_ptr<Storage>& storage, const Shape& shape, const Shape& strides,
                 int64_t offset, DType dtype) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = storage;
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

// ---------------------------------------------------------------------------- autograd

AutogradMeta& Tensor::autograd_meta() const {
  TensorImpl& t = const_cast<TensorImpl&>(checked(impl_));
  if (!t.autograd) t.autograd = std::make_unique<AutogradMeta>();
  return *t.autograd;
}

bool Tensor::requires_grad() const {
  const TensorImpl& t = checked(impl_);
  return t.autograd && t.autograd->requires_grad;
}

Tensor& Tensor::requires_grad_(bool r) {
  LOWBIT_CHECK(!r || is_floating(dtype()), "requires_grad on a tensor of dtype ", dtype(),
               ": only floating tensors can require gradients");
  LOWBIT_CHECK(is_leaf(), "requires_grad_ can only change leaf tensors; use detach() first");
  autograd_meta().requires_grad = r;
  return *this;
}

Tensor Tensor::grad() const {
  const TensorImpl& t = checked(impl_);
  if (!t.autograd || !t.autograd->grad) return Tensor();
  return *t.autograd->grad;
}

void Tensor::set_grad(const Tensor& g) const {
  if (g.defined()) {
    LOWBIT_CHECK(g.shape() == shape(), "set_grad: gradient shape ", g.shape(),
                 " does not match tensor shape ", shape());
  }
  autograd_meta().grad = g.defined() ? std::make_shared<Tensor>(g) : nullptr;
}

void Tensor::zero_grad() const {
  const TensorImpl& t = checked(impl_);
  if (t.autograd) t.autograd->grad.reset();
}

const std::shared_ptr<autograd::Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<autograd::Node> kNone;
  const TensorImpl& t = checked(impl_);
  return t.autograd ? t.autograd->grad_fn : kNone;
}

bool Tensor::is_leaf() const { return grad_fn() == nullptr; }

void Tensor::register_hook(GradHook hook) const {
  LOWBIT_CHECK(requires_grad(), "register_hook on a tensor that does not require grad");
  if (grad_fn()) {
    grad_fn()->add_output_hook(autograd_meta().output_nr, std::move(hook));
  } else {
    autograd_meta().hooks.push_back(std::move(hook));
  }
}

void Tensor::register_post_accumulate_grad_hook(PostAccumulateGradHook hook) const {
  LOWBIT_CHECK(requires_grad() && is_leaf(),
               "register_post_accumulate_grad_hook wants a leaf that requires grad");
  autograd_meta().post_accumulate_hooks.push_back(std::move(hook));
}

void Tensor::retain_grad() const {
  LOWBIT_CHECK(requires_grad(), "retain_grad on a tensor that does not require grad");
  if (is_leaf()) return;  // leaves keep their grad anyway
  AutogradMeta& meta = autograd_meta();
  if (meta.retains_grad) return;
  meta.retains_grad = true;
  std::weak_ptr<TensorImpl> weak = impl_;
  register_hook([weak](const Tensor& g) {
    if (auto impl = weak.lock()) {
      Tensor self(impl);
      Tensor old = self.grad();
      self.autograd_meta().grad = std::make_shared<Tensor>(old.defined() ? add(old, g) : g.clone());
    }
    return Tensor();
  });
}

Tensor Tensor::detach() const {
  const TensorImpl& t = checked(impl_);
  return make_view(t.storage, t.shape, t.strides, t.offset, t.dtype);
}

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  autograd::run_backward({*this}, {gradient}, retain_graph);
}

// ---------------------------------------------------------------------------- views

namespace {

// Infers one -1 in `shape` from numel.
Shape infer_shape(Shape shape, int64_t numel, const char* op) {
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      LOWBIT_CHECK(infer < 0, op, ": only one dim can be -1, got ", shape);
      infer = int64_t(i);
    } else {
      LOWBIT_CHECK(shape[i] >= 0, op, ": negative size in ", shape);
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    LOWBIT_CHECK(known > 0 && numel % known == 0, op, ": shape ", shape, " is invalid for ", numel,
                 " elements");
    shape[size_t(infer)] = numel / known;
  }
  LOWBIT_CHECK(numel_of(shape) == numel, op, ": shape ", shape, " is invalid for ", numel,
               " elements");
  return shape;
}

// Strides for viewing a (possibly strided) tensor as `shape` without copying, if possible
// (PyTorch's computeStride). Empty result: needs a copy.
bool view_strides(const Shape& old_shape, const Shape& old_strides, const Shape& shape,
                  Shape* out) {
  if (old_shape.empty()) {
    *out = Shape(shape.size(), 1);
    return true;
  }
  if (numel_of(old_shape) == 0) {
    *out = contiguous_strides(shape);
    return true;
  }
  Shape strides(shape.size(), 0);
  int64_t view_d = int64_t(shape.size()) - 1;
  int64_t chunk_base_stride = old_strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = int64_t(old_shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= old_shape[size_t(d)];
    if (d == 0 || (old_shape[size_t(d - 1)] != 1 &&
                   old_strides[size_t(d - 1)] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || shape[size_t(view_d)] == 1)) {
        strides[size_t(view_d)] = view_numel * chunk_base_stride;
        view_numel *= shape[size_t(view_d)];
        view_d--;
      }
      if (view_numel != tensor_numel) return false;
      if (d > 0) {
        chunk_base_stride = old_strides[size_t(d - 1)];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return false;
  *out = strides;
  return true;
}

Tensor with_view_grad(const char* name, const Tensor& self, const Tensor& out,
                      std::function<Tensor(const Tensor&)> grad_fn) {
  autograd::record(name, {self}, out, [fn = std::move(grad_fn)](const Tensor& g) {
    return std::vector<Tensor>{fn(g)};
  });
  return out;
}

}  // namespace

Tensor Tensor::view(const Shape& new_shape) const {
  Shape shp = infer_shape(new_shape, numel(), "view");
  Shape st;
  LOWBIT_CHECK(view_strides(shape(), strides(), shp, &st), "view: cannot view a tensor of shape ",
               shape(), " and strides ", strides(), " as ", shp, " without copying; use reshape()");
  Tensor out = make_view(storage(), shp, st, offset(), dtype());
  Shape in_shape = shape();
  return with_view_grad("view", *this, out,
                        [in_shape](const Tensor& g) { return g.reshape(in_shape); });
}

Tensor Tensor::reshape(const Shape& new_shape) const {
  Shape shp = infer_shape(new_shape, numel(), "reshape");
  Shape st;
  if (view_strides(shape(), strides(), shp, &st)) return view(shp);
  return contiguous().view(shp);
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  const int64_t n = dim();
  LOWBIT_CHECK(int64_t(dims.size()) == n, "permute: got ", dims.size(), " dims for a tensor with ",
               n);
  Shape shp(static_cast<size_t>(n)), st(static_cast<size_t>(n));
  std::vector<int64_t> inverse(static_cast<size_t>(n), -1);
  for (int64_t i = 0; i < n; ++i) {
    int64_t d = wrap_dim(dims[size_t(i)], n, "permute");
    LOWBIT_CHECK(inverse[size_t(d)] < 0, "permute: dim ", d, " repeated");
    inverse[size_t(d)] = i;
    shp[size_t(i)] = shape()[size_t(d)];
    st[size_t(i)] = strides()[size_t(d)];
  }
  Tensor out = make_view(storage(), shp, st, offset(), dtype());
  return with_view_grad("permute", *this, out,
                        [inverse](const Tensor& g) { return g.permute(inverse); });
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  std::vector<int64_t> dims(static_cast<size_t>(dim()));
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[size_t(wrap_dim(d0, dim(), "transpose"))],
            dims[size_t(wrap_dim(d1, dim(), "transpose"))]);
  return permute(dims);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim(d, dim(), "slice");
  LOWBIT_CHECK(step > 0, "slice: step must be positive, got ", step);
  const int64_t len = shape()[size_t(d)];
  if (start < 0) start += len;
  if (end < 0) end += len;
  start = std::clamp<int64_t>(start, 0, len);
  end = std::clamp<int64_t>(end, start, len);
  Shape shp = shape(), st = strides();
  shp[size_t(d)] = (end - start + step - 1) / step;
  st[size_t(d)] *= step;
  Tensor out = make_view(storage(), shp, st, offset() + start * strides()[size_t(d)], dtype());
  Shape in_shape = shape();
  return with_view_grad("slice", *this, out, [in_shape, d, start, end, step](const Tensor& g) {
    Tensor full = zeros(in_shape, TensorOptions(g.dtype(), g.device()));
    full.slice(d, start, end, step).copy_(g);
    return full;
  });
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = wrap_dim(d, dim(), "narrow");
  LOWBIT_CHECK(start >= 0 && length >= 0 && start + length <= shape()[size_t(d)], "narrow: [",
               start, ", ", start + length, ") out of range for dim ", d, " of size ",
               shape()[size_t(d)]);
  return slice(d, start, start + length);
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  const int64_t len = shape()[size_t(d)];
  LOWBIT_CHECK(index >= -len && index < len, "select: index ", index, " out of range for size ",
               len);
  if (index < 0) index += len;
  return slice(d, index, index + 1).squeeze(d);
}

Tensor Tensor::expand(const Shape& new_shape) const {
  const int64_t n = int64_t(new_shape.size());
  LOWBIT_CHECK(n >= dim(), "expand: cannot expand ", shape(), " to fewer dims ", new_shape);
  Shape shp(static_cast<size_t>(n)), st(static_cast<size_t>(n));
  for (int64_t i = n - 1, j = dim() - 1; i >= 0; --i, --j) {
    int64_t want = new_shape[size_t(i)];
    if (j >= 0) {
      int64_t have = shape()[size_t(j)];
      if (want == -1) want = have;
      LOWBIT_CHECK(have == want || have == 1, "expand: cannot expand ", shape(), " to ", new_shape,
                   " (dim ", i, ": ", have, " vs ", want, ")");
      shp[size_t(i)] = want;
      st[size_t(i)] = have == want ? strides()[size_t(j)] : 0;
    } else {
      LOWBIT_CHECK(want >= 0, "expand: size -1 not allowed for a new leading dim in ", new_shape);
      shp[size_t(i)] = want;
      st[size_t(i)] = 0;
    }
  }
  Tensor out = make_view(storage(), shp, st, offset(), dtype());
  Shape in_shape = shape();
  return with_view_grad("expand", *this, out,
                        [in_shape](const Tensor& g) { return sum_to(g, in_shape); });
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze");
  if (shape()[size_t(d)] != 1) return *this;
  Shape shp = shape();
  shp.erase(shp.begin() + d);
  return view(shp);
}

Tensor Tensor::squeeze() const {
  Shape shp;
  for (int64_t s : shape()) {
    if (s != 1) shp.push_back(s);
  }
  return shp.size() == shape().size() ? *this : view(shp);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape shp = shape();
  shp.insert(shp.begin() + d, 1);
  return view(shp);
}

Tensor Tensor::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  start_dim = wrap_dim(start_dim, dim(), "flatten");
  end_dim = wrap_dim(end_dim, dim(), "flatten");
  LOWBIT_CHECK(start_dim <= end_dim, "flatten: start_dim ", start_dim, " > end_dim ", end_dim);
  Shape shp(shape().begin(), shape().begin() + start_dim);
  int64_t m = 1;
  for (int64_t i = start_dim; i <= end_dim; ++i) m *= shape()[size_t(i)];
  shp.push_back(m);
  shp.insert(shp.end(), shape().begin() + end_dim + 1, shape().end());
  return reshape(shp);
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

// ---------------------------------------------------------------------------- copies

namespace {

// Copies src into dst (same shape after broadcast), any devices and dtypes. Not recorded.
void copy_impl(const Tensor& dst, const Tensor& src) {
  Tensor s = src.detach().expand(dst.shape());
  if (dst.numel() == 0) return;
  if (s.device() == dst.device()) {
    core::copy_stub(dst.device(), dst, s);
    return;
  }
  // Across devices: make a contiguous buffer of dst's dtype on the source device, move the bytes,
  // then copy into dst's layout on its device.
  Tensor packed = s;
  if (packed.dtype() != dst.dtype() || !packed.is_contiguous()) {
    packed = empty(dst.shape(), TensorOptions(dst.dtype(), s.device()));
    core::copy_stub(s.device(), packed, s);
  }
  Tensor landing =
      dst.is_contiguous() ? dst : empty(dst.shape(), TensorOptions(dst.dtype(), dst.device()));
  const Device remote = dst.device().is_cuda() ? dst.device() : packed.device();
  core::cuda_backend(remote.index)
      .copy(landing.raw_data(), landing.device(), packed.raw_data(), packed.device(),
            size_t(packed.nbytes()));
  if (!landing.same(dst)) core::copy_stub(dst.device(), dst, landing);
}

void check_inplace(const Tensor& self, const char* op) {
  LOWBIT_CHECK(!(autograd::grad_enabled() && self.requires_grad()), op,
               ": in-place modification of a tensor that requires grad; do it under NoGradGuard "
               "or on a detached tensor");
}

}  // namespace

Tensor& Tensor::copy_(const Tensor& src) {
  check_inplace(*this, "copy_");
  copy_impl(*this, src);
  storage()->bump_version();
  return *this;
}

Tensor& Tensor::fill_(double value) {
  check_inplace(*this, "fill_");
  if (numel() > 0) core::fill_stub(device(), *this, value);
  storage()->bump_version();
  return *this;
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape(), TensorOptions(dtype(), device()));
  copy_impl(out, *this);
  autograd::record("clone", {*this}, out, [](const Tensor& g) { return std::vector<Tensor>{g}; });
  return out;
}

Tensor Tensor::to(Device d, DType t) const {
  if (d == device() && t == dtype()) return *this;
  Tensor out = empty(shape(), TensorOptions(t, d));
  copy_impl(out, *this);
  if (is_floating(t)) {
    const Device src_dev = device();
    const DType src_t = dtype();
    autograd::record("to", {*this}, out, [src_dev, src_t](const Tensor& g) {
      return std::vector<Tensor>{g.to(src_dev, src_t)};
    });
  }
  return out;
}
Tensor Tensor::to(Device d) const { return to(d, dtype()); }
Tensor Tensor::to(DType t) const { return to(device(), t); }

Tensor Tensor::operator-() const { return neg(*this); }
Tensor Tensor::sum(const std::vector<int64_t>& dims, bool keepdim) const {
  return lowbit::sum(*this, dims, keepdim);
}
Tensor Tensor::mean(const std::vector<int64_t>& dims, bool keepdim) const {
  return lowbit::mean(*this, dims, keepdim);
}

// ---------------------------------------------------------------------------- factories

Tensor empty(const Shape& shape, TensorOptions opts) {
  for (int64_t s : shape) LOWBIT_CHECK(s >= 0, "negative size in shape ", shape);
  if (opts.device.is_cuda()) core::cuda_backend(opts.device.index);  // clear error early
  auto storage = std::make_shared<Storage>(numel_of(shape) * dtype_size(opts.dtype), opts.device);
  Tensor t = make_view(storage, shape, contiguous_strides(shape), 0, opts.dtype);
  if (opts.requires_grad) t.requires_grad_(true);
  return t;
}

Tensor full(const Shape& shape, double value, TensorOptions opts) {
  const bool rg = opts.requires_grad;
  opts.requires_grad = false;
  Tensor t = empty(shape, opts);
  t.fill_(value);
  if (rg) t.requires_grad_(true);
  return t;
}
Tensor zeros(const Shape& shape, TensorOptions opts) { return full(shape, 0.0, opts); }
Tensor ones(const Shape& shape, TensorOptions opts) { return full(shape, 1.0, opts); }
Tensor empty_like(const Tensor& t) {
  return empty(t.shape(), TensorOptions(t.dtype(), t.device()));
}
Tensor zeros_like(const Tensor& t) {
  return zeros(t.shape(), TensorOptions(t.dtype(), t.device()));
}
Tensor ones_like(const Tensor& t) { return ones(t.shape(), TensorOptions(t.dtype(), t.device())); }
Tensor full_like(const Tensor& t, double v) {
  return full(t.shape(), v, TensorOptions(t.dtype(), t.device()));
}

Tensor arange(double start, double end, double step, TensorOptions opts) {
  LOWBIT_CHECK(step != 0.0, "arange: step must be nonzero");
  const double span = (end - start) / step;
  const int64_t n = span > 0 ? int64_t(std::ceil(span - 1e-12)) : 0;
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = start + double(i) * step;
  TensorOptions host = opts;
  host.device = Device::cpu();
  host.dtype = DType::f64;
  host.requires_grad = false;
  Tensor t = from_vector(v, {n}, host);
  return t.to(opts.device, opts.dtype);
}
Tensor arange(int64_t n, TensorOptions opts) { return arange(0.0, double(n), 1.0, opts); }

template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, TensorOptions opts) {
  LOWBIT_CHECK(int64_t(values.size()) == numel_of(shape), "from_vector: ", values.size(),
               " values for shape ", shape);
  Tensor host = empty(shape, TensorOptions(dtype_of<T>, Device::cpu()));
  if (!values.empty()) std::memcpy(host.raw_data(), values.data(), values.size() * sizeof(T));
  Tensor out = host.to(opts.device, opts.dtype);
  if (opts.requires_grad) out.requires_grad_(true);
  return out;
}
template Tensor from_vector<float>(const std::vector<float>&, const Shape&, TensorOptions);
template Tensor from_vector<double>(const std::vector<double>&, const Shape&, TensorOptions);
template Tensor from_vector<int32_t>(const std::vector<int32_t>&, const Shape&, TensorOptions);
template Tensor from_vector<int64_t>(const std::vector<int64_t>&, const Shape&, TensorOptions);
template Tensor from_vector<uint8_t>(const std::vector<uint8_t>&, const Shape&, TensorOptions);
template Tensor from_vector<int8_t>(const std::vector<int8_t>&, const Shape&, TensorOptions);

Tensor scalar_tensor(double value, TensorOptions opts) { return full({}, value, opts); }

namespace {
Tensor random_tensor(const Shape& shape, TensorOptions opts, core::RandomKind kind, double a,
                     double b) {
  const bool rg = opts.requires_grad;
  opts.requires_grad = false;
  Tensor t = empty(shape, opts);
  Generator& gen = default_generator(opts.device);
  core::RandomValue rv{gen.seed(), gen.next_offset(), kind, a, b};
  if (t.numel() > 0) core::random_stub(opts.device, t, rv);
  if (rg) t.requires_grad_(true);
  return t;
}
}  // namespace

Tensor rand(const Shape& shape, TensorOptions opts) {
  LOWBIT_CHECK(is_floating(opts.dtype), "rand: dtype must be floating, got ", opts.dtype);
  return random_tensor(shape, opts, core::RandomKind::uniform, 0.0, 1.0);
}
Tensor randn(const Shape& shape, TensorOptions opts) {
  LOWBIT_CHECK(is_floating(opts.dtype), "randn: dtype must be floating, got ", opts.dtype);
  return random_tensor(shape, opts, core::RandomKind::normal, 0.0, 1.0);
}
Tensor randint(int64_t low, int64_t high, const Shape& shape, TensorOptions opts) {
  LOWBIT_CHECK(high > low, "randint: empty range [", low, ", ", high, ")");
  return random_tensor(shape, opts, core::RandomKind::randint, double(low), double(high));
}

}  // namespace lowbit
