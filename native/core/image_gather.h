// Builds a batch of network inputs from the uint8 image cache by index, so that an
// episode crossing from JavaScript is only indices, rotations and labels.
//   value = pixel / 255, or 1 - pixel / 255 with invert (Omniglot: strokes become 1)
//   rotation r in 0..3: r quarter turns counter-clockwise, as tf.image.rot90 (square images)
//
// The cache is either in memory (pixels) or read from its file by position (file): the
// full MiniImagenet cache is 1.27 GB, and reading the few images of a meta-batch from the
// OS page cache keeps the trainer's own memory at the engine's workspace.
#pragma once
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/parallel.h"
#include "pixel_file.h"

namespace maml {

struct ImageCache {
  const uint8_t* pixels = nullptr;  // [count, channels, height, width], or null: read from file
  const PixelFile* file = nullptr;
  int64_t count = 0;
  int channels = 0, height = 0, width = 0;
  bool invert = false;
  int64_t image_size() const { return int64_t(channels) * height * width; }
};

template <class T>
void gather_images(const ImageCache& cache, int64_t examples, const int32_t* indices, const uint8_t* rotations,
                   T* out) {
  for (int64_t e = 0; e < examples; ++e) {
    if (indices[e] < 0 || indices[e] >= cache.count)
      throw std::invalid_argument("image index " + std::to_string(indices[e]) + " is outside the cache (0.." +
                                  std::to_string(cache.count - 1) + ")");
    if (rotations && rotations[e] > 3)
      throw std::invalid_argument("rotation " + std::to_string(rotations[e]) + " must be 0..3 quarter turns");
    if (rotations && rotations[e] && cache.height != cache.width)
      throw std::invalid_argument("rotations need square images");
  }
  const int h = cache.height, w = cache.width;
  if (!cache.pixels && !cache.file) throw std::invalid_argument("image cache: neither pixels nor a pixel file given");
  // a failed read must not throw inside the thread team: the first message is kept
  std::mutex failure_lock;
  std::string failure;
  parallel_for(examples, [&](int64_t e) {
    const uint8_t* src;
    thread_local std::vector<uint8_t> staging;
    if (cache.pixels) {
      src = cache.pixels + indices[e] * cache.image_size();
    } else {
      staging.resize(size_t(cache.image_size()));
      try {
        cache.file->read(indices[e] * cache.image_size(), staging.data(), staging.size());
      } catch (const std::exception& error) {
        std::lock_guard<std::mutex> hold(failure_lock);
        if (failure.empty()) failure = error.what();
        return;
      }
      src = staging.data();
    }
    T* dst = out + e * cache.image_size();
    const int r = rotations ? rotations[e] : 0;
    for (int c = 0; c < cache.channels; ++c)
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
          // out(y, x) of a counter-clockwise turn reads in(x, w-1-y); apply r times
          int sy = y, sx = x;
          for (int i = 0; i < r; ++i) {
            const int ny = sx, nx = w - 1 - sy;
            sy = ny;
            sx = nx;
          }
          const T value = T(src[(int64_t(c) * h + sy) * w + sx]) / T(255);
          dst[(int64_t(c) * h + y) * w + x] = cache.invert ? T(1) - value : value;
        }
  });
  if (!failure.empty()) throw std::runtime_error(failure);
}

}  // namespace maml
