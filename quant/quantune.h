// Quantune (docs/methods.md, "Quantune"): searching the post-training quantization
// configurations with a gradient-boosted cost model, next to grid and random search over the
// same space so the three can be compared on the measurements they need and their time.
//
// A space is a list of knobs, each with its values; a configuration picks one value per knob
// (an index each) and is encoded one-hot for the cost model. The objective measures one
// configuration (lowbit ptq: top-1 of the quantized model on held-out images) and is maximised.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace lowbit::quant {

struct Knob {
  std::string name;
  std::vector<std::string> values;
};

using Config = std::vector<int64_t>;  // a value index per knob

class ConfigSpace {
 public:
  explicit ConfigSpace(std::vector<Knob> knobs);
  const std::vector<Knob>& knobs() const { return knobs_; }
  int64_t size() const;                  // product of the value counts
  Config config(int64_t index) const;    // mixed-radix, the last knob fastest
  int64_t index(const Config& c) const;  // the inverse
  int64_t encoded_size() const;          // sum of the value counts
  // One-hot: for each knob, a 1 at its value's position, 0 elsewhere.
  std::vector<float> one_hot(const Config& c) const;
  std::string describe(const Config& c) const;  // "calibration=kl/100 scheme=symmetric ..."
  // The index of `value` in knob `knob`; InputError naming the knob, the value and the allowed
  // values otherwise.
  int64_t value_index(const std::string& knob, const std::string& value) const;

 private:
  std::vector<Knob> knobs_;
};

// A regression model of the objective over one-hot encoded configurations.
class CostModel {
 public:
  virtual ~CostModel() = default;
  virtual void fit(const std::vector<std::vector<float>>& x, const std::vector<float>& y) = 0;
  virtual std::vector<float> predict(const std::vector<std::vector<float>>& x) = 0;
};

struct Measurement {
  Config config;
  double value = 0.0;
  double seconds = 0.0;  // time of this measurement
};

struct SearchResult {
  std::string method;                 // quantune | grid | random
  std::vector<Measurement> measured;  // in the order measured
  Measurement best;
  int64_t rounds = 0;          // quantune: cost-model rounds
  double model_seconds = 0.0;  // quantune: fitting and scoring the cost model
  double seconds = 0.0;        // whole search
};

using Objective = std::function<double(const Config&)>;

struct SearchOptions {
  int64_t budget = 0;  // measurements at most; 0 = the whole space
  uint64_t seed = 0;
  // quantune (lowbit defaults): n0 random configurations, then per round the top `per_round`
  // predicted plus, with probability `explore`, one random; stop after `patience` rounds
  // without a better measurement or at the budget.
  int64_t initial = 8;
  int64_t per_round = 4;
  double explore = 0.1;
  int64_t patience = 3;
};

// Measures configurations in index order (the first `budget`, or all).
SearchResult grid_search(const ConfigSpace& space, const Objective& f, const SearchOptions& o);
// Measures `budget` distinct configurations drawn uniformly (a seeded permutation).
SearchResult random_search(const ConfigSpace& space, const Objective& f, const SearchOptions& o);
// The Quantune loop with `model` as the cost model.
SearchResult quantune_search(const ConfigSpace& space, const Objective& f, const SearchOptions& o,
                             CostModel& model);

// An XGBoost regressor (C API of libxgboost) when lowbit was built with it, else InputError
// saying so (lowbit ptq --search grid|random work without it).
std::unique_ptr<CostModel> make_xgboost_model(uint64_t seed = 0);
bool have_xgboost();

}  // namespace lowbit::quant
