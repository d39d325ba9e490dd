// How the CUDA kernels cut a 4-D tensor into tiles, and the parameters every kernel receives.
//
// A "plane" is one channel of one image: plane P = n*C + c. A tile is `cb` consecutive planes x `rows()` rows x
// `tw` columns; a block stages it with the filter's halo in shared memory once, then each thread produces kRows
// vertically adjacent outputs of one plane and one column, so every staged value is read from shared memory by
// few threads and global memory sees each input once (plus the halo, which L2 serves).
//
// Neighbouring threads walk columns in NCHW and planes (channels) in channels_last, so that in both layouts a
// warp's loads and stores touch consecutive addresses.
#pragma once

#include <algorithm>
#include <cstdint>

#include "fixed_branch.h"

namespace fixedbranch {
namespace cuda {

constexpr int kMaxThreads = 256;
// Outputs per thread, stacked vertically: a 3x3 window of 10 staged rows serves 8 outputs per branch.
constexpr int kRows = 8;
// Shared memory a block may use without opting in to more; tiles that need more shrink, then fall back to the
// direct kernels (filters far larger than any CNN uses).
constexpr int64_t kSharedLimit = 48 * 1024;
// Banks up to this size are copied into each block's shared memory; larger ones are read through L1.
constexpr int64_t kBankSharedLimit = 8 * 1024;

struct TileShape {
  int cb = 0, tw = 0, rs = 0;  // planes, columns and row strips (kRows rows each) per tile; cb == 0: no tile fits
  int slices = 1;              // branches staged together (the backward reads K gradient slices per tile)
  bool cl = false;             // channels_last: neighbouring threads take neighbouring planes
  int threads() const { return cb * tw * rs; }
  int rows() const { return rs * kRows; }
  int staged_planes() const { return cb * slices; }
  // Shared memory of a block: the staged planes' global offsets (8 bytes each at most), the tile with its halo,
  // and the bank when it is copied there. The kernels lay it out in this order (SharedLayout).
  int64_t offsets_bytes() const { return (8 * int64_t(staged_planes()) + 15) / 16 * 16; }
  int64_t tile_values(int64_t s1, int64_t s2) const {
    return int64_t(staged_planes()) * (rows() + s1 - 1) * (tw + s2 - 1);
  }
  int64_t shared_bytes(int64_t s1, int64_t s2, int64_t elem_size, int64_t bank_bytes) const {
    return offsets_bytes() + tile_values(s1, s2) * elem_size + bank_bytes;
  }
};

// Smallest power of two >= v, at most cap (a power of two).
inline int pow2_cover(int64_t v, int cap) {
  int p = 1;
  while (p < v && p < cap) p <<= 1;
  return p;
}

// Tiles sized to the image so that small feature maps (7x7, 14x14) do not leave most threads idle: the spare
// threads take more planes instead. `max_slices` branches are staged together when shared memory allows.
inline TileShape choose_tile(bool channels_last, int64_t C, int64_t H, int64_t W, int64_t S1, int64_t S2,
                             int64_t elem_size, int64_t bank_shared_bytes, int64_t max_slices) {
  TileShape t;
  t.cl = channels_last;
  const int cb0 = channels_last ? pow2_cover(C, 32) : 1;
  const int spatial = kMaxThreads / cb0;
  t.tw = pow2_cover(W, std::min(spatial, 32));
  t.rs = pow2_cover((H + kRows - 1) / kRows, std::min(spatial / t.tw, 8));
  t.cb = kMaxThreads / (t.tw * t.rs);
  while (t.shared_bytes(S1, S2, elem_size, bank_shared_bytes) > kSharedLimit) {
    if (t.cb > 1) {
      t.cb /= 2;
    } else if (t.rs > 1) {
      t.rs /= 2;
    } else if (t.tw > 1) {
      t.tw /= 2;
    } else {
      return TileShape{};
    }
  }
  while (t.slices < max_slices) {
    ++t.slices;
    if (t.shared_bytes(S1, S2, elem_size, bank_shared_bytes) > kSharedLimit) {
      --t.slices;
      break;
    }
  }
  return t;
}

// Branches whose gradient is stopped, as a bitmask passed by value (kernel parameters need no allocation and no
// copy, which keeps the launch capturable in CUDA graphs). Stopped branches beyond the capacity get their filter
// zeroed in the kernels' copy of the bank instead.
struct StopSet {
  static constexpr int kCapacity = 1024;
  uint32_t bits[kCapacity / 32];
  C10_HOST_DEVICE bool has(int k) const { return k < kCapacity && ((bits[k >> 5] >> (k & 31)) & 1u); }
};

// Everything a kernel needs to know about its tensors, by value. `src` is the tensor read (y or grad_output),
// `dst` the tensor written (out or grad_y); both are indexed through their strides, so any layout works.
template <typename index_t>
struct Geometry {
  index_t planes, C, H, W;                 // planes = N*C of the single-branch tensor
  index_t src_n, src_c, src_h, src_w;      // strides of src
  index_t dst_n, dst_c, dst_h, dst_w;      // strides of dst
  int64_t tiles, tiles_h, tiles_w;         // tiles = plane blocks * tiles_h * tiles_w
  int K, S1, S2, top, left;                // bank size and the "same" padding before the image
  int band_rows, band_cols;                // pixels this close to an edge may be copied into the padding
  int cb, tw, rs, cl, slices;              // the TileShape
  PadMode mode;
  StopSet stop;
};

}  // namespace cuda
}  // namespace fixedbranch
