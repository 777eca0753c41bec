// The shape of one 3x3 convolution layer, shared by its kernels (conv.h, conv_direct.h,
// conv_indirect.h). Padding is given as rows/columns of zeros before the image
// (TensorFlow's 'SAME' pads unevenly for stride 2: see architecture.cpp).
#pragma once
#include <cstdint>

namespace maml {

struct ConvGeometry {
  int cin, h, w, cout, oh, ow, stride, pad_top, pad_left;
  int depth() const { return cin * 9; }
  int64_t in_plane() const { return int64_t(h) * w; }
  int64_t out_plane() const { return int64_t(oh) * ow; }
  int64_t in_size() const { return cin * in_plane(); }
  int64_t out_size() const { return cout * out_plane(); }
  bool operator==(const ConvGeometry& o) const {
    return cin == o.cin && h == o.h && w == o.w && cout == o.cout && oh == o.oh && ow == o.ow && stride == o.stride &&
           pad_top == o.pad_top && pad_left == o.pad_left;
  }
};

}  // namespace maml
