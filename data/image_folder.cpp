// ImageNet-style folder reader: root/<class>/<image>.jpg. The class list and the file list are
// built once at open (sorted, so sample i is the same on every machine and every run); images
// are read and decoded on get(), in the loader's worker threads.
#include <algorithm>
#include <filesystem>

#include "core/error.h"
#include "data/dataset.h"
#include "data/file_io.h"
#include "data/jpeg.h"

namespace lowbit::data {

namespace {

namespace fs = std::filesystem;

bool is_jpeg_name(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char ch) { return char(std::tolower(ch)); });
  return ext == ".jpg" || ext == ".jpeg";
}

class ImageFolderDataset final : public Dataset {
 public:
  explicit ImageFolderDataset(const std::string& root) : root_(root) {
    std::error_code ec;
    LOWBIT_CHECK_INPUT(fs::is_directory(root, ec), "image folder: ", root, " is not a directory");
    for (const fs::directory_entry& e : fs::directory_iterator(root, ec)) {
      if (e.is_directory(ec)) classes_.push_back(e.path().filename().string());
    }
    LOWBIT_CHECK_INPUT(!ec, "image folder: cannot list ", root, ": ", ec.message());
    LOWBIT_CHECK_INPUT(!classes_.empty(), "image folder: ", root,
                       " has no class subdirectories (expected root/<class>/<image>.jpg)");
    std::sort(classes_.begin(), classes_.end());
    for (size_t k = 0; k < classes_.size(); ++k) {
      const fs::path dir = fs::path(root) / classes_[k];
      std::vector<std::string> names;
      for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
        if (e.is_regular_file(ec) && is_jpeg_name(e.path())) {
          names.push_back(e.path().filename().string());
        }
      }
      LOWBIT_CHECK_INPUT(!ec, "image folder: cannot list ", dir.string(), ": ", ec.message());
      LOWBIT_CHECK_INPUT(!names.empty(), "image folder: class directory ", dir.string(),
                         " holds no .jpg/.jpeg files");
      std::sort(names.begin(), names.end());
      for (const std::string& n : names) {
        files_.push_back((dir / n).string());
        labels_.push_back(int64_t(k));
      }
    }
  }

  int64_t size() const override { return int64_t(files_.size()); }
  int64_t num_classes() const override { return int64_t(classes_.size()); }
  Shape image_shape() const override { return {-1, -1, 3}; }
  std::vector<std::string> class_names() const override { return classes_; }
  std::string description() const override {
    return str_cat("image folder ", root_, " (", files_.size(), " JPEGs, ", classes_.size(),
                   " classes)");
  }

  int64_t label(int64_t i) const override {
    check_index(i);
    return labels_[size_t(i)];
  }

  Sample get(int64_t i) const override {
    Sample s = get_encoded(i);
    decode_sample(s);
    return s;
  }

  Sample get_encoded(int64_t i) const override {
    check_index(i);
    const std::string& path = files_[size_t(i)];
    auto bytes = std::make_shared<const std::vector<uint8_t>>(read_file_bytes(path));
    const JpegSize size = read_jpeg_size(bytes->data(), bytes->size(), path);
    Sample s;
    s.encoded = std::move(bytes);
    s.source = path;
    s.height = size.height;
    s.width = size.width;
    s.channels = 3;
    s.label = labels_[size_t(i)];
    return s;
  }

 private:
  std::string root_;
  std::vector<std::string> classes_;
  std::vector<std::string> files_;
  std::vector<int64_t> labels_;
};

}  // namespace

DatasetPtr open_image_folder(const std::string& root) {
  return std::make_shared<ImageFolderDataset>(root);
}

}  // namespace lowbit::data
