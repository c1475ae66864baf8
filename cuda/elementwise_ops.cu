// CUDA kernels of the elementwise stubs (core/kernels.h): unary, binary and comparisons, where,
// copy/cast and fill. The math is core/math.h's functors, the same the CPU loops in
// core/elementwise.cpp call, with the same load -> opmath_t -> functor -> store conversions; only
// the launch differs. Op tables are built from core/math.h's X-macro lists, indexed by the op
// enum, so adding an op there adds it here. where, same-dtype copies and fill move bits and are
// instantiated per element size, not per dtype, to keep the instantiation count (and nvcc time)
// down.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <iterator>
#include <type_traits>

#include "core/kernels.h"
#include "core/offset_calc.h"
#include "cuda/check.h"
#include "cuda/launch.cuh"
#include "cuda/runtime.h"

namespace lowbit::cuda {

namespace {

using core::OffsetCalc;

template <typename T>
constexpr bool kIsFloating =
    std::is_floating_point_v<T> || std::is_same_v<T, bf16> || std::is_same_v<T, f16>;

// ------------------------------------------------------------------------------------ unary

#define LOWBIT_NAME_ENTRY(name, F) #name,
constexpr const char* kUnaryNames[] = {LOWBIT_UNARY_OPS_ALL(LOWBIT_NAME_ENTRY)
                                           LOWBIT_UNARY_OPS_FLOAT(LOWBIT_NAME_ENTRY)};
constexpr const char* kBinaryNames[] = {LOWBIT_BINARY_OPS(LOWBIT_NAME_ENTRY)
                                            LOWBIT_COMPARE_OPS(LOWBIT_NAME_ENTRY)};
#undef LOWBIT_NAME_ENTRY

template <typename Op, typename T>
void unary_typed_cuda(const Tensor& out, const Tensor& in, const core::UnaryParams& p,
                      cudaStream_t s) {
  using acc_t = opmath_t<T>;
  const Tensor* ts[2] = {&out, &in};
  const OffsetCalc<2> calc = core::offset_calc_for<2>(ts);
  T* o = static_cast<T*>(out.raw_data());
  const T* x = static_cast<const T*>(in.raw_data());
  const core::UnaryParams params = p;
  launch_elementwise(
      out.numel(),
      [=] __device__(int64_t i) {
        int64_t off[2];
        calc.get(i, off);
        o[off[0]] = T(Op()(acc_t(x[off[1]]), params));
      },
      s);
}

using UnaryLauncher = void (*)(const Tensor&, const Tensor&, const core::UnaryParams&,
                               cudaStream_t);

template <typename Op, typename T, bool kFloatOnly>
constexpr UnaryLauncher unary_entry() {
  if constexpr (kFloatOnly && !kIsFloating<T>) {
    return nullptr;
  } else {
    return &unary_typed_cuda<Op, T>;
  }
}

template <typename T>
UnaryLauncher unary_launcher(core::UnaryOp op) {
#define LOWBIT_ALL_ENTRY(name, F) unary_entry<core::F, T, false>(),
#define LOWBIT_FLOAT_ENTRY(name, F) unary_entry<core::F, T, true>(),
  static constexpr UnaryLauncher kTable[] = {LOWBIT_UNARY_OPS_ALL(LOWBIT_ALL_ENTRY)
                                                 LOWBIT_UNARY_OPS_FLOAT(LOWBIT_FLOAT_ENTRY)};
#undef LOWBIT_ALL_ENTRY
#undef LOWBIT_FLOAT_ENTRY
  static_assert(std::size(kTable) == size_t(core::UnaryOp::kCount), "unary table out of sync");
  return kTable[int(op)];
}

void unary_cuda(core::UnaryOp op, const Tensor& out, const Tensor& in, const core::UnaryParams& p) {
  LOWBIT_CHECK(int(op) >= 0 && int(op) < int(core::UnaryOp::kCount), "unknown unary op ", int(op));
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t s = stream_of(device);
  LOWBIT_DISPATCH_ALL(out.dtype(), kUnaryNames[int(op)], [&] {
    UnaryLauncher f = unary_launcher<scalar_t>(op);
    LOWBIT_CHECK(f != nullptr, kUnaryNames[int(op)], ": dtype ", out.dtype(),
                 " is not supported (floating dtypes only)");
    f(out, in, p, s);
  });
}

// ----------------------------------------------------------------------------------- binary

template <typename Op, typename T, typename OutT>
void binary_typed_cuda(const Tensor& out, const Tensor& a, const Tensor& b, cudaStream_t s) {
  using acc_t = opmath_t<T>;
  const Tensor* ts[3] = {&out, &a, &b};
  const OffsetCalc<3> calc = core::offset_calc_for<3>(ts);
  OutT* o = static_cast<OutT*>(out.raw_data());
  const T* x = static_cast<const T*>(a.raw_data());
  const T* y = static_cast<const T*>(b.raw_data());
  launch_elementwise(
      out.numel(),
      [=] __device__(int64_t i) {
        int64_t off[3];
        calc.get(i, off);
        o[off[0]] = OutT(Op()(acc_t(x[off[1]]), acc_t(y[off[2]])));
      },
      s);
}

using BinaryLauncher = void (*)(const Tensor&, const Tensor&, const Tensor&, cudaStream_t);

template <typename T>
BinaryLauncher binary_launcher(core::BinaryOp op) {
#define LOWBIT_ARITH_ENTRY(name, F) &binary_typed_cuda<core::F, T, T>,
#define LOWBIT_COMPARE_ENTRY(name, F) &binary_typed_cuda<core::F, T, uint8_t>,
  static constexpr BinaryLauncher kTable[] = {LOWBIT_BINARY_OPS(LOWBIT_ARITH_ENTRY)
                                                  LOWBIT_COMPARE_OPS(LOWBIT_COMPARE_ENTRY)};
#undef LOWBIT_ARITH_ENTRY
#undef LOWBIT_COMPARE_ENTRY
  static_assert(std::size(kTable) == size_t(core::BinaryOp::kCount), "binary table out of sync");
  return kTable[int(op)];
}

void binary_cuda(core::BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b) {
  LOWBIT_CHECK(int(op) >= 0 && int(op) < int(core::BinaryOp::kCount), "unknown binary op ",
               int(op));
  LOWBIT_CHECK(a.dtype() == b.dtype(), kBinaryNames[int(op)], ": operand dtypes differ, ",
               a.dtype(), " and ", b.dtype());
  const DType out_dtype = core::is_compare(op) ? DType::u8 : a.dtype();
  LOWBIT_CHECK(out.dtype() == out_dtype, kBinaryNames[int(op)], ": output dtype ", out.dtype(),
               ", expected ", out_dtype);
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t s = stream_of(device);
  LOWBIT_DISPATCH_ALL(a.dtype(), kBinaryNames[int(op)],
                      [&] { binary_launcher<scalar_t>(op)(out, a, b, s); });
}

// ------------------------------------------------------------------------------------ where

template <typename Bits>
void where_bits_cuda(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b,
                     cudaStream_t s) {
  const Tensor* ts[4] = {&out, &cond, &a, &b};
  const OffsetCalc<4> calc = core::offset_calc_for<4>(ts);
  Bits* o = static_cast<Bits*>(out.raw_data());
  const uint8_t* c = static_cast<const uint8_t*>(cond.raw_data());
  const Bits* x = static_cast<const Bits*>(a.raw_data());
  const Bits* y = static_cast<const Bits*>(b.raw_data());
  launch_elementwise(
      out.numel(),
      [=] __device__(int64_t i) {
        int64_t off[4];
        calc.get(i, off);
        o[off[0]] = c[off[1]] ? x[off[2]] : y[off[3]];
      },
      s);
}

void where_cuda(const Tensor& out, const Tensor& cond, const Tensor& a, const Tensor& b) {
  LOWBIT_CHECK(cond.dtype() == DType::u8, "where: condition must be u8, got ", cond.dtype());
  LOWBIT_CHECK(a.dtype() == out.dtype() && b.dtype() == out.dtype(), "where: dtypes differ: out ",
               out.dtype(), ", a ", a.dtype(), ", b ", b.dtype());
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t s = stream_of(device);
  dispatch_bits(out.element_size(), "where",
                [&](auto bits) { where_bits_cuda<decltype(bits)>(out, cond, a, b, s); });
}

// ------------------------------------------------------------------------------- copy, cast

template <typename DstT, typename SrcT>
void copy_typed_cuda(const Tensor& dst, const Tensor& src, cudaStream_t s) {
  const Tensor* ts[2] = {&dst, &src};
  const OffsetCalc<2> calc = core::offset_calc_for<2>(ts);
  DstT* o = static_cast<DstT*>(dst.raw_data());
  const SrcT* x = static_cast<const SrcT*>(src.raw_data());
  launch_elementwise(
      dst.numel(),
      [=] __device__(int64_t i) {
        int64_t off[2];
        calc.get(i, off);
        o[off[0]] = convert<DstT>(x[off[1]]);
      },
      s);
}

void copy_cuda(const Tensor& dst, const Tensor& src) {
  LOWBIT_CHECK(dst.device() == src.device(), "copy kernel: tensors on different devices, ",
               dst.device(), " and ", src.device());
  const int device = dst.device().index;
  DeviceGuard guard(device);
  cudaStream_t s = stream_of(device);
  if (dst.numel() == 0) return;
  if (dst.dtype() == src.dtype()) {
    const Tensor* ts[2] = {&dst, &src};
    if (core::offset_calc_for<2>(ts).contiguous) {
      CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), size_t(dst.nbytes()),
                                 cudaMemcpyDeviceToDevice, s));
      return;
    }
    // Same dtype, strided: the value is its bits (conversion would be the identity).
    dispatch_bits(dst.element_size(), "copy", [&](auto bits) {
      using Bits = decltype(bits);
      copy_typed_cuda<Bits, Bits>(dst, src, s);
    });
    return;
  }
  LOWBIT_DISPATCH_ALL(dst.dtype(), "copy", [&] {
    using dst_t = scalar_t;
    LOWBIT_DISPATCH_ALL(src.dtype(), "copy",
                        [&] { copy_typed_cuda<dst_t, scalar_t>(dst, src, s); });
  });
}

// ------------------------------------------------------------------------------------- fill

template <typename Bits>
void fill_bits_cuda(const Tensor& dst, Bits value, cudaStream_t s) {
  const Tensor* ts[1] = {&dst};
  const OffsetCalc<1> calc = core::offset_calc_for<1>(ts);
  Bits* o = static_cast<Bits*>(dst.raw_data());
  launch_elementwise(
      dst.numel(),
      [=] __device__(int64_t i) {
        int64_t off[1];
        calc.get(i, off);
        o[off[0]] = value;
      },
      s);
}

void fill_cuda(const Tensor& dst, double value) {
  const int device = dst.device().index;
  DeviceGuard guard(device);
  cudaStream_t s = stream_of(device);
  if (dst.numel() == 0) return;
  LOWBIT_DISPATCH_ALL(dst.dtype(), "fill", [&] {
    // The value is converted on the host exactly as the CPU kernel does, then stored as bits.
    const scalar_t v = convert<scalar_t>(value);
    using Bits = bits_t<scalar_t>;
    Bits bits;
    std::memcpy(&bits, &v, sizeof(bits));
    const Tensor* ts[1] = {&dst};
    if (bits == 0 && core::offset_calc_for<1>(ts).contiguous) {
      CUDA_CHECK(cudaMemsetAsync(dst.raw_data(), 0, size_t(dst.nbytes()), s));
      return;
    }
    fill_bits_cuda<Bits>(dst, bits, s);
  });
}

}  // namespace

LOWBIT_REGISTER_KERNEL(core::unary_stub, cuda, unary_cuda);
LOWBIT_REGISTER_KERNEL(core::binary_stub, cuda, binary_cuda);
LOWBIT_REGISTER_KERNEL(core::where_stub, cuda, where_cuda);
LOWBIT_REGISTER_KERNEL(core::copy_stub, cuda, copy_cuda);
LOWBIT_REGISTER_KERNEL(core::fill_stub, cuda, fill_cuda);

}  // namespace lowbit::cuda
