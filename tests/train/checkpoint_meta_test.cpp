// Checkpoint position metadata: what the Trainer writes parses back exactly; every corrupt
// value is an InputError naming the file, the key and the text (tests/fuzz/fuzz_checkpoint_meta
// fuzzes the same function).
#include "train/checkpoint_meta.h"

#include <gmock/gmock.h>

#include <map>
#include <string>

#include "core/error.h"

namespace lowbit::train {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using Meta = std::map<std::string, std::string>;

Meta epoch_end() {
  return {{"format", "lowbit-checkpoint-1"},
          {"stage", "1"},
          {"epoch", "2"},
          {"global_epoch", "5"},
          {"world_size", "4"},
          {"rng_cpu", "7,4096"}};
}

Meta mid_epoch() {
  Meta m = epoch_end();
  m["batch"] = "17";
  m["last_step"] = "1234";
  m["epoch_sums"] = R"({"loss_sum":123.5,"correct":1800.0,"seen":2176.0,"elapsed_s":12.25})";
  m["rng_device"] = "7,99";
  return m;
}

std::string error_of(const Meta& m) {
  try {
    parse_checkpoint_meta(m, "ck.safetensors");
  } catch (const InputError& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(CheckpointMeta, EpochEndParses) {
  const CheckpointMeta c = parse_checkpoint_meta(epoch_end(), "ck.safetensors");
  EXPECT_EQ(c.stage, 1);
  EXPECT_EQ(c.epoch, 2);
  EXPECT_EQ(c.global_epoch, 5);
  EXPECT_FALSE(c.mid_epoch);
  EXPECT_EQ(c.batch, 0);
  EXPECT_EQ(c.world_size, 4);
  EXPECT_EQ(c.rng_cpu_seed, 7u);
  EXPECT_EQ(c.rng_cpu_offset, 4096u);
  EXPECT_FALSE(c.has_rng_device);
}

TEST(CheckpointMeta, MidEpochParsesSumsAndDeviceRng) {
  const CheckpointMeta c = parse_checkpoint_meta(mid_epoch(), "ck.safetensors");
  EXPECT_TRUE(c.mid_epoch);
  EXPECT_EQ(c.batch, 17);
  EXPECT_EQ(c.last_step, 1234);
  EXPECT_EQ(c.loss_sum, 123.5);
  EXPECT_EQ(c.correct, 1800.0);
  EXPECT_EQ(c.seen, 2176.0);
  EXPECT_EQ(c.elapsed_s, 12.25);
  EXPECT_TRUE(c.has_rng_device);
  EXPECT_EQ(c.rng_device_offset, 99u);
}

TEST(CheckpointMeta, OldCheckpointsWithoutElapsedOrWorldSize) {
  Meta m = mid_epoch();
  m["epoch_sums"] = R"({"loss_sum":1,"correct":2,"seen":3})";
  m.erase("world_size");
  const CheckpointMeta c = parse_checkpoint_meta(m, "ck.safetensors");
  EXPECT_EQ(c.elapsed_s, 0.0);
  EXPECT_EQ(c.world_size, 1);
}

TEST(CheckpointMeta, FullUint64RngStateRoundTrips) {
  // Generator seeds and offsets are uint64_t: 20 digits must read back (the old parser took 19).
  Meta m = epoch_end();
  m["rng_cpu"] = "18446744073709551615,10000000000000000000";
  const CheckpointMeta c = parse_checkpoint_meta(m, "ck.safetensors");
  EXPECT_EQ(c.rng_cpu_seed, 18446744073709551615ull);
  EXPECT_EQ(c.rng_cpu_offset, 10000000000000000000ull);
  m["rng_cpu"] = "18446744073709551616,0";
  EXPECT_THAT(error_of(m), AllOf(HasSubstr("ck.safetensors"), HasSubstr("rng_cpu seed"),
                                 HasSubstr("18446744073709551616")));
}

TEST(CheckpointMeta, CountsPastInt64AreRefusedNotNegative) {
  // 9223372036854775808 fits in uint64_t but became a negative stage, which passed the
  // "stage <= number of stages" check.
  for (const char* key : {"stage", "epoch", "global_epoch", "batch", "last_step", "world_size"}) {
    Meta m = mid_epoch();
    m[key] = "9223372036854775808";
    EXPECT_THAT(error_of(m), AllOf(HasSubstr("ck.safetensors"), HasSubstr(key),
                                   HasSubstr("9223372036854775808")))
        << key;
  }
}

TEST(CheckpointMeta, BadTextNamesTheKey) {
  const std::pair<const char*, const char*> cases[] = {
      {"stage", "-1"},     {"epoch", ""},     {"global_epoch", "1e3"}, {"batch", " 3"},
      {"world_size", "0"}, {"rng_cpu", "12"}, {"rng_cpu", "1,x"},      {"rng_device", ",5"}};
  for (const auto& [key, text] : cases) {
    Meta m = mid_epoch();
    m[key] = text;
    EXPECT_THAT(error_of(m), AllOf(HasSubstr("ck.safetensors"), HasSubstr(key)))
        << key << "=" << text;
  }
  Meta m = epoch_end();
  m.erase("global_epoch");
  EXPECT_THAT(error_of(m), HasSubstr("not a lowbit training checkpoint"));
  m = epoch_end();
  m.erase("rng_cpu");
  EXPECT_THAT(error_of(m), HasSubstr("rng_cpu is missing"));
}

TEST(CheckpointMeta, EpochSumsOfTheWrongShapeAreInputErrors) {
  // Missing loss_sum or a string value threw nlohmann's type_error, not an InputError.
  const char* cases[] = {
      R"({"seen":3})",
      R"({"loss_sum":"1","correct":2,"seen":3})",
      R"({"loss_sum":1,"correct":2,"seen":3,"elapsed_s":"x"})",
      R"({"loss_sum":-1,"correct":2,"seen":3})",
      R"({"loss_sum":1e999,"correct":2,"seen":3})",
      R"([1,2,3])",
      "not json",
  };
  for (const char* sums : cases) {
    Meta m = mid_epoch();
    m["epoch_sums"] = sums;
    EXPECT_THAT(error_of(m), AllOf(HasSubstr("ck.safetensors"), HasSubstr("epoch_sums"))) << sums;
  }
  Meta m = mid_epoch();
  m.erase("epoch_sums");
  EXPECT_THAT(error_of(m), HasSubstr("epoch_sums is missing"));
}

}  // namespace
}  // namespace lowbit::train
