// Builds a batch of network inputs from the uint8 image cache by index, so that an
// episode crossing from JavaScript is only indices, rotations and labels.
//   value = pixel / 255, or 1 - pixel / 255 with invert (Omniglot: strokes become 1)
//   rotation r in 0..3: r quarter turns counter-clockwise, as tf.image.rot90 (square images)
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cpu/parallel.h"

namespace maml {

struct ImageCache {
  const uint8_t* pixels = nullptr;  // [count, channels, height, width]
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
  parallel_for(examples, [&](int64_t e) {
    const uint8_t* src = cache.pixels + indices[e] * cache.image_size();
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
}

}  // namespace maml
