// DType: the element types a Tensor can hold, their sizes and names, and the dispatch macros
// that turn a runtime dtype into a C++ type. A kernel that does not support a dtype says so:
// the dispatch macros throw naming the op and the dtype.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

#include "core/error.h"
#include "core/hd.h"

namespace lowbit {

enum class DType : uint8_t { f32, f64, bf16, f16, i8, u8, i32, i64 };

int64_t dtype_size(DType t);
const char* dtype_name(DType t);
DType parse_dtype(const std::string& name);  // "f32", "float32", "bf16", ...
bool is_floating(DType t);
// The dtype both operands of a binary op are computed in (PyTorch-like promotion: floats beat
// integers, wider beats narrower, bf16 with f16 gives f32).
DType promote_types(DType a, DType b);
std::ostream& operator<<(std::ostream& os, DType t);

template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct DTypeOf<double> {
  static constexpr DType value = DType::f64;
};
template <>
struct DTypeOf<bf16> {
  static constexpr DType value = DType::bf16;
};
template <>
struct DTypeOf<f16> {
  static constexpr DType value = DType::f16;
};
template <>
struct DTypeOf<int8_t> {
  static constexpr DType value = DType::i8;
};
template <>
struct DTypeOf<uint8_t> {
  static constexpr DType value = DType::u8;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::i32;
};
template <>
struct DTypeOf<int64_t> {
  static constexpr DType value = DType::i64;
};
template <typename T>
constexpr DType dtype_of = DTypeOf<T>::value;

}  // namespace lowbit

#define LOWBIT_DTYPE_CASE_AS(enum_name, type, alias, ...) \
  case ::lowbit::DType::enum_name: {                      \
    using alias = type;                                   \
    return __VA_ARGS__();                                 \
  }
#define LOWBIT_DTYPE_CASE(enum_name, type, ...) \
  LOWBIT_DTYPE_CASE_AS(enum_name, type, scalar_t, __VA_ARGS__)

#define LOWBIT_DTYPE_UNSUPPORTED(op, t)                                                   \
  default:                                                                                \
    LOWBIT_FAIL(op, ": dtype ", ::lowbit::dtype_name(t), " is not supported by this op"); \
    break;

// Every dtype.
#define LOWBIT_DISPATCH_ALL(t, op, ...)                    \
  [&] {                                                    \
    switch (t) {                                           \
      LOWBIT_DTYPE_CASE(f32, float, __VA_ARGS__)           \
      LOWBIT_DTYPE_CASE(f64, double, __VA_ARGS__)          \
      LOWBIT_DTYPE_CASE(bf16, ::lowbit::bf16, __VA_ARGS__) \
      LOWBIT_DTYPE_CASE(f16, ::lowbit::f16, __VA_ARGS__)   \
      LOWBIT_DTYPE_CASE(i8, int8_t, __VA_ARGS__)           \
      LOWBIT_DTYPE_CASE(u8, uint8_t, __VA_ARGS__)          \
      LOWBIT_DTYPE_CASE(i32, int32_t, __VA_ARGS__)         \
      LOWBIT_DTYPE_CASE(i64, int64_t, __VA_ARGS__)         \
      LOWBIT_DTYPE_UNSUPPORTED(op, t)                      \
    }                                                      \
  }()

// Floating dtypes.
#define LOWBIT_DISPATCH_FLOATING(t, op, ...)               \
  [&] {                                                    \
    switch (t) {                                           \
      LOWBIT_DTYPE_CASE(f32, float, __VA_ARGS__)           \
      LOWBIT_DTYPE_CASE(f64, double, __VA_ARGS__)          \
      LOWBIT_DTYPE_CASE(bf16, ::lowbit::bf16, __VA_ARGS__) \
      LOWBIT_DTYPE_CASE(f16, ::lowbit::f16, __VA_ARGS__)   \
      LOWBIT_DTYPE_UNSUPPORTED(op, t)                      \
    }                                                      \
  }()

// Index dtypes (gather, scatter, one_hot): the type is named index_t.
#define LOWBIT_DISPATCH_INDEX(t, op, ...)                      \
  [&] {                                                        \
    switch (t) {                                               \
      LOWBIT_DTYPE_CASE_AS(i32, int32_t, index_t, __VA_ARGS__) \
      LOWBIT_DTYPE_CASE_AS(i64, int64_t, index_t, __VA_ARGS__) \
      LOWBIT_DTYPE_UNSUPPORTED(op, t)                          \
    }                                                          \
  }()
