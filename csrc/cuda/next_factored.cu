// Next-generation forward of a factored bank (docs/design.md, "Factored banks"): a block stages its tile of y with
// the halo in shared memory, runs each distinct column factor down the tile once into shared memory (only the rows
// the stride keeps), then every thread sums, per filter, its terms' row passes over those columns (only the
// columns the stride keeps), or correlates directly for the filters the plan leaves direct. Global memory sees y
// read once and every output written once; shared memory holds the intermediates.
//
// The plan comes from the bank's values, which live on the device. It is read once per bank tensor and kept with
// its device tables, keyed by the tensor's identity and version counter (next_plan.cu), so a call costs no
// host-device synchronisation once a bank has been seen: see plan_for_bank.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "next_common.cuh"
#include "next_host.h"
#include "next_plan.h"

namespace fixedbranch {
namespace cuda {
namespace next {
namespace {

// Shared memory a block may use without opting in to more.
constexpr int64_t kSharedLimit = 48 * 1024;

// A tile: tp planes (channels of one image in channels_last, one plane in NCHW) x th output rows x tw output
// columns, one output per thread.
struct FactoredTile {
  int tp, th, tw, cl;
  int rows_in, cols_in;  // staged y: (th-1)*sh + S1 rows, (tw-1)*sw + S2 columns
};

template <typename opmath_t>
struct Tables {
  const opmath_t* columns;  // U x S1
  const opmath_t* rows;     // T x S2, each term's row factor with its singular value
  const int* term_begin;    // K + 1: filter k's terms are [term_begin[k], term_begin[k+1]); none = direct
  const int* term_column;   // T
  int U;
};

// Shared-memory index of staged value (plane pp, row r, column x) of a tile of `rows` x `cols` per plane: NCHW
// keeps a plane's rows together, channels_last a pixel's planes (the order in which threads are placed).
__device__ __forceinline__ int tile_index(const FactoredTile& t, int pp, int r, int x, int rows, int cols) {
  return t.cl ? (r * cols + x) * t.tp + pp : (pp * rows + r) * cols + x;
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    forward_factored_kernel(const scalar_t* __restrict__ y, const at::opmath_type<scalar_t>* __restrict__ w,
                            scalar_t* __restrict__ out, const Params<index_t> p,
                            const Tables<at::opmath_type<scalar_t>> tab, const FactoredTile t) {
  using opmath_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  opmath_t* ytile = reinterpret_cast<opmath_t*>(shared_bytes);
  const int ystaged = t.tp * t.rows_in * t.cols_in;
  opmath_t* ctile = ytile + ystaged;  // U x tp x th x cols_in
  const int cstaged = tab.U * t.tp * t.th * t.cols_in;
  const int taps = p.S1 * p.S2;

  // This thread's output within the tile.
  const int e = threadIdx.x;
  const int pp = t.cl ? e % t.tp : 0;
  const int col = t.cl ? (e / t.tp) % t.tw : e % t.tw;
  const int row = t.cl ? e / (t.tp * t.tw) : e / t.tw;

  const int64_t tiles_w = (p.OW + t.tw - 1) / t.tw, tiles_h = (p.OH + t.th - 1) / t.th;
  const int64_t plane_blocks = t.cl ? int64_t(p.N) * ((p.C + t.tp - 1) / t.tp) : int64_t(p.N) * p.C;
  const int64_t tiles = plane_blocks * tiles_h * tiles_w;
  for (int64_t id = blockIdx.x; id < tiles; id += gridDim.x) {
    const int64_t rest = id / tiles_w;
    const index_t j0 = static_cast<index_t>(id - rest * tiles_w) * t.tw;
    const index_t i0 = static_cast<index_t>(rest % tiles_h) * t.th;
    const int64_t pb = rest / tiles_h;
    index_t n, c0;
    if (t.cl) {
      const int64_t cblocks = (p.C + t.tp - 1) / t.tp;
      n = static_cast<index_t>(pb / cblocks), c0 = static_cast<index_t>(pb % cblocks) * t.tp;
    } else {
      n = static_cast<index_t>(pb / p.C), c0 = static_cast<index_t>(pb % p.C);
    }
    __syncthreads();  // the previous tile's shared memory has been read
    // Stage y with its halo, through the padding map, in opmath_t.
    for (int s = threadIdx.x; s < ystaged; s += blockDim.x) {
      int q, r, x;
      if (t.cl) {
        q = s % t.tp, x = (s / t.tp) % t.cols_in, r = s / (t.tp * t.cols_in);
      } else {
        x = s % t.cols_in, r = (s / t.cols_in) % t.rows_in, q = s / (t.cols_in * t.rows_in);
      }
      const int64_t si = source_index(int64_t(i0) * p.sh - p.top + r, p.H, p.top, p.S1 - 1 - p.top, p.mode);
      const int64_t sj = source_index(int64_t(j0) * p.sw - p.left + x, p.W, p.left, p.S2 - 1 - p.left, p.mode);
      opmath_t v = 0;
      if (c0 + q < p.C && si >= 0 && sj >= 0)
        v = static_cast<opmath_t>(y[n * p.s_n + (c0 + q) * p.s_c + index_t(si) * p.s_h + index_t(sj) * p.s_w]);
      ytile[s] = v;
    }
    __syncthreads();
    // Column passes: ctile[u][q][r][x] = sum_a column_u[a] * ytile[q][r*sh + a][x], for the kept rows only.
    for (int s = threadIdx.x; s < cstaged; s += blockDim.x) {
      int u, q, r, x;
      if (t.cl) {
        q = s % t.tp, x = (s / t.tp) % t.cols_in, r = (s / (t.tp * t.cols_in)) % t.th, u = s / (t.tp * t.cols_in * t.th);
      } else {
        x = s % t.cols_in, r = (s / t.cols_in) % t.th, q = (s / (t.cols_in * t.th)) % t.tp,
        u = s / (t.cols_in * t.th * t.tp);
      }
      const opmath_t* cu = tab.columns + u * p.S1;
      opmath_t v = 0;
      for (int a = 0; a < p.S1; ++a) v += cu[a] * ytile[tile_index(t, q, r * p.sh + a, x, t.rows_in, t.cols_in)];
      ctile[s] = v;
    }
    __syncthreads();

    if (e >= t.tp * t.th * t.tw) continue;
    const index_t c = c0 + pp, i = i0 + row, j = j0 + col;
    if (c >= p.C || i >= p.OH || j >= p.OW) continue;
    scalar_t* o = out + n * p.d_n + i * p.d_h + j * p.d_w;
    if (p.identity)
      o[p.out_channel(0, c) * p.d_c] =
          static_cast<scalar_t>(ytile[tile_index(t, pp, row * p.sh + p.top, col * p.sw + p.left, t.rows_in, t.cols_in)]);
    for (int k = 0; k < p.K; ++k) {
      opmath_t v = 0;
      const int tb = tab.term_begin[k], te = tab.term_begin[k + 1];
      if (tb == te) {
        const opmath_t* wk = w + int64_t(k) * taps;
        for (int a = 0; a < p.S1; ++a)
          for (int b = 0; b < p.S2; ++b)
            v += wk[a * p.S2 + b] *
                 ytile[tile_index(t, pp, row * p.sh + a, col * p.sw + b, t.rows_in, t.cols_in)];
      } else {
        for (int term = tb; term < te; ++term) {
          const int u = tab.term_column[term];
          const opmath_t* rw = tab.rows + int64_t(term) * p.S2;
          const int base = u * t.tp * t.th;
          for (int b = 0; b < p.S2; ++b) {
            const int x = col * p.sw + b;
            const int idx = t.cl ? ((u * t.th + row) * t.cols_in + x) * t.tp + pp
                                 : ((base + pp * t.th + row) * t.cols_in + x);
            v += rw[b] * ctile[idx];
          }
        }
      }
      o[p.out_channel(p.slot(k + 1), c) * p.d_c] = static_cast<scalar_t>(v);
    }
  }
}

int pow2_cover(int64_t v, int cap) {
  int p = 1;
  while (p < v && p < cap) p <<= 1;
  return p;
}

int64_t tile_shared_bytes(const FactoredTile& t, int64_t U, int64_t elem) {
  return (int64_t(t.tp) * t.rows_in * t.cols_in + U * t.tp * t.th * t.cols_in) * elem;
}

// The largest tile (kThreads outputs at most) whose staging fits in shared memory, or th == 0.
FactoredTile choose_tile(bool cl, const BranchArgs& a, int64_t S1, int64_t S2, int64_t U, int64_t elem) {
  FactoredTile t{};
  t.cl = cl;
  t.tp = cl ? pow2_cover(a.C, 32) : 1;
  t.tw = pow2_cover(a.out_w, std::min(kThreads / t.tp, 32));
  t.th = pow2_cover(a.out_h, kThreads / (t.tp * t.tw));
  auto fit = [&] {
    t.rows_in = static_cast<int>((t.th - 1) * a.stride_h + S1);
    t.cols_in = static_cast<int>((t.tw - 1) * a.stride_w + S2);
    return tile_shared_bytes(t, U, elem) <= kSharedLimit;
  };
  while (!fit()) {
    if (t.th > 1) {
      t.th /= 2;
    } else if (t.tp > 1) {
      t.tp /= 2;
    } else if (t.tw > 1) {
      t.tw /= 2;
    } else {
      t.th = 0;
      return t;
    }
  }
  return t;
}

template <typename scalar_t, typename index_t>
void launch(const at::Tensor& y, const at::Tensor& w, const BranchArgs& a, const DevicePlan& plan,
            const FactoredTile& t, at::Tensor& out) {
  using opmath_t = at::opmath_type<scalar_t>;
  const Params<index_t> p = make_params<index_t>(y, out, a, w.size(1), w.size(2));
  Tables<opmath_t> tab{};
  const opmath_t* values = plan.values.const_data_ptr<opmath_t>();
  const int* meta = plan.meta.const_data_ptr<int>();
  tab.columns = values;
  tab.rows = values + plan.num_columns * w.size(1);
  tab.term_begin = meta;
  tab.term_column = meta + a.K + 1;
  tab.U = static_cast<int>(plan.num_columns);
  const int64_t tiles = (t.cl ? a.N * ((a.C + t.tp - 1) / t.tp) : a.N * a.C) * ((a.out_h + t.th - 1) / t.th) *
                        ((a.out_w + t.tw - 1) / t.tw);
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(tiles, sms * 16));
  const int64_t shared = tile_shared_bytes(t, plan.num_columns, sizeof(opmath_t));
  forward_factored_kernel<scalar_t, index_t><<<blocks, t.tp * t.th * t.tw, shared, at::cuda::getCurrentCUDAStream()>>>(
      y.const_data_ptr<scalar_t>(), w.const_data_ptr<opmath_t>(), out.mutable_data_ptr<scalar_t>(), p, tab, t);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

bool forward_factored(const at::Tensor& y, const DevicePlan* plan, const at::Tensor& w, const BranchArgs& a,
                      at::Tensor& out) {
  const int64_t S1 = w.size(1), S2 = w.size(2);
  if (S1 == 1 || S2 == 1 || plan == nullptr || !plan->run_factored) return false;
  const FactoredTile t =
      choose_tile(is_channels_last(out), a, S1, S2, plan->num_columns, at::elementSize(w.scalar_type()));
  if (t.th == 0 || t.tp * t.th * t.tw < 32) return false;  // too small a tile to pay: run direct
  const c10::cuda::CUDAGuard guard(y.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fixed_branch_cuda_next_factored", [&] {
    if (fits_int32(y) && fits_int32(out)) {
      launch<scalar_t, int32_t>(y, w, a, *plan, t, out);
    } else {
      launch<scalar_t, int64_t>(y, w, a, *plan, t, out);
    }
  });
  return true;
}

}  // namespace next
}  // namespace cuda
}  // namespace fixedbranch
