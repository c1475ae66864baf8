// Readable printing in PyTorch's style: nested brackets, 4 decimals for floats, dims longer
// than 6 summarised with "..." once the tensor has more than 1000 elements.
#include <cmath>
#include <iomanip>
#include <sstream>

#include "core/tensor.h"

namespace lowbit {

namespace {

void print_rec(std::ostringstream& os, const std::vector<double>& v, const Shape& shape,
               const Shape& strides, size_t dim, int64_t base, bool floating, bool summarize,
               int indent) {
  if (dim == shape.size()) {
    const double x = v[size_t(base)];
    if (floating) {
      if (std::isnan(x))
        os << "nan";
      else if (std::isinf(x))
        os << (x > 0 ? "inf" : "-inf");
      else
        os << std::fixed << std::setprecision(4) << x;
    } else {
      os << int64_t(x);
    }
    return;
  }
  os << "[";
  const int64_t n = shape[dim];
  const bool cut = summarize && n > 6;
  for (int64_t i = 0; i < n; ++i) {
    if (cut && i == 3) {
      os << (dim + 1 == shape.size() ? "..., " : "...,\n" + std::string(size_t(indent + 1), ' '));
      i = n - 3;
    }
    print_rec(os, v, shape, strides, dim + 1, base + i * strides[dim], floating, summarize,
              indent + 1);
    if (i + 1 < n) {
      os << ",";
      if (dim + 1 == shape.size())
        os << " ";
      else
        os << std::string(shape.size() - dim - 1, '\n') << std::string(size_t(indent + 1), ' ');
    }
  }
  os << "]";
}

}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "tensor(undefined)";
  std::vector<double> v = to_vector<double>();
  std::ostringstream os;
  os << "tensor(";
  print_rec(os, v, shape(), contiguous_strides(shape()), 0, 0, is_floating(dtype()), numel() > 1000,
            7);
  os << ", shape=" << shape() << ", dtype=" << dtype() << ", device=" << device();
  if (requires_grad()) os << ", requires_grad=true";
  os << ")";
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) { return os << t.str(); }

}  // namespace lowbit
