// Which scale group an element belongs to, for every granularity: the map the reference
// kernels use (and the device kernels may use for their edge cases).
#pragma once

#include <cstdint>

#include "lowbit/numeric.hpp"
#include "lowbit/scheme.hpp"

namespace lowbit::formats {

/// Precomputed extents for mapping a row-major element index of `shape` to its group.
struct GroupMap {
  Granularity granularity = Granularity::tensor;
  int64_t k = 1;         ///< last axis
  int64_t rows = 1;      ///< extent of the second-to-last axis (block2d)
  int64_t block = 1;     ///< block size / tile edge
  int64_t blocks_k = 1;  ///< groups along the last axis
  int64_t blocks_r = 1;  ///< tile rows (block2d)
  int64_t inner = 1;     ///< product of extents after the channel axis
  int64_t channels = 1;  ///< extent of the channel axis
  int64_t count = 1;     ///< number of groups

  static GroupMap make(const QuantScheme& scheme, const Shape& shape) {
    GroupMap m;
    m.granularity = scheme.granularity;
    const int nd = shape.size();
    int64_t n = 1;
    for (int i = 0; i < nd; ++i) n *= shape[i];
    m.k = nd > 0 ? shape[nd - 1] : 1;
    switch (scheme.granularity) {
      case Granularity::tensor:
        m.count = 1;
        break;
      case Granularity::token:
        m.count = m.k > 0 ? n / m.k : 0;
        break;
      case Granularity::channel: {
        const int axis = scheme.axis < 0 ? scheme.axis + nd : scheme.axis;
        m.channels = shape[axis];
        for (int i = axis + 1; i < nd; ++i) m.inner *= shape[i];
        m.count = m.channels;
        break;
      }
      case Granularity::block:
        m.block = scheme.block;
        m.blocks_k = (m.k + m.block - 1) / m.block;
        m.count = m.k > 0 ? n / m.k * m.blocks_k : 0;
        break;
      case Granularity::block2d:
        m.block = scheme.block;
        m.rows = shape[nd - 2];
        m.blocks_k = (m.k + m.block - 1) / m.block;
        m.blocks_r = (m.rows + m.block - 1) / m.block;
        m.count = (m.k * m.rows > 0 ? n / (m.k * m.rows) : 0) * m.blocks_r * m.blocks_k;
        break;
    }
    return m;
  }

  LOWBIT_HD int64_t group_of(int64_t i) const {
    switch (granularity) {
      case Granularity::tensor:
        return 0;
      case Granularity::token:
        return i / k;
      case Granularity::channel:
        return (i / inner) % channels;
      case Granularity::block:
        return (i / k) * blocks_k + (i % k) / block;
      case Granularity::block2d: {
        const int64_t batch = i / (k * rows);
        const int64_t r = (i / k) % rows;
        return (batch * blocks_r + r / block) * blocks_k + (i % k) / block;
      }
    }
    return 0;
  }
};

}  // namespace lowbit::formats
