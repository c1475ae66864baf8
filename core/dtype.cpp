#include "core/dtype.h"

namespace lowbit {

int64_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
      return 4;
    case DType::f64:
      return 8;
    case DType::bf16:
      return 2;
    case DType::f16:
      return 2;
    case DType::i8:
      return 1;
    case DType::u8:
      return 1;
    case DType::i32:
      return 4;
    case DType::i64:
      return 8;
  }
  LOWBIT_FAIL("unknown dtype ", int(t));
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::f64:
      return "f64";
    case DType::bf16:
      return "bf16";
    case DType::f16:
      return "f16";
    case DType::i8:
      return "i8";
    case DType::u8:
      return "u8";
    case DType::i32:
      return "i32";
    case DType::i64:
      return "i64";
  }
  return "unknown";
}

DType parse_dtype(const std::string& name) {
  struct Alias {
    const char* name;
    DType t;
  };
  static const Alias kAliases[] = {
      {"f32", DType::f32},     {"float32", DType::f32},   {"float", DType::f32},
      {"f64", DType::f64},     {"float64", DType::f64},   {"double", DType::f64},
      {"bf16", DType::bf16},   {"bfloat16", DType::bf16}, {"f16", DType::f16},
      {"float16", DType::f16}, {"half", DType::f16},      {"i8", DType::i8},
      {"int8", DType::i8},     {"u8", DType::u8},         {"uint8", DType::u8},
      {"i32", DType::i32},     {"int32", DType::i32},     {"i64", DType::i64},
      {"int64", DType::i64},
  };
  for (const auto& a : kAliases) {
    if (name == a.name) return a.t;
  }
  throw InputError(
      str_cat("unknown dtype '", name, "': allowed are f32, f64, bf16, f16, i8, u8, i32, i64"));
}

bool is_floating(DType t) {
  return t == DType::f32 || t == DType::f64 || t == DType::bf16 || t == DType::f16;
}

DType promote_types(DType a, DType b) {
  if (a == b) return a;
  const bool fa = is_floating(a), fb = is_floating(b);
  if (fa && !fb) return a;
  if (fb && !fa) return b;
  if (fa && fb) {
    if (a == DType::f64 || b == DType::f64) return DType::f64;
    return DType::f32;  // f32 with a 16-bit float, or bf16 with f16
  }
  // Both integers.
  if (a == DType::i64 || b == DType::i64) return DType::i64;
  if (a == DType::i32 || b == DType::i32) return DType::i32;
  return DType::i32;  // i8 with u8: no narrower type holds both
}

std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }

}  // namespace lowbit
