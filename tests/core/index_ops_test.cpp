// gather, scatter_add, index_select and one_hot against the naive multi-index loops of
// tests/reference/index_ref.h: every dim of a 3-D tensor (positive and negative), i32 and i64
// indices with duplicates, non-contiguous inputs and indices, several data dtypes (small integer
// values, so every sum is exact in every dtype), and the errors: an out-of-range index is named,
// also when the kernel runs on the OpenMP pool, and shape mismatches name both shapes.
#include <gmock/gmock.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/index_math.h"
#include "core/ops.h"
#include "core/random.h"
#include "tests/common/test_util.h"
#include "tests/core/core_test_helpers.h"
#include "tests/reference/index_ref.h"

namespace lowbit::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

const ref::Dims kShape = {3, 4, 5};

// Integers in [lo, hi), drawn from the seeded stream.
ref::Array random_ints(const ref::Dims& shape, int64_t lo, int64_t hi) {
  return random_ref(shape,
                    [lo, hi](double u) { return std::floor(double(lo) + double(hi - lo) * u); });
}

ref::Dims with_dim(ref::Dims shape, int64_t dim, int64_t size) {
  shape[size_t(dim)] = size;
  return shape;
}

// Data values: small integers, exact in every dtype and in every sum the tests make.
ref::Array data_values(const ref::Dims& shape, DType dt) {
  return dt == DType::u8 ? random_ints(shape, 0, 9) : random_ints(shape, -8, 9);
}

class IndexOps : public ::testing::TestWithParam<std::tuple<DType, DType>> {};

TEST_P(IndexOps, GatherEveryDim) {
  const auto [idx_t, dt] = GetParam();
  manual_seed(401);
  ref::Array xv = data_values(kShape, dt);
  for (int64_t d = 0; d < 3; ++d) {
    // Index longer than the dim along it: duplicates are certain.
    ref::Array iv = random_ints(with_dim(kShape, d, 6), 0, kShape[size_t(d)]);
    ref::Array want = ref::gather(xv, d, iv);
    for (Layout lx : {Layout::contiguous, Layout::permuted}) {
      for (Layout li : {Layout::contiguous, Layout::transposed}) {
        SCOPED_TRACE(str_cat("dim ", d, ", x ", layout_name(lx), ", index ", layout_name(li)));
        Tensor x = make_layout(xv, dt, lx), index = make_layout(iv, idx_t, li);
        Tensor y = gather(x, d, index);
        EXPECT_EQ(y.dtype(), dt);
        EXPECT_EQ(y.shape(), iv.shape);
        EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), 0, 0);
        EXPECT_TENSOR_NEAR(gather(x, d - 3, index), from_ref(want, DType::f64), 0, 0);
      }
    }
  }
}

TEST_P(IndexOps, ScatterAddEveryDimWithDuplicates) {
  const auto [idx_t, dt] = GetParam();
  manual_seed(402);
  ref::Array sv = data_values(kShape, dt);
  for (int64_t d = 0; d < 3; ++d) {
    for (bool all_same : {false, true}) {
      const ref::Dims is = with_dim(kShape, d, 7);
      // Random targets, or every source element into position 0 along dim.
      ref::Array iv =
          all_same ? ref::Array::filled(is, 0.0) : random_ints(is, 0, kShape[size_t(d)]);
      ref::Array srcv = dt == DType::u8 ? random_ints(is, 0, 4) : random_ints(is, -4, 5);
      ref::Array want = ref::scatter_add(sv, d, iv, srcv);
      for (Layout l : {Layout::contiguous, Layout::transposed}) {
        SCOPED_TRACE(str_cat("dim ", d, ", all into 0: ", all_same, ", ", layout_name(l)));
        Tensor self = make_layout(sv, dt, l);
        Tensor y = scatter_add(self, d, make_layout(iv, idx_t, l), make_layout(srcv, dt, l));
        EXPECT_EQ(y.dtype(), dt);
        EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), 0, 0);
        // Out of place: self is untouched.
        EXPECT_TENSOR_NEAR(self, from_ref(sv, DType::f64), 0, 0);
        EXPECT_TENSOR_NEAR(scatter_add(self, d - 3, from_ref(iv, idx_t), from_ref(srcv, dt)),
                           from_ref(want, DType::f64), 0, 0);
      }
    }
  }
}

TEST_P(IndexOps, IndexSelectEveryDim) {
  const auto [idx_t, dt] = GetParam();
  manual_seed(403);
  ref::Array xv = data_values(kShape, dt);
  for (int64_t d = 0; d < 3; ++d) {
    for (int64_t len : {1, 7}) {
      ref::Array iv = random_ints({len}, 0, kShape[size_t(d)]);
      std::vector<int64_t> idx(iv.data.begin(), iv.data.end());
      ref::Array want = ref::index_select(xv, d, idx);
      for (Layout lx : {Layout::contiguous, Layout::transposed}) {
        for (Layout li : {Layout::contiguous, Layout::strided}) {
          SCOPED_TRACE(str_cat("dim ", d, ", ", len, " entries, x ", layout_name(lx), ", index ",
                               layout_name(li)));
          Tensor x = make_layout(xv, dt, lx);
          Tensor y = index_select(x, d, make_layout(iv, idx_t, li));
          EXPECT_EQ(y.dtype(), dt);
          EXPECT_EQ(y.shape(), want.shape);
          EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), 0, 0);
          EXPECT_TENSOR_NEAR(index_select(x, d - 3, from_ref(iv, idx_t)),
                             from_ref(want, DType::f64), 0, 0);
        }
      }
    }
  }
  // An empty index gives an empty dim.
  EXPECT_EQ(index_select(from_ref(xv, dt), 1, zeros({0}, idx_t)).shape(), (Shape{3, 0, 5}));
}

TEST_P(IndexOps, OneHot) {
  const auto [idx_t, dt] = GetParam();
  manual_seed(404);
  for (const ref::Dims& shape : {ref::Dims{2, 3}, ref::Dims{7}, ref::Dims{}}) {
    SCOPED_TRACE(str_cat("index shape ", shape));
    ref::Array iv = random_ints(shape, 0, 5);
    Tensor y = one_hot(from_ref(iv, idx_t), 5, dt);
    EXPECT_EQ(y.dtype(), dt);
    EXPECT_TENSOR_NEAR(y, from_ref(ref::one_hot(iv, 5), DType::f64), 0, 0);
  }
  // A non-contiguous index.
  ref::Array iv = random_ints({4, 6}, 0, 3);
  Tensor y = one_hot(make_layout(iv, idx_t, Layout::transposed), 3, dt);
  EXPECT_TENSOR_NEAR(y, from_ref(ref::one_hot(iv, 3), DType::f64), 0, 0);
}

INSTANTIATE_TEST_SUITE_P(IndexAndDataDTypes, IndexOps,
                         ::testing::Combine(::testing::Values(DType::i32, DType::i64),
                                            ::testing::Values(DType::f32, DType::f64, DType::bf16,
                                                              DType::f16, DType::i32, DType::i64,
                                                              DType::u8, DType::i8)),
                         [](const auto& tp) {
                           return std::string("index_") + dtype_name(std::get<0>(tp.param)) +
                                  "_data_" + dtype_name(std::get<1>(tp.param));
                         });

// f32 sums of non-integers: scatter_add adds in index order, one float rounding per add.
TEST(ScatterAdd, FloatSumsOfDuplicates) {
  manual_seed(405);
  ref::Array sv = uniform_ref({4, 3}, -1, 1);
  ref::Array iv = random_ints({50, 3}, 0, 4);
  ref::Array srcv = uniform_ref({50, 3}, -1, 1);
  Tensor y = scatter_add(from_ref(sv, DType::f32), 0, from_ref(iv, DType::i64),
                         from_ref(srcv, DType::f32));
  ref::Array want =
      ref::scatter_add(to_ref(from_ref(sv, DType::f32)), 0, iv, to_ref(from_ref(srcv, DType::f32)));
  // Up to 51 adds, each rounded to f32 at a partial sum of magnitude <= 51: 51 * 51 * 2^-24.
  EXPECT_TENSOR_NEAR(y, from_ref(want, DType::f64), 0, 51 * 51 * std::ldexp(1.0, -24));
  // src in another dtype is cast to self's.
  Tensor z = scatter_add(zeros({3}), 0, tensor_of({0, 0, 2}, {3}, DType::i32),
                         tensor_of({1, 2, 3}, {3}, DType::f64));
  EXPECT_EQ(z.dtype(), DType::f32);
  EXPECT_TENSOR_NEAR(z, tensor_of({3, 0, 3}, {3}, DType::f64), 0, 0);
}

TEST(IndexErrors, OutOfRangeIndexIsNamed) {
  Tensor x = zeros({3, 4});
  EXPECT_THAT(error_message([&] {
                gather(x, 1, tensor_of({0, 4, 1, 2, 3, 0}, {3, 2}, DType::i64));
              }),
              AllOf(HasSubstr("gather"), HasSubstr("index 4")));
  EXPECT_THAT(error_message([&] {
                gather(x, 0, tensor_of({0, 1, -1, 2}, {1, 4}, DType::i32));
              }),
              AllOf(HasSubstr("gather"), HasSubstr("index -1")));
  EXPECT_THAT(error_message([&] {
                scatter_add(x, 0, tensor_of({0, 3, 1, 2}, {1, 4}, DType::i64), ones({1, 4}));
              }),
              AllOf(HasSubstr("scatter_add"), HasSubstr("index 3")));
  EXPECT_THAT(error_message([&] {
                index_select(x, 1, tensor_of({1, 9}, {2}, DType::i32));
              }),
              AllOf(HasSubstr("index_select"), HasSubstr("index 9")));
  EXPECT_THAT(error_message([&] { index_select(x, 0, tensor_of({-2}, {1}, DType::i64)); }),
              AllOf(HasSubstr("index_select"), HasSubstr("index -2")));
  EXPECT_THAT(error_message([&] {
                one_hot(tensor_of({1, 5}, {2}, DType::i64), 5);
              }),
              AllOf(HasSubstr("one_hot"), HasSubstr("index 5")));
  EXPECT_THAT(error_message([&] { one_hot(tensor_of({-1}, {1}, DType::i32), 5); }),
              AllOf(HasSubstr("one_hot"), HasSubstr("index -1")));
}

// Indices large enough that the kernels run on the OpenMP pool (core/parallel.h): a bad index
// must still come back as a lowbit::Error (an exception escaping an OpenMP region would
// terminate the process).
TEST(IndexErrors, OutOfRangeIndexIsNamedOnTheThreadedPath) {
  const int64_t n = 40000;
  std::vector<int64_t> idx(size_t(n), 1);
  idx[size_t(n - 3)] = 7;
  Tensor index = from_vector(idx, {1, n}, TensorOptions(DType::i64));
  EXPECT_THAT(error_message([&] {
                gather(zeros({2, n}), 0, index);
              }),
              AllOf(HasSubstr("gather"), HasSubstr("index 7")));
  EXPECT_THAT(error_message([&] {
                scatter_add(zeros({2, n}), 0, index, ones({1, n}));
              }),
              AllOf(HasSubstr("scatter_add"), HasSubstr("index 7")));
  EXPECT_THAT(error_message([&] {
                index_select(zeros({2, 3}), 0, index.view({n}));
              }),
              AllOf(HasSubstr("index_select"), HasSubstr("index 7")));
  EXPECT_THAT(error_message([&] { one_hot(index, 2); }),
              AllOf(HasSubstr("one_hot"), HasSubstr("index 7")));
}

TEST(IndexErrors, ShapeMismatchesNameBothShapes) {
  Tensor x = zeros({3, 4, 5});
  EXPECT_THAT(error_message([&] {
                gather(x, 0, zeros({3, 2, 5}, DType::i64));
              }),
              AllOf(HasSubstr("gather"), HasSubstr("[3, 4, 5]"), HasSubstr("[3, 2, 5]")));
  EXPECT_THAT(error_message([&] {
                gather(x, 1, zeros({3, 4}, DType::i64));
              }),
              AllOf(HasSubstr("gather"), HasSubstr("[3, 4, 5]"), HasSubstr("[3, 4]")));
  EXPECT_THAT(error_message([&] {
                scatter_add(x, 1, zeros({3, 2, 5}, DType::i64), zeros({3, 3, 5}));
              }),
              AllOf(HasSubstr("scatter_add"), HasSubstr("[3, 2, 5]"), HasSubstr("[3, 3, 5]")));
  EXPECT_THAT(error_message([&] {
                scatter_add(x, 1, zeros({2, 2, 5}, DType::i64), zeros({2, 2, 5}));
              }),
              AllOf(HasSubstr("scatter_add"), HasSubstr("[3, 4, 5]"), HasSubstr("[2, 2, 5]")));
  EXPECT_THAT(error_message([&] {
                index_select(x, 0, zeros({2, 2}, DType::i64));
              }),
              AllOf(HasSubstr("index_select"), HasSubstr("[2, 2]")));
}

TEST(IndexErrors, BadIndexDTypesAndDimsAreNamed) {
  Tensor x = zeros({3, 4});
  EXPECT_THAT(error_message([&] {
                gather(x, 0, zeros({1, 4}));
              }),
              AllOf(HasSubstr("gather"), HasSubstr("f32")));
  EXPECT_THAT(error_message([&] { index_select(x, 0, zeros({2}, DType::u8)); }),
              AllOf(HasSubstr("index_select"), HasSubstr("u8")));
  EXPECT_THAT(error_message([&] {
                scatter_add(x, 0, zeros({1, 4}, DType::i8), zeros({1, 4}));
              }),
              AllOf(HasSubstr("scatter_add"), HasSubstr("i8")));
  EXPECT_THAT(error_message([&] { one_hot(zeros({2}), 3); }),
              AllOf(HasSubstr("one_hot"), HasSubstr("f32")));
  EXPECT_THAT(error_message([&] { one_hot(zeros({2}, DType::i64), 0); }),
              AllOf(HasSubstr("one_hot"), HasSubstr("0")));
  EXPECT_THAT(error_message([&] {
                gather(x, 2, zeros({3, 4}, DType::i64));
              }),
              AllOf(HasSubstr("gather"), HasSubstr("dim 2")));
  EXPECT_THAT(error_message([&] { index_select(x, -3, zeros({1}, DType::i64)); }),
              AllOf(HasSubstr("index_select"), HasSubstr("dim -3")));
}

// The CPU names the bad index, where it is and the valid range (core/ops.h).
TEST(IndexErrors, OutOfRangeIndexNamesPositionAndRange) {
  Tensor x = zeros({3, 4});
  EXPECT_THAT(error_message([&] {
                gather(x, 1, tensor_of({0, 1, 2, 3, 5, 0}, {3, 2}, DType::i64));
              }),
              HasSubstr("gather: index 5 at position 4 is out of range [0, 4)"));
  EXPECT_THAT(error_message([&] {
                index_select(x, 0, tensor_of({2, 0, 3}, {3}, DType::i32));
              }),
              HasSubstr("index_select: index 3 at position 2 is out of range [0, 3)"));
}

// The element map both backends run (core/index_math.h), here on the host: an out-of-range index
// writes a zero element, which is what the CUDA kernels give (the CPU ops throw before).
TEST(IndexGatherMap, OutOfRangeIndexWritesZero) {
  const float in[6] = {1, 2, 3, 4, 5, 6};         // (outer 2, in_size 3, inner 1)
  const int64_t gather_index[4] = {2, -1, 3, 0};  // index shaped like out: (2, 2, 1)
  float out[4] = {-9, -9, -9, -9};
  const core::IndexGather<float, int64_t, false> gather_map{in, gather_index, out, 1, 2, 3};
  for (int64_t p = 0; p < 4; ++p) gather_map(p);
  EXPECT_EQ(std::vector<float>(out, out + 4), (std::vector<float>{3, 0, 0, 4}));

  const int32_t select_index[2] = {1, 7};  // 1-D, out_size 2, shared by both outer rows
  const core::IndexGather<float, int32_t, true> select_map{in, select_index, out, 1, 2, 3};
  for (int64_t p = 0; p < 4; ++p) select_map(p);
  EXPECT_EQ(std::vector<float>(out, out + 4), (std::vector<float>{2, 0, 5, 0}));
}

TEST(IndexOpsGpu, OutOfRangeIndexWritesZero) {
  LOWBIT_SKIP_WITHOUT_GPU();
  Tensor x = tensor_of({1, 2, 3, 4, 5, 6}, {2, 3}).to(Device::cuda());
  Tensor g = gather(x, 1, tensor_of({2, -1, 3, 0}, {2, 2}, DType::i64).to(Device::cuda()));
  EXPECT_TENSOR_NEAR(g, tensor_of({3, 0, 0, 4}, {2, 2}), 0, 0);
  Tensor s = index_select(x, 1, tensor_of({1, 7}, {2}, DType::i32).to(Device::cuda()));
  EXPECT_TENSOR_NEAR(s, tensor_of({2, 0, 5, 0}, {2, 2}), 0, 0);
}

}  // namespace
}  // namespace lowbit::testing
