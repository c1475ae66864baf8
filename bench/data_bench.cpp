// `lowbit bench data`: images/s of the training input pipeline over a JPEG folder.
#include <algorithm>
#include <chrono>

#include "bench/bench.h"
#include "core/error.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/transforms.h"

namespace lowbit::bench {

DataResult run_data_bench(const DataOptions& o) {
  LOWBIT_CHECK_INPUT(o.size > 0 && o.batch > 0 && o.images > 0 && o.workers >= 0,
                     "bench data: --size, --batch and --images must be positive, --workers >= 0");
  data::DatasetPtr ds = data::open_image_folder(o.folder);
  data::Pipeline pipe({data::random_resized_crop(o.size, o.size, {0.08, 1.0},
                                                 {3.0 / 4.0, 4.0 / 3.0}, o.scaled_decode),
                       data::random_horizontal_flip()},
                      data::to_tensor_normalize(data::kImageNetMean, data::kImageNetStd));
  data::LoaderOptions lo;
  lo.batch_size = o.batch;
  lo.shuffle = true;
  lo.num_workers = o.workers;
  lo.seed = o.seed;
  data::DataLoader loader(ds, lo, pipe);
  data::Batch b;
  int64_t epoch = 0;
  auto next = [&] {  // as many epochs as the images asked for need
    while (!loader.next(b)) loader.set_epoch(++epoch);
    return b.size();
  };
  // Untimed: worker start-up, and the batches the workers prefetched while the first one was
  // built; after 2 N + 1 batches the queue is drained and every worker busy (steady state).
  for (int64_t k = 0; k < 2 * o.workers + 1; ++k) next();
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  int64_t seen = 0;
  while (seen < o.images) seen += next();
  DataResult r;
  r.options = o;
  r.images = seen;
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  r.images_per_s = double(seen) / r.seconds;
  r.images_per_s_per_core = r.images_per_s / double(std::max<int64_t>(1, o.workers));
  return r;
}

}  // namespace lowbit::bench
