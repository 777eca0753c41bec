// A conv whose output feeds a batch norm and a 2x2 max pool (miniimagenet) pools each
// output plane while it is still in cache, by the sign of the batch norm's scale
// (pool_plane_by_sign): the fused batch norm then normalises only the pooled values and
// does not read the full-size x again (batch_norm_pool.h, pooled_by_conv).
#pragma once
#include <cstdint>

#include "conv_geometry.h"
#include "simple_layers.h"

namespace maml {

template <class T>
struct PoolByScale {
  const T* const* scale = nullptr;  // the batch norm's scale per task [cout], or null (1)
  int32_t* argmax = nullptr;        // [tasks, batch, cout, oh / 2, ow / 2], index in the plane
  T* x_at_argmax = nullptr;         // the same shape: y at the argmax

  // Output channels [c0, c1) of one example (y_example: its [cout, oh, ow] output).
  void pool(const ConvGeometry& g, int task, int64_t example, int c0, int c1, const T* y_example) const {
    const int64_t pooled = int64_t(g.oh / 2) * (g.ow / 2);
    for (int c = c0; c < c1; ++c) {
      const T s = scale && scale[task] ? scale[task][c] : T(1);
      const int64_t at = (example * g.cout + c) * pooled;
      pool_plane_by_sign(y_example + c * g.out_plane(), g.oh, g.ow, s, x_at_argmax + at, argmax + at);
    }
  }
};

}  // namespace maml
