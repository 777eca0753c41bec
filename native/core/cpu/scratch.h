// Per-thread scratch vectors, grown on demand and kept for the next call: kernels run on
// the OpenMP threads over and over, and allocating per call was measurable. Owner (any
// type) keeps one user's slots apart from another's.
#pragma once
#include <cstddef>
#include <vector>

namespace maml {

template <class T, class Owner, int Slots>
T* thread_scratch(int slot, size_t size) {
  thread_local std::vector<T> buffers[Slots];
  std::vector<T>& v = buffers[slot];
  if (v.size() < size) v.resize(size);
  return v.data();
}

}  // namespace maml
