// Window attention's forward for XLA:CPU as one fused kernel (AVX-512F, float32, head_dim up to
// 64): softmax(q k^T / sqrt(head_dim) + bias) v for every window and head of a packed qkv
// projection.
//
// XLA:CPU runs this attention as separate products and a softmax, each writing its [N, N]
// scores or weights to memory: at head_dim 32 every score costs only 32 multiply-adds, so
// those passes over memory bound the products (Video Swin-T's stage-1 window attention ran at
// about 180 GFLOP/s against 450 for a square matmul). Here a tile of R query rows gets its scores,
// softmax and product with the values while its scores stay in the first-level cache.
//
// Inputs, as Video Swin's and TPS's attention hold them (token-major, no transposed copies):
//   qkv   [W, N, 3, H, D]  the qkv projection of W windows of N tokens, D <= 64
//   bias  [L, H, N, N]     the relative position bias: window w takes bias (w / period) % L
//                          (attribute `period`; L = 1: shared by all windows, TPS: one per frame)
//   query_ids, key_ids [M, N] int32  the shifted windows' region of each query and key token
//                          (M = 0: no mask): window w takes row w % M, and `mask_value` [1] is
//                          added to the bias where a query's and a key's regions differ (the
//                          official -100 mask)
// Output [W, N, H, D]. Numerics as vtx.kernels.attention's formula: q scaled by D^-1/2 before
// its product with the keys, bias plus mask added, the row maximum subtracted, exponentials
// summed, the product with the values divided by the row sums; the exponential is a degree-7
// polynomial (relative error within a float32 rounding or two), so results differ from XLA's in
// the last bits.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kMaxHeadDim = 64;
constexpr int kRows = 8;        // query rows per tile: 8 x 48 score accumulators fit 24 registers
constexpr int kLanes = 16;

// e^x for x <= 0 (scores minus their row maximum): x = n ln2 + r, |r| <= ln2 / 2, e^r by its
// Taylor polynomial, 2^n by scalef. Below -87.3 the result underflows to about 0 as e^x does.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);   // ln2 in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

struct Shapes {
  int64_t windows, tokens, heads, head_dim;
  int64_t padded;               // tokens rounded up to whole vectors
  int64_t token_stride;         // floats from one token's qkv to the next: 3 * heads * head_dim
  float scale;
};

// Scratch of one thread: the keys of one head d-major ([head_dim][padded], zero beyond the
// tokens) and the scores of one tile ([kRows][padded]).
struct Scratch {
  explicit Scratch(const Shapes& s) : keys(s.head_dim * s.padded), scores(kRows * s.padded) {}
  std::vector<float> keys, scores;
};

// Scores of query rows q[kRows][head_dim] (already scaled) against the keys, `blocks` vectors of
// columns from column block `first`.
template <int blocks>
inline void score_tile(const float (&q)[kRows][kMaxHeadDim], int64_t head_dim, const float* keys,
                       int64_t padded, int64_t first, float* scores) {
  __m512 acc[kRows][blocks];
  for (int r = 0; r < kRows; ++r)
    for (int b = 0; b < blocks; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t d = 0; d < head_dim; ++d) {
    __m512 k[blocks];
    for (int b = 0; b < blocks; ++b)
      k[b] = _mm512_loadu_ps(keys + d * padded + (first + b) * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const __m512 qd = _mm512_set1_ps(q[r][d]);
      for (int b = 0; b < blocks; ++b) acc[r][b] = _mm512_fmadd_ps(qd, k[b], acc[r][b]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int b = 0; b < blocks; ++b)
      _mm512_storeu_ps(scores + r * padded + (first + b) * kLanes, acc[r][b]);
}

// One window's head; `vectors_d` = the head_dim in vectors (the last one partial where head_dim
// is not a multiple of 16).
template <int vectors_d>
void attend_one_head(const Shapes& s, const float* qkv, const float* bias,
                     const int32_t* query_ids, const int32_t* key_ids, float mask_value,
                     float* out, Scratch& scratch) {
  const int64_t n = s.tokens, padded = s.padded, vectors = padded / kLanes, hd = s.head_dim;
  const float* q = qkv;
  const float* k = qkv + s.heads * hd;
  const float* v = qkv + 2 * s.heads * hd;
  const __mmask16 last_d = hd % kLanes ? (1u << (hd % kLanes)) - 1 : 0xFFFF;
  float* keys = scratch.keys.data();
  float* scores = scratch.scores.data();

  // The keys d-major, 16 tokens at a time by gathers.
  const __m512i offsets = _mm512_mullo_epi32(
      _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
      _mm512_set1_epi32(static_cast<int>(s.token_stride)));
  for (int64_t c = 0; c < vectors; ++c) {
    const int64_t j0 = c * kLanes;
    const __mmask16 valid = j0 + kLanes <= n ? 0xFFFF : (1u << (n - j0)) - 1;
    for (int64_t d = 0; d < hd; ++d)
      _mm512_storeu_ps(keys + d * padded + j0,
                       _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, offsets,
                                                k + j0 * s.token_stride + d, 4));
  }
  const __mmask16 last_valid = n % kLanes ? (1u << (n % kLanes)) - 1 : 0xFFFF;

  for (int64_t i0 = 0; i0 < n; i0 += kRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kRows, n - i0));
    float tile[kRows][kMaxHeadDim];   // a short last tile repeats its last row
    for (int r = 0; r < kRows; ++r) {
      const float* row = q + (i0 + std::min(r, rows - 1)) * s.token_stride;
      for (int64_t d = 0; d < hd; ++d) tile[r][d] = row[d] * s.scale;
    }
    int64_t c = 0;
    for (; c + 3 <= vectors; c += 3) score_tile<3>(tile, hd, keys, padded, c, scores);
    for (; c < vectors; ++c) score_tile<1>(tile, hd, keys, padded, c, scores);

    float inverse_sum[kRows];
    for (int r = 0; r < rows; ++r) {
      float* row = scores + r * padded;
      const float* bias_row = bias + (i0 + r) * n;
      const __m512i query_id = _mm512_set1_epi32(query_ids ? query_ids[i0 + r] : 0);
      __m512 row_max = _mm512_set1_ps(-INFINITY);
      for (int64_t c = 0; c < vectors; ++c) {
        const __mmask16 valid = c == vectors - 1 ? last_valid : 0xFFFF;
        __m512 b = _mm512_maskz_loadu_ps(valid, bias_row + c * kLanes);
        if (query_ids) {   // bias + mask first, as the formula adds their sum to the scores
          const __mmask16 apart = _mm512_mask_cmpneq_epi32_mask(
              valid, _mm512_maskz_loadu_epi32(valid, key_ids + c * kLanes), query_id);
          b = _mm512_mask_add_ps(b, apart, b, _mm512_set1_ps(mask_value));
        }
        const __m512 x = _mm512_mask_add_ps(_mm512_set1_ps(-INFINITY), valid,
                                            _mm512_loadu_ps(row + c * kLanes), b);
        _mm512_storeu_ps(row + c * kLanes, x);
        row_max = _mm512_max_ps(row_max, x);
      }
      const __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(row_max));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t c = 0; c < vectors; ++c) {
        const __mmask16 valid = c == vectors - 1 ? last_valid : 0xFFFF;
        const __m512 e = _mm512_maskz_mov_ps(
            valid, exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + c * kLanes), max)));
        _mm512_storeu_ps(row + c * kLanes, e);
        sum = _mm512_add_ps(sum, e);
      }
      inverse_sum[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }

    __m512 context[kRows][vectors_d];
    for (int r = 0; r < kRows; ++r)
      for (int e = 0; e < vectors_d; ++e) context[r][e] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const float* value = v + j * s.token_stride;
      __m512 vj[vectors_d];
      for (int e = 0; e < vectors_d; ++e)
        vj[e] = _mm512_maskz_loadu_ps(e == vectors_d - 1 ? last_d : 0xFFFF, value + e * kLanes);
      for (int r = 0; r < kRows; ++r) {
        const __m512 p = _mm512_set1_ps(scores[r * padded + j]);
        for (int e = 0; e < vectors_d; ++e)
          context[r][e] = _mm512_fmadd_ps(p, vj[e], context[r][e]);
      }
    }
    for (int r = 0; r < rows; ++r) {
      const __m512 inverse = _mm512_set1_ps(inverse_sum[r]);
      float* row = out + (i0 + r) * s.heads * hd;
      for (int e = 0; e < vectors_d; ++e)
        _mm512_mask_storeu_ps(row + e * kLanes, e == vectors_d - 1 ? last_d : 0xFFFF,
                              _mm512_mul_ps(context[r][e], inverse));
    }
  }
}

// The (window, head) pairs are shared out through a counter: the calling thread takes pairs too
// and then waits only for pairs other threads took, so the call finishes even when XLA's pool
// has no thread free; the state lives on the heap because a pool task may start after the call
// has returned (and then finds no pair left).
struct Job {
  Shapes shapes;
  const float* qkv;
  const float* bias;
  int64_t bias_count, bias_period;
  const int32_t* query_ids;   // nullptr: no mask
  const int32_t* key_ids;
  int64_t id_rows;
  float mask_value;
  float* out;
  int64_t total;
  std::atomic<int64_t> next{0};
  int64_t finished = 0;
  std::mutex mutex;
  std::condition_variable all_finished;

  void work() {
    std::unique_ptr<Scratch> scratch;
    int64_t done = 0;
    const int64_t hd = shapes.head_dim, width = shapes.heads * hd;
    for (int64_t i; (i = next.fetch_add(1)) < total; ++done) {
      if (!scratch) scratch = std::make_unique<Scratch>(shapes);
      const int64_t window = i / shapes.heads, head = i % shapes.heads;
      const float* x = qkv + window * shapes.tokens * shapes.token_stride + head * hd;
      const int64_t n = shapes.tokens;
      const float* b = bias + ((window / bias_period) % bias_count * shapes.heads + head) * n * n;
      const int64_t row = query_ids ? window % id_rows * n : 0;
      const int32_t* qi = query_ids ? query_ids + row : nullptr;
      const int32_t* ki = query_ids ? key_ids + row : nullptr;
      float* o = out + window * n * width + head * hd;
      switch ((hd + kLanes - 1) / kLanes) {
        case 1: attend_one_head<1>(shapes, x, b, qi, ki, mask_value, o, *scratch); break;
        case 2: attend_one_head<2>(shapes, x, b, qi, ki, mask_value, o, *scratch); break;
        case 3: attend_one_head<3>(shapes, x, b, qi, ki, mask_value, o, *scratch); break;
        default: attend_one_head<4>(shapes, x, b, qi, ki, mask_value, o, *scratch); break;
      }
    }
    if (done) {
      std::lock_guard<std::mutex> lock(mutex);
      finished += done;
      if (finished == total) all_finished.notify_all();
    }
  }
};

ffi::Error WindowAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> qkv,
                           ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::S32> query_ids,
                           ffi::Buffer<ffi::S32> key_ids, ffi::Buffer<ffi::F32> mask_value,
                           int64_t period,
                           ffi::ResultBuffer<ffi::F32> out) {
  const auto dims = qkv.dimensions();
  const auto bias_dims = bias.dimensions();
  const auto id_dims = query_ids.dimensions();
  if (dims.size() != 5 || dims[2] != 3 || dims[4] < 1 || dims[4] > kMaxHeadDim)
    return ffi::Error::InvalidArgument("qkv must be [windows, tokens, 3, heads, head_dim <= 64]");
  if (bias_dims.size() != 4 || bias_dims[0] < 1 || bias_dims[1] != dims[3] ||
      bias_dims[2] != dims[1] || bias_dims[3] != dims[1] || period < 1)
    return ffi::Error::InvalidArgument("bias must be [count, heads, tokens, tokens], period >= 1");
  if (id_dims.size() != 2 || (id_dims[0] > 0 && id_dims[1] != dims[1]) ||
      key_ids.element_count() != query_ids.element_count() || mask_value.element_count() != 1)
    return ffi::Error::InvalidArgument(
        "query_ids and key_ids must be [rows, tokens] and mask_value one number");
  auto job = std::make_shared<Job>();
  job->shapes = {dims[0], dims[1], dims[3], dims[4], (dims[1] + kLanes - 1) / kLanes * kLanes,
                 3 * dims[3] * dims[4], static_cast<float>(std::pow(double(dims[4]), -0.5))};
  job->qkv = qkv.typed_data();
  job->bias = bias.typed_data();
  job->bias_count = bias_dims[0];
  job->bias_period = period;
  job->query_ids = id_dims[0] > 0 ? query_ids.typed_data() : nullptr;
  job->key_ids = key_ids.typed_data();
  job->id_rows = id_dims[0];
  job->mask_value = mask_value.typed_data()[0];
  job->out = out->typed_data();
  job->total = dims[0] * dims[3];
  if (job->total == 0) return ffi::Error::Success();
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), job->total) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->work(); });
  job->work();
  std::unique_lock<std::mutex> lock(job->mutex);
  job->all_finished.wait(lock, [&] { return job->finished == job->total; });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(VtxWindowAttention, WindowAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("period")
                                  .Ret<ffi::Buffer<ffi::F32>>());
