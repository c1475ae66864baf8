// The XGBoost cost model of Quantune (quant/quantune.h) through libxgboost's C API. Built when
// CMake finds Debian's libxgboost-dev (LOWBIT_HAVE_XGBOOST); otherwise make_xgboost_model says
// how to get it.
#include <string>

#include "core/error.h"
#include "quant/quantune.h"

#ifdef LOWBIT_HAVE_XGBOOST
#include <xgboost/c_api.h>
#endif

namespace lowbit::quant {

#ifdef LOWBIT_HAVE_XGBOOST

namespace {

void xgb_check(int rc, const char* what) {
  if (rc != 0) throw Error(str_cat("XGBoost ", what, ": ", XGBGetLastError()));
}

// A dense float matrix as a DMatrix (freed with the object).
class DMatrix {
 public:
  explicit DMatrix(const std::vector<std::vector<float>>& x) {
    const size_t cols = x.empty() ? 0 : x[0].size();
    std::vector<float> flat;
    flat.reserve(x.size() * cols);
    for (const auto& row : x) {
      LOWBIT_CHECK(row.size() == cols, "XGBoost: rows of ", row.size(), " and ", cols, " columns");
      flat.insert(flat.end(), row.begin(), row.end());
    }
    xgb_check(XGDMatrixCreateFromMat(flat.data(), x.size(), cols, -1e30f, &h),
              "XGDMatrixCreateFromMat");
  }
  ~DMatrix() { XGDMatrixFree(h); }
  DMatrix(const DMatrix&) = delete;
  DMatrix& operator=(const DMatrix&) = delete;
  DMatrixHandle h = nullptr;
};

// Gradient-boosted trees, squared error; small trees for the few dozen measurements a search
// has (lowbit defaults: 100 rounds, depth 4, eta 0.3, one thread: the objective owns the cores).
class XgbRegressor : public CostModel {
 public:
  explicit XgbRegressor(uint64_t seed) : seed_(seed) {}
  ~XgbRegressor() override { reset(); }

  void fit(const std::vector<std::vector<float>>& x, const std::vector<float>& y) override {
    LOWBIT_CHECK(!x.empty() && x.size() == y.size(), "XGBoost fit: ", x.size(), " rows and ",
                 y.size(), " targets");
    reset();
    train_ = std::make_unique<DMatrix>(x);
    xgb_check(XGDMatrixSetFloatInfo(train_->h, "label", y.data(), y.size()), "labels");
    DMatrixHandle hs[1] = {train_->h};
    xgb_check(XGBoosterCreate(hs, 1, &booster_), "XGBoosterCreate");
    const std::string seed = std::to_string(seed_);
    const char* params[][2] = {{"objective", "reg:squarederror"},
                               {"max_depth", "4"},
                               {"eta", "0.3"},
                               {"min_child_weight", "1"},
                               {"lambda", "1"},
                               {"nthread", "1"},
                               {"verbosity", "0"},
                               {"seed", seed.c_str()}};
    for (auto& p : params) xgb_check(XGBoosterSetParam(booster_, p[0], p[1]), "XGBoosterSetParam");
    for (int it = 0; it < kRounds; ++it) {
      xgb_check(XGBoosterUpdateOneIter(booster_, it, train_->h), "XGBoosterUpdateOneIter");
    }
  }

  std::vector<float> predict(const std::vector<std::vector<float>>& x) override {
    LOWBIT_CHECK(booster_ != nullptr, "XGBoost predict before fit");
    if (x.empty()) return {};
    DMatrix d(x);
    bst_ulong n = 0;
    const float* out = nullptr;
    xgb_check(XGBoosterPredict(booster_, d.h, 0, 0, 0, &n, &out), "XGBoosterPredict");
    LOWBIT_CHECK(n == x.size(), "XGBoost predicted ", n, " values for ", x.size(), " rows");
    return std::vector<float>(out, out + n);
  }

 private:
  static constexpr int kRounds = 100;
  void reset() {
    if (booster_) XGBoosterFree(booster_);
    booster_ = nullptr;
    train_.reset();
  }
  uint64_t seed_;
  std::unique_ptr<DMatrix> train_;
  BoosterHandle booster_ = nullptr;
};

}  // namespace

bool have_xgboost() { return true; }
std::unique_ptr<CostModel> make_xgboost_model(uint64_t seed) {
  return std::make_unique<XgbRegressor>(seed);
}

#else

bool have_xgboost() { return false; }
std::unique_ptr<CostModel> make_xgboost_model(uint64_t) {
  throw InputError(
      "Quantune's cost model needs XGBoost, and this lowbit was built without it: install "
      "libxgboost-dev (scripts/setup.sh does) and rebuild, or search with grid or random");
}

#endif

}  // namespace lowbit::quant
