// The run's record stream (run_log.h).
#include "train/run_log.h"

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "quant/quantizer.h"

namespace lowbit::train {

RunLog::RunLog(const std::string& dir, bool tensorboard) : jsonl_(dir + "/log.jsonl") {
  if (tensorboard) events_ = std::make_unique<EventFile>(dir);
}

void RunLog::record(const nlohmann::json& rec) {
  jsonl_.write(rec.dump());
  if (!events_) return;
  const std::string kind = rec.value("kind", std::string("record"));
  const std::string stage = rec.value("stage", std::string());
  const char* at = rec.contains("step") ? "step" : "epoch";
  const int64_t step = rec.contains(at) && rec[at].is_number() ? rec[at].get<int64_t>() : 0;
  const std::string prefix = (stage.empty() ? "" : stage + "/") + kind + "/";
  for (const auto& [key, v] : rec.items()) {
    if (key == "epoch" || key == "step" || key == "world_size") continue;
    scalars(prefix + key, v, step);
  }
  events_->flush();
}

// Numbers as scalars; nested objects and arrays of numbers (a search's probabilities per layer)
// as one scalar per leaf, tagged by their path ("search/probabilities/fc/1").
void RunLog::scalars(const std::string& tag, const nlohmann::json& v, int64_t step) {
  if (v.is_number()) {
    events_->scalar(tag, step, v.get<double>());
  } else if (v.is_object()) {
    for (const auto& [k, child] : v.items()) scalars(tag + "/" + k, child, step);
  } else if (v.is_array()) {
    for (size_t i = 0; i < v.size(); ++i) scalars(tag + "/" + std::to_string(i), v[i], step);
  }
}

void RunLog::config_text(const std::string& yaml) {
  if (!events_) return;
  events_->text("config", 0, "```yaml\n" + yaml + "\n```");
  events_->flush();
}

void RunLog::histograms(layers::Module& model, int64_t epoch) {
  if (!events_) return;
  for (auto& [name, m] : model.named_modules()) {
    const bool quantizer = dynamic_cast<const quant::Quantizer*>(m.get()) != nullptr;
    for (auto& [local, p] : m->named_parameters(false)) {
      const Tensor h = p.detach().to(Device::cpu(), DType::f32).contiguous();
      const std::string full = name.empty() ? local : name + "." + local;
      events_->histogram((quantizer ? "quantizers/" : "params/") + full, epoch, h.data<float>(),
                         h.numel());
    }
  }
  events_->flush();
}

void RunLog::flush() {
  if (events_) events_->flush();
}

}  // namespace lowbit::train
