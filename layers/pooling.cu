// Pooling on CUDA: the kernels of pooling_kernels.h launched over a grid-stride loop, registered
// on the stubs of pooling.h.
#include "core/dtype.h"
#include "cuda/launch.cuh"
#include "layers/pooling_kernels.h"

namespace lowbit::layers::detail {

namespace {

template <typename K>
void launch(const Tensor& ref, int64_t n, const K& k) {
  const int dev = ref.device().index;
  cuda::DeviceGuard guard(dev);
  cuda::launch_elementwise(
      n, [k] __device__(int64_t i) { k(i); }, cuda::stream_of(dev));
}

void max_pool_forward_cuda(const PoolGeom& g, const Tensor& x, const Tensor& y,
                           const Tensor& argmax) {
  LOWBIT_DISPATCH_FLOATING(x.dtype(), "max_pool2d (cuda)", [&] {
    launch(x, y.numel(),
           MaxPoolForward<scalar_t>{g, static_cast<const scalar_t*>(x.raw_data()),
                                    static_cast<scalar_t*>(y.raw_data()),
                                    static_cast<int64_t*>(argmax.raw_data())});
  });
}
void max_pool_backward_cuda(const PoolGeom& g, const Tensor& dy, const Tensor& argmax,
                            const Tensor& dx) {
  LOWBIT_DISPATCH_FLOATING(dy.dtype(), "max_pool2d backward (cuda)", [&] {
    launch(dy, dx.numel(),
           MaxPoolBackward<scalar_t>{g, static_cast<const scalar_t*>(dy.raw_data()),
                                     static_cast<const int64_t*>(argmax.raw_data()),
                                     static_cast<scalar_t*>(dx.raw_data())});
  });
}
void avg_pool_forward_cuda(const PoolGeom& g, const Tensor& x, const Tensor& y) {
  LOWBIT_DISPATCH_FLOATING(x.dtype(), "avg_pool2d (cuda)", [&] {
    launch(x, y.numel(),
           AvgPoolForward<scalar_t>{g, static_cast<const scalar_t*>(x.raw_data()),
                                    static_cast<scalar_t*>(y.raw_data())});
  });
}
void avg_pool_backward_cuda(const PoolGeom& g, const Tensor& dy, const Tensor& dx) {
  LOWBIT_DISPATCH_FLOATING(dy.dtype(), "avg_pool2d backward (cuda)", [&] {
    launch(dy, dx.numel(),
           AvgPoolBackward<scalar_t>{g, static_cast<const scalar_t*>(dy.raw_data()),
                                     static_cast<scalar_t*>(dx.raw_data())});
  });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(max_pool_forward_stub, cuda, max_pool_forward_cuda);
LOWBIT_REGISTER_KERNEL(max_pool_backward_stub, cuda, max_pool_backward_cuda);
LOWBIT_REGISTER_KERNEL(avg_pool_forward_stub, cuda, avg_pool_forward_cuda);
LOWBIT_REGISTER_KERNEL(avg_pool_backward_stub, cuda, avg_pool_backward_cuda);

}  // namespace lowbit::layers::detail
