// A plane copied into a larger zero-filled one: the padded input the indirect
// (conv_indirect.h) and direct (conv_direct.h) convolutions read without bounds.
#pragma once
#include <algorithm>

namespace maml {

// out [rows x cols] = plane [h x w] placed at row pad_top, column pad_left; zeros elsewhere
// (also where out ends before the plane does).
template <class T>
void copy_with_border(const T* plane, int h, int w, int pad_top, int pad_left, int rows, int cols, T* out) {
  for (int r = 0; r < rows; ++r, out += cols) {
    const int iy = r - pad_top;
    if (iy < 0 || iy >= h) {
      std::fill(out, out + cols, T(0));
      continue;
    }
    const int lo = std::min(pad_left, cols), hi = std::min(cols, pad_left + w);
    // plain loops: rows of 10 to 84 values, where memcpy/memset calls cost more than the copy
    const T* in = plane + iy * w;
    for (int c = 0; c < lo; ++c) out[c] = T(0);
    for (int c = lo; c < hi; ++c) out[c] = in[c - lo];
    for (int c = hi; c < cols; ++c) out[c] = T(0);
  }
}

}  // namespace maml
