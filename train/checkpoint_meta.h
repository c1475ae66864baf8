// The run position and RNG state that a training checkpoint's metadata records. The Trainer
// (train/trainer.cpp) writes them as safetensors metadata strings; --resume reads them back with
// parse_checkpoint_meta, which validates every value: a corrupt or hand-edited checkpoint is an
// InputError naming the file, the key and the text, never a crash, an exception of another kind
// or a silently wrong position (a count past int64_t turning negative, say). Whether the
// position fits the run being resumed (stage count, batches per epoch) is the Trainer's check.
//
// Keys (all values decimal text unless said otherwise):
//   stage, epoch, global_epoch   required; stages completed, epochs completed in `stage`, epochs
//                                completed in the run
//   batch, last_step             inside an epoch only (checkpoint_every): batches done, last
//                                optimizer step
//   epoch_sums                   with batch: JSON {"loss_sum", "correct", "seen"[, "elapsed_s"]},
//                                finite numbers >= 0
//   rng_cpu, rng_device          "SEED,OFFSET" of the CPU / device generator (rng_cpu required)
//   world_size                   ranks of the run that wrote it (>= 1; absent: 1)
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <string>

namespace lowbit::train {

struct CheckpointMeta {
  int64_t stage = 0;
  int64_t epoch = 0;
  int64_t global_epoch = 0;
  bool mid_epoch = false;  // the checkpoint was written inside an epoch (has "batch")
  int64_t batch = 0;
  int64_t last_step = -1;
  double loss_sum = 0.0, correct = 0.0, seen = 0.0, elapsed_s = 0.0;
  uint64_t rng_cpu_seed = 0, rng_cpu_offset = 0;
  bool has_rng_device = false;
  uint64_t rng_device_seed = 0, rng_device_offset = 0;
  int64_t world_size = 1;
};

// `path` names the checkpoint in messages.
CheckpointMeta parse_checkpoint_meta(const std::map<std::string, std::string>& meta,
                                     const std::string& path);

// A decimal integer in [0, max] (digits only: no sign, space or exponent); InputError naming
// `where` and the text otherwise (never std::stoull's bare "stoull").
uint64_t parse_count(const std::string& text, const std::string& where,
                     uint64_t max = std::numeric_limits<uint64_t>::max());

}  // namespace lowbit::train
