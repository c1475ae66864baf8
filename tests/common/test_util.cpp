#include "tests/common/test_util.h"

#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace lowbit::testing {

std::vector<double> to_doubles(const Tensor& t) { return t.to_vector<double>(); }

Tensor tensor_of(const std::vector<double>& values, const Shape& shape, DType dtype) {
  return from_vector(values, shape, TensorOptions(dtype));
}

std::vector<int64_t> unravel(int64_t linear, const Shape& shape) {
  std::vector<int64_t> idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    idx[d] = linear % shape[d];
    linear /= shape[d];
  }
  return idx;
}

int64_t ravel(const std::vector<int64_t>& idx, const Shape& shape) {
  int64_t l = 0;
  for (size_t d = 0; d < shape.size(); ++d) l = l * shape[d] + idx[d];
  return l;
}

Tensor non_contiguous_copy(const Tensor& t) {
  if (t.dim() < 2) {
    // Every other element of a buffer twice as long.
    Tensor big = zeros({std::max<int64_t>(t.numel(), 1) * 2}, TensorOptions(t.dtype(), t.device()));
    Tensor v = big.slice(0, 0, 2 * t.numel(), 2).reshape(t.shape());
    v.copy_(t);
    return v;
  }
  Tensor tt = t.detach().transpose(-1, -2).contiguous();  // stored transposed
  return tt.transpose(-1, -2);
}

::testing::AssertionResult tensor_near(const char* a_expr, const char* b_expr, const char*,
                                       const char*, const Tensor& a, const Tensor& b, double rtol,
                                       double atol) {
  if (a.shape() != b.shape()) {
    return ::testing::AssertionFailure()
           << a_expr << " has shape " << shape_str(a.shape()) << " but " << b_expr << " has shape "
           << shape_str(b.shape());
  }
  std::vector<double> x = to_doubles(a), y = to_doubles(b);
  int64_t worst = -1, bad = 0;
  double worst_excess = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const bool both_nan = std::isnan(x[i]) && std::isnan(y[i]);
    const bool same_inf = std::isinf(x[i]) && x[i] == y[i];
    if (both_nan || same_inf) continue;
    const double err = std::fabs(x[i] - y[i]);
    const double tol = atol + rtol * std::fabs(y[i]);
    if (!(err <= tol)) {
      ++bad;
      const double excess = std::isnan(err) ? INFINITY : err - tol;
      if (worst < 0 || excess > worst_excess) {
        worst = int64_t(i);
        worst_excess = excess;
      }
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  std::ostringstream idx;
  auto m = unravel(worst, a.shape());
  idx << "[";
  for (size_t i = 0; i < m.size(); ++i) idx << (i ? ", " : "") << m[i];
  idx << "]";
  return ::testing::AssertionFailure()
         << a_expr << " and " << b_expr << " differ at " << bad << " of " << x.size()
         << " elements (rtol " << rtol << ", atol " << atol << "); worst at " << idx.str() << ": "
         << x[size_t(worst)] << " vs " << y[size_t(worst)] << " (|diff| "
         << std::fabs(x[size_t(worst)] - y[size_t(worst)]) << ")";
}

std::pair<int, std::string> run_command(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return {-1, "popen failed"};
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = ::pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace lowbit::testing
