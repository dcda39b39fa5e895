// Window attention's forward for XLA:CPU as one fused kernel (AVX-512F, or AVX2 with FMA; float32,
// head_dim up to 64): softmax(q k^T / sqrt(head_dim) + bias) v for every window and head
// of a packed qkv projection.
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

// The vector operations the kernel is written in, for the two x86-64 vector extensions it is
// built for (vtx.kernels.native picks the flags). A tile's scores (kRows x 3 vectors) and, for
// up to kContextVectors vectors of head_dim at a time, its context stay in registers: AVX-512
// has 32 of 16 lanes, AVX2 16 of 8.
#if defined(__AVX512F__)
using Vec = __m512;
using Mask = __mmask16;      // lanes in use
using Offsets = __m512i;     // a gather's element offsets
constexpr int kLanes = 16;
constexpr int kRows = 8;             // 8 x 3 score accumulators: 24 registers
constexpr int kContextVectors = 4;   // 8 x 4 context accumulators
inline Vec zero() { return _mm512_setzero_ps(); }
inline Vec broadcast(float x) { return _mm512_set1_ps(x); }
inline Vec load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline Vec sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
inline Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec max(Vec a, Vec b) { return _mm512_max_ps(a, b); }
inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec fnmadd(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a, b, c); }
inline float reduce_max(Vec v) { return _mm512_reduce_max_ps(v); }
inline float reduce_add(Vec v) { return _mm512_reduce_add_ps(v); }
constexpr Mask kAllLanes = 0xFFFF;
inline Mask first_lanes(int64_t count) { return count >= kLanes ? kAllLanes : (1u << count) - 1; }
inline Vec load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }   // 0 elsewhere
inline void store(float* p, Mask m, Vec v) { _mm512_mask_storeu_ps(p, m, v); }
inline Vec select(Mask m, Vec a, Vec b) { return _mm512_mask_blend_ps(m, b, a); }  // a where m
inline Mask ids_differ(Mask valid, const int32_t* key_ids, int32_t query_id) {
  return _mm512_mask_cmpneq_epi32_mask(valid, _mm512_maskz_loadu_epi32(valid, key_ids),
                                       _mm512_set1_epi32(query_id));
}
inline Offsets strided(int32_t stride) {
  return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                            _mm512_set1_epi32(stride));
}
inline Vec gather(Mask m, const float* base, Offsets offsets) {
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, offsets, base, 4);
}
inline Vec round_nearest(Vec x) {
  return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline Vec times_power_of_two(Vec p, Vec n) { return _mm512_scalef_ps(p, n); }
#elif defined(__AVX2__) && defined(__FMA__)
using Vec = __m256;
using Mask = __m256i;        // all bits set in the lanes in use
using Offsets = __m256i;
constexpr int kLanes = 8;
constexpr int kRows = 4;             // 4 x 3 score accumulators, 3 keys and a query: 16 registers
constexpr int kContextVectors = 2;   // 4 x 2 context accumulators
inline Vec zero() { return _mm256_setzero_ps(); }
inline Vec broadcast(float x) { return _mm256_set1_ps(x); }
inline Vec load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline Vec sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
inline Vec mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline Vec max(Vec a, Vec b) { return _mm256_max_ps(a, b); }
inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec fnmadd(Vec a, Vec b, Vec c) { return _mm256_fnmadd_ps(a, b, c); }
inline float reduce_max(Vec v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}
inline float reduce_add(Vec v) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_add_ss(m, _mm_shuffle_ps(m, m, 1)));
}
const Mask kAllLanes = _mm256_set1_epi32(-1);
inline Mask first_lanes(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(count, kLanes))),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Vec load(Mask m, const float* p) { return _mm256_maskload_ps(p, m); }
inline void store(float* p, Mask m, Vec v) { _mm256_maskstore_ps(p, m, v); }
inline Vec select(Mask m, Vec a, Vec b) { return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(m)); }
inline Mask ids_differ(Mask valid, const int32_t* key_ids, int32_t query_id) {
  return _mm256_andnot_si256(
      _mm256_cmpeq_epi32(_mm256_maskload_epi32(key_ids, valid), _mm256_set1_epi32(query_id)),
      valid);
}
inline Offsets strided(int32_t stride) {
  return _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(stride));
}
inline Vec gather(Mask m, const float* base, Offsets offsets) {
  return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, offsets, _mm256_castsi256_ps(m), 4);
}
inline Vec round_nearest(Vec x) {
  return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// p 2^n for whole n in [-126, 0] (the range exp_nonpositive makes): 2^n built in the exponent.
inline Vec times_power_of_two(Vec p, Vec n) {
  return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(
                              _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23)));
}
#else
#error "window_attention.cc is built with -mavx512f or with -mavx2 -mfma"
#endif

// e^x for x <= 0 (scores minus their row maximum): x = n ln2 + r, |r| <= ln2 / 2, e^r by its
// Taylor polynomial, times 2^n. Below -87.3 the result underflows to about 0 as e^x does.
inline Vec exp_nonpositive(Vec x) {
  x = max(x, broadcast(-87.3f));
  const Vec n = round_nearest(mul(x, broadcast(1.44269504088896341f)));
  Vec r = fnmadd(n, broadcast(0.693359375f), x);   // ln2 in two parts
  r = fnmadd(n, broadcast(-2.12194440e-4f), r);
  Vec p = broadcast(1.0f / 5040);
  p = fmadd(p, r, broadcast(1.0f / 720));
  p = fmadd(p, r, broadcast(1.0f / 120));
  p = fmadd(p, r, broadcast(1.0f / 24));
  p = fmadd(p, r, broadcast(1.0f / 6));
  p = fmadd(p, r, broadcast(0.5f));
  p = fmadd(p, r, broadcast(1.0f));
  p = fmadd(p, r, broadcast(1.0f));
  return times_power_of_two(p, n);
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
  Vec acc[kRows][blocks];
  for (int r = 0; r < kRows; ++r)
    for (int b = 0; b < blocks; ++b) acc[r][b] = zero();
  for (int64_t d = 0; d < head_dim; ++d) {
    Vec k[blocks];
    for (int b = 0; b < blocks; ++b) k[b] = load(keys + d * padded + (first + b) * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const Vec qd = broadcast(q[r][d]);
      for (int b = 0; b < blocks; ++b) acc[r][b] = fmadd(qd, k[b], acc[r][b]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int b = 0; b < blocks; ++b) store(scores + r * padded + (first + b) * kLanes, acc[r][b]);
}

// The tile's context for value vectors [first, first + count) of the head: the weights (the
// exponentials in `scores`) times the values, divided by the row sums. Vector vectors_d - 1 is
// partial where head_dim is not a multiple of kLanes (`last_d`).
template <int vectors_d, int first>
inline void tile_context(const Shapes& s, const float* v, const float* scores, int rows,
                         const float (&inverse_sum)[kRows], Mask last_d, float* out) {
  constexpr int count = std::min(kContextVectors, vectors_d - first);
  Vec context[kRows][count];
  for (int r = 0; r < kRows; ++r)
    for (int e = 0; e < count; ++e) context[r][e] = zero();
  for (int64_t j = 0; j < s.tokens; ++j) {
    const float* value = v + j * s.token_stride + first * kLanes;
    Vec vj[count];
    for (int e = 0; e < count; ++e)
      vj[e] = load(first + e == vectors_d - 1 ? last_d : kAllLanes, value + e * kLanes);
    for (int r = 0; r < kRows; ++r) {
      const Vec p = broadcast(scores[r * s.padded + j]);
      for (int e = 0; e < count; ++e) context[r][e] = fmadd(p, vj[e], context[r][e]);
    }
  }
  // A constant trip count keeps `context` in registers: with `r < rows` GCC 12 kept it on the
  // stack and the kernel ran 1.6x slower.
  for (int r = 0; r < kRows; ++r) {
    if (r == rows) break;
    const Vec inverse = broadcast(inverse_sum[r]);
    float* row = out + r * s.heads * s.head_dim + first * kLanes;
    for (int e = 0; e < count; ++e)
      store(row + e * kLanes, first + e == vectors_d - 1 ? last_d : kAllLanes,
            mul(context[r][e], inverse));
  }
  if constexpr (first + count < vectors_d)
    tile_context<vectors_d, first + count>(s, v, scores, rows, inverse_sum, last_d, out);
}

// One window's head; `vectors_d` = the head_dim in vectors (the last one partial where head_dim
// is not a multiple of kLanes).
template <int vectors_d>
void attend_one_head(const Shapes& s, const float* qkv, const float* bias,
                     const int32_t* query_ids, const int32_t* key_ids, float mask_value,
                     float* out, Scratch& scratch) {
  const int64_t n = s.tokens, padded = s.padded, vectors = padded / kLanes, hd = s.head_dim;
  const float* q = qkv;
  const float* k = qkv + s.heads * hd;
  const float* v = qkv + 2 * s.heads * hd;
  const Mask last_d = first_lanes(hd % kLanes ? hd % kLanes : kLanes);
  float* keys = scratch.keys.data();
  float* scores = scratch.scores.data();

  // The keys d-major, kLanes tokens at a time by gathers.
  const Offsets offsets = strided(static_cast<int32_t>(s.token_stride));
  for (int64_t c = 0; c < vectors; ++c) {
    const int64_t j0 = c * kLanes;
    const Mask valid = first_lanes(n - j0);
    for (int64_t d = 0; d < hd; ++d)
      store(keys + d * padded + j0, gather(valid, k + j0 * s.token_stride + d, offsets));
  }
  const Mask last_valid = first_lanes(n % kLanes ? n % kLanes : kLanes);

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
      const int32_t query_id = query_ids ? query_ids[i0 + r] : 0;
      Vec row_max = broadcast(-INFINITY);
      for (int64_t c = 0; c < vectors; ++c) {
        const Mask valid = c == vectors - 1 ? last_valid : kAllLanes;
        Vec b = load(valid, bias_row + c * kLanes);
        if (query_ids)   // bias + mask first, as the formula adds their sum to the scores
          b = select(ids_differ(valid, key_ids + c * kLanes, query_id),
                     add(b, broadcast(mask_value)), b);
        const Vec x = select(valid, add(load(row + c * kLanes), b), broadcast(-INFINITY));
        store(row + c * kLanes, x);
        row_max = max(row_max, x);
      }
      const Vec row_maximum = broadcast(reduce_max(row_max));
      Vec sum = zero();
      for (int64_t c = 0; c < vectors; ++c) {
        const Mask valid = c == vectors - 1 ? last_valid : kAllLanes;
        const Vec e = select(valid, exp_nonpositive(sub(load(row + c * kLanes), row_maximum)),
                             zero());
        store(row + c * kLanes, e);
        sum = add(sum, e);
      }
      inverse_sum[r] = 1.0f / reduce_add(sum);
    }
    tile_context<vectors_d, 0>(s, v, scores, rows, inverse_sum, last_d,
                               out + i0 * s.heads * hd);
  }
}

// attend_one_head for a head_dim of `vectors` vectors (1 .. kMaxHeadDim / kLanes).
template <int vectors_d = 1>
void attend(int64_t vectors, const Shapes& s, const float* qkv, const float* bias,
            const int32_t* query_ids, const int32_t* key_ids, float mask_value, float* out,
            Scratch& scratch) {
  if constexpr (vectors_d < kMaxHeadDim / kLanes) {
    if (vectors > vectors_d)
      return attend<vectors_d + 1>(vectors, s, qkv, bias, query_ids, key_ids, mask_value, out,
                                   scratch);
  }
  attend_one_head<vectors_d>(s, qkv, bias, query_ids, key_ids, mask_value, out, scratch);
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
      attend((hd + kLanes - 1) / kLanes, shapes, x, b, qi, ki, mask_value, o, *scratch);
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
