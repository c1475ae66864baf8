// Layout helpers of the fused machinery (the launchers themselves are templates in fused.h and
// fused.cuh).
#include "quant/fused.h"

namespace lowbit::quant {

ChannelLayout channel_layout(const Shape& shape, int64_t axis, int64_t channels, const char* op) {
  ChannelLayout l;
  const int64_t n = numel_of(shape);
  LOWBIT_CHECK(channels >= 1, op, ": parameters must have at least one element, got ", channels);
  if (channels == 1) {
    l.inner = n;
    return l;
  }
  const int64_t dim = int64_t(shape.size());
  const int64_t a = checked_axis(shape, axis, op);
  LOWBIT_CHECK(shape[size_t(a)] == channels, op, ": per-channel parameters have ", channels,
               " elements but the input has ", shape[size_t(a)], " along axis ", a, " (shape ",
               shape, ")");
  l.channels = channels;
  for (int64_t d = 0; d < a; ++d) l.outer *= shape[size_t(d)];
  for (int64_t d = a + 1; d < dim; ++d) l.inner *= shape[size_t(d)];
  return l;
}

int64_t checked_axis(const Shape& shape, int64_t axis, const char* op) {
  const int64_t dim = int64_t(shape.size());
  LOWBIT_CHECK(axis >= -dim && axis < dim, op, ": axis ", axis, " is out of range for shape ",
               shape, " (", dim, " dims)");
  return axis < 0 ? axis + dim : axis;
}

Shape layout_shape(const ChannelLayout& l) { return {l.outer, l.channels, l.inner}; }

}  // namespace lowbit::quant
