// Fused CPU selective scan of Mamba, forward and backward.
//
// Gu and Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
// Spaces", arXiv:2312.00752, eq. (2a)-(2b), (4) and Algorithm 2, with
// mamba_ssm v1.2's selective_scan semantics. For every batch row b, channel
// d and state index n:
//
//   Delta_t = softplus(delta_t + delta_bias)       (both optional)
//   h_t     = exp(Delta_t A) h_{t-1} + Delta_t u_t B_t      (eq. 2a, 4)
//   y_t     = sum_n C_t h_t                                 (eq. 2b)
//   out_t   = (y_t + D u_t) SiLU(z_t)                       (D, z optional)
//
// One pass over the inputs: the N states of a block of W channels (one
// SIMD vector each, W = 64 bytes / sizeof(T)) stay in registers while the
// time loop runs, and the step size, the D skip and the gate are computed
// in the same pass. Vectors run over channels, so sequences are
// channels-last ([B, L, D], channels contiguous) and B_t, C_t are broadcast
// scalars (time-invariant B, C: [N, D] rows). SIMD uses GCC/Clang vector
// extensions, which -march=native turns into AVX-512 or AVX2 code; on
// AVX-512 the exponential uses vrndscale and vscalef.
//
// Work items are (batch row, channel range): a range lies inside one group
// of B and C channels and holds at most `split` channels. Items run in
// parallel through at::parallel_for (torch's OpenMP pool, so that
// torch.set_num_threads applies). The result does not depend on the number
// of threads: every item is computed the same way, and the caller adds up
// the per-item partial sums (dA, dB, ...) in a fixed order.
//
// The forward keeps the state every `chunk` steps (checkpoints); the
// backward recomputes one chunk of states and decays at a time from them
// and runs the adjoint recurrence backwards (see backward_block).
//
// Shape legend: B batch, L time, D channels, N state size, G groups of
// channels sharing B and C, J channel ranges (items) per batch row.

// Only the headers needed (torch/extension.h alone takes ~40 s to parse).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

#define SB_INLINE inline __attribute__((always_inline))

// ---------------------------------------------------------------------------
// SIMD vectors of 64 bytes and their elementary functions
// ---------------------------------------------------------------------------
// V: a vector; U: the same with the alignment of T, for unaligned loads and
// stores that keep T's aliasing rules (a memcpy may alias anything, which
// makes the compiler reload every pointer after each store); I: integers
// of T's size.
template <typename T>
struct Simd;

template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(64)));
  typedef float U __attribute__((vector_size(64), aligned(4)));
  typedef int32_t I __attribute__((vector_size(64)));
  static constexpr int W = 16;
};

template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef double U __attribute__((vector_size(64), aligned(8)));
  typedef int64_t I __attribute__((vector_size(64)));
  static constexpr int W = 8;
};

template <typename T>
using Vec = typename Simd<T>::V;

// x in every lane (x - 0 is x for every x, so the subtraction folds away
// and a load becomes an embedded broadcast).
template <typename T>
SB_INLINE Vec<T> splat(T x) {
  return x - Vec<T>{};
}

// Loads and stores of W lanes, or of the first `lanes` (the others read as
// zero): FULL selects at compile time.
template <typename T, bool FULL = true>
SB_INLINE Vec<T> load(const T* p, int lanes = Simd<T>::W) {
  if (FULL || lanes == Simd<T>::W) {
    return *reinterpret_cast<const typename Simd<T>::U*>(p);
  }
  Vec<T> v{};
  std::memcpy(&v, p, lanes * sizeof(T));
  return v;
}

template <typename T, bool FULL = true>
SB_INLINE void store(T* p, const Vec<T>& v, int lanes = Simd<T>::W) {
  if (FULL || lanes == Simd<T>::W) {
    *reinterpret_cast<typename Simd<T>::U*>(p) = v;
  } else {
    std::memcpy(p, &v, lanes * sizeof(T));
  }
}

// Sum of the lanes, by halving.
SB_INLINE float hsum(const Vec<float>& v) {
  typedef float V8 __attribute__((vector_size(32)));
  typedef float V4 __attribute__((vector_size(16)));
  const V8 s8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const V4 s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) +
                __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

SB_INLINE double hsum(const Vec<double>& v) {
  typedef double V4 __attribute__((vector_size(32)));
  const V4 s4 = __builtin_shufflevector(v, v, 0, 1, 2, 3) +
                __builtin_shufflevector(v, v, 4, 5, 6, 7);
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// Lane sums of 16 float vectors at once (lane n of the result sums the
// lanes of v[n]), by four rounds of pairwise two-source shuffles: 45
// operations where 16 separate sums take 128, and the result is one vector.
SB_INLINE Vec<float> lane_sums16(const Vec<float>* v) {
  Vec<float> r8[8], r4[4], r2[2];
  for (int i = 0; i < 8; ++i) {  // 8 lanes for v[2i], then 8 for v[2i+1]
    r8[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5,
                                    6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
            __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12,
                                    13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  }
  for (int i = 0; i < 4; ++i) {  // 4 lanes for each of 4 vectors
    r4[i] = __builtin_shufflevector(r8[2 * i], r8[2 * i + 1], 0, 1, 2, 3, 8,
                                    9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
            __builtin_shufflevector(r8[2 * i], r8[2 * i + 1], 4, 5, 6, 7, 12,
                                    13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  }
  for (int i = 0; i < 2; ++i) {  // 2 lanes for each of 8 vectors
    r2[i] = __builtin_shufflevector(r4[2 * i], r4[2 * i + 1], 0, 1, 4, 5, 8,
                                    9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
            __builtin_shufflevector(r4[2 * i], r4[2 * i + 1], 2, 3, 6, 7, 10,
                                    11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  }
  return __builtin_shufflevector(r2[0], r2[1], 0, 2, 4, 6, 8, 10, 12, 14, 16,
                                 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(r2[0], r2[1], 1, 3, 5, 7, 9, 11, 13, 15, 17,
                                 19, 21, 23, 25, 27, 29, 31);
}

// 2^t = 2^k 2^f with k = round(t), |f| <= 1/2. The polynomial for 2^f
// keeps 1 + f ln 2 exact, so that decays close to 1, whose errors add up
// over long sequences, are not biased: in float, 1 + f ln2 + f^2 q(f) with
// q of degree 3 fitted to minimise the relative error on [-1/2, 1/2]
// (1.1e-7, under one ulp at the interval's ends); in double, the Taylor
// series to f^13 (truncation 4e-18). Inputs are t = x log2(e): the scan
// scales A by log2(e) once per block, so that a decay exp(Delta_t A) costs
// one multiply before this function.
template <typename T>
struct Exp2;

constexpr long double LN2 = 0.693147180559945309417232121458176568L;
constexpr long double LOG2E = 1.442695040888963407359924681001892137L;

template <>
struct Exp2<float> {
  static constexpr int DEG = 5, MANTISSA = 23, BIAS = 127;
  static constexpr float MAGIC = 12582912.0f;  // 1.5 * 2^23
  static constexpr std::array<float, DEG + 1> coefficients() {
    return {1.0f,        static_cast<float>(LN2), 0.24022282f,
            0.0555056f,  0.00966969f,             0.00133002f};
  }
};

template <>
struct Exp2<double> {
  static constexpr int DEG = 13, MANTISSA = 52, BIAS = 1023;
  static constexpr double MAGIC = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr std::array<double, DEG + 1> coefficients() {
    std::array<double, DEG + 1> c{};
    long double term = 1;
    for (int i = 0; i <= DEG; ++i) {
      c[i] = static_cast<double>(term);  // ln(2)^i / i!
      term *= LN2 / (i + 1);
    }
    return c;
  }
};

template <typename T>
SB_INLINE Vec<T> exp2_fraction(const Vec<T>& f) {
  constexpr auto c = Exp2<T>::coefficients();
  Vec<T> p = splat(c[Exp2<T>::DEG]);
  for (int i = Exp2<T>::DEG - 1; i >= 0; --i) {
    p = p * f + c[i];
  }
  return p;
}

#if defined(__AVX512F__)
// AVX-512: k by vrndscale, 2^k p by vscalef, which also gives exactly 0
// below the normal range (the decay has underflowed) and inf above it, and
// lets NaN through, without clamping.
SB_INLINE Vec<float> vexp2(const Vec<float>& t) {
  const __m512 k = _mm512_roundscale_ps(
      (__m512)t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const Vec<float> p = exp2_fraction<float>(t - (Vec<float>)k);
  return (Vec<float>)_mm512_scalef_ps((__m512)p, k);
}

SB_INLINE Vec<double> vexp2(const Vec<double>& t) {
  const __m512d k = _mm512_roundscale_pd(
      (__m512d)t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const Vec<double> p = exp2_fraction<double>(t - (Vec<double>)k);
  return (Vec<double>)_mm512_scalef_pd((__m512d)p, k);
}
#else
// Portable: k is rounded by adding 1.5 * 2^MANTISSA, whose low mantissa
// bits then hold k, and 2^k is built from them. t is clamped so that 2^k
// is exactly +0 below the normal range and +inf above it; NaN goes through
// (the clamps keep the first operand when the comparison is false).
template <typename T>
SB_INLINE Vec<T> vexp2_portable(Vec<T> t) {
  typedef typename Simd<T>::I I;
  const Vec<T> hi = splat(T(Exp2<T>::BIAS + 1));
  const Vec<T> lo = splat(T(-Exp2<T>::BIAS));
  t = t > hi ? hi : t;
  t = t < lo ? lo : t;
  const Vec<T> magic = splat(Exp2<T>::MAGIC);
  const Vec<T> y = t + magic;
  const Vec<T> k = y - magic;
  const Vec<T> p = exp2_fraction<T>(t - k);
  const I bits = ((I)y + Exp2<T>::BIAS) << Exp2<T>::MANTISSA;
  return p * (Vec<T>)bits;
}

SB_INLINE Vec<float> vexp2(const Vec<float>& t) {
  return vexp2_portable<float>(t);
}

SB_INLINE Vec<double> vexp2(const Vec<double>& t) {
  return vexp2_portable<double>(t);
}
#endif

template <typename T>
SB_INLINE Vec<T> vexp(const Vec<T>& x) {
  return vexp2(x * static_cast<T>(LOG2E));
}

// log(1 + e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) <= 1/3: no
// cancellation for small e, and the odd series converges fast (`terms`
// terms leave a relative error below s^(2 terms) / (2 terms + 1)).
template <typename T>
SB_INLINE Vec<T> log1p_unit(const Vec<T>& e) {
  constexpr int terms = sizeof(T) == 4 ? 7 : 17;
  const Vec<T> s = e / (e + T(2));
  const Vec<T> q = s * s;
  Vec<T> p = splat(T(1) / T(2 * terms - 1));
  for (int i = terms - 2; i >= 0; --i) {
    p = p * q + T(1) / T(2 * i + 1);
  }
  return T(2) * s * p;
}

// torch's softplus (beta 1, threshold 20): v above 20, else log(1 + e^v)
// = max(v, 0) + log(1 + e^-|v|).
template <typename T>
SB_INLINE Vec<T> softplus(const Vec<T>& v) {
  const Vec<T> zero{};
  const Vec<T> magnitude = v < zero ? -v : v;
  const Vec<T> smooth =
      (v > zero ? v : zero) + log1p_unit<T>(vexp<T>(-magnitude));
  return v > T(20) ? v : smooth;
}

template <typename T>
SB_INLINE Vec<T> sigmoid(const Vec<T>& v) {
  return T(1) / (vexp<T>(-v) + T(1));
}

// d softplus / dv as torch computes it: 1 above the threshold.
template <typename T>
SB_INLINE Vec<T> softplus_slope(const Vec<T>& v) {
  return v > T(20) ? splat(T(1)) : sigmoid<T>(v);
}

// ---------------------------------------------------------------------------
// The problem: pointers and strides (in elements)
// ---------------------------------------------------------------------------
// A sequence [B, L, D] whose channels are contiguous (data null if absent).
template <typename T>
struct Seq {
  T* data = nullptr;
  int64_t sb = 0, st = 0;
  SB_INLINE T* at(int64_t b, int64_t t, int64_t d) const {
    return data + b * sb + t * st + d;
  }
};

template <typename T>
Seq<T> seq_of(const at::Tensor& x) {
  Seq<T> s;
  if (x.defined()) {
    TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1,
                "selective_scan_cpp: sequences must be [B, L, D] with "
                "contiguous channels");
    s.data = x.data_ptr<T>();
    s.sb = x.stride(0);
    s.st = x.stride(1);
  }
  return s;
}

// B or C: time-varying [B, G, N, L] (any strides) or time-invariant [N, D]
// (contiguous).
template <typename T>
struct Proj {
  const T* data = nullptr;
  bool varying = false;
  int64_t groups = 1, sb = 0, sg = 0, sn = 0, st = 0;
};

template <typename T>
Proj<T> proj_of(const at::Tensor& x) {
  Proj<T> p;
  p.data = x.data_ptr<T>();
  p.varying = x.dim() == 4;
  if (p.varying) {
    p.groups = x.size(1);
    p.sb = x.stride(0);
    p.sg = x.stride(1);
    p.sn = x.stride(2);
    p.st = x.stride(3);
  } else {
    TORCH_CHECK(x.dim() == 2 && x.is_contiguous(),
                "selective_scan_cpp: time-invariant B/C must be [N, D]");
  }
  return p;
}

template <typename T>
struct Problem {
  int64_t batch = 0, length = 0, channels = 0, nstate = 0;
  int64_t chunk = 0, n_chunks = 0;
  // channel ranges: J = groups * pieces per batch row
  int64_t group_size = 0, pieces = 0, split = 0, ranges = 0;
  Seq<T> u, delta, z;
  const T* A = nullptr;     // [N, D]
  const T* D = nullptr;     // [D] or null
  const T* bias = nullptr;  // [D] or null
  Proj<T> B, C;
  bool softplus = false;

  // channels [lo, hi) of range j
  void range(int64_t j, int64_t& lo, int64_t& hi) const {
    const int64_t g = j / pieces, piece = j % pieces;
    lo = g * group_size + piece * split;
    hi = std::min(lo + split, (g + 1) * group_size);
  }
};

template <typename T>
Problem<T> make_problem(const at::Tensor& u, const at::Tensor& delta,
                        const at::Tensor& A, const at::Tensor& B,
                        const at::Tensor& C,
                        const c10::optional<at::Tensor>& D,
                        const c10::optional<at::Tensor>& z,
                        const c10::optional<at::Tensor>& delta_bias,
                        bool delta_softplus, int64_t chunk, int64_t split) {
  Problem<T> P;
  P.batch = u.size(0);
  P.length = u.size(1);
  P.channels = u.size(2);
  P.nstate = A.size(0);
  TORCH_CHECK(A.dim() == 2 && A.size(1) == P.channels && A.is_contiguous(),
              "selective_scan_cpp: A must be [N, D] contiguous");
  TORCH_CHECK(chunk > 0 && split > 0, "selective_scan_cpp: bad blocking");
  P.chunk = chunk;
  P.n_chunks = (P.length + chunk - 1) / chunk;
  P.u = seq_of<T>(u);
  P.delta = seq_of<T>(delta);
  P.z = seq_of<T>(z.has_value() ? *z : at::Tensor());
  P.A = A.data_ptr<T>();
  P.D = D.has_value() ? D->data_ptr<T>() : nullptr;
  P.bias = delta_bias.has_value() ? delta_bias->data_ptr<T>() : nullptr;
  P.B = proj_of<T>(B);
  P.C = proj_of<T>(C);
  P.softplus = delta_softplus;
  const int64_t groups = std::lcm(P.B.groups, P.C.groups);
  TORCH_CHECK(P.channels % groups == 0,
              "selective_scan_cpp: groups must divide the channels");
  P.group_size = P.channels / groups;
  P.split = split;
  P.pieces = (P.group_size + split - 1) / split;
  P.ranges = groups * P.pieces;
  return P;
}

// ---------------------------------------------------------------------------
// Blocks of W channels
// ---------------------------------------------------------------------------
// Block i of the channel range [lo, hi) of batch row b. An item runs its
// blocks in channel order over one chunk of steps, then the next chunk.
template <typename T>
struct Block {
  int64_t b = 0, d0 = 0;
  int lanes = 0;
  // B_t, C_t: the chunk's rows [chunk, N] gathered by gather_rows
  // (time-varying), or [N, D] rows from channel d0 (time-invariant)
  const T* B = nullptr;
  const T* C = nullptr;
  const Vec<T>* A = nullptr;   // A of the block's channels, [N]
  const Vec<T>* A2 = nullptr;  // A log2(e), [N]
  // where the next block of the item starts (channel, step offset); its
  // inputs are prefetched while this block runs
  int64_t next_d0 = 0, next_dt = 0;
};

template <typename T>
Block<T> block_of(int64_t b, int64_t lo, int64_t hi, int64_t i,
                  int64_t chunk_step) {
  constexpr int W = Simd<T>::W;
  Block<T> k;
  k.b = b;
  k.d0 = lo + i * W;
  k.lanes = static_cast<int>(std::min<int64_t>(W, hi - k.d0));
  const bool last = k.d0 + W >= hi;
  k.next_d0 = last ? lo : k.d0 + W;
  k.next_dt = last ? chunk_step : 0;
  return k;
}

// The B_t (or C_t) values of steps t0..t1-1 of batch row b for the group of
// channel d, copied to contiguous [t1 - t0, N] rows: the blocks of an item
// all read them (from L1) at fixed offsets, whatever the caller's strides.
template <typename T>
void gather_rows(const Problem<T>& P, const Proj<T>& p, int64_t b, int64_t d,
                 int64_t t0, int64_t t1, T* rows) {
  const int64_t N = P.nstate;
  const int64_t g = d / (P.channels / p.groups);
  const T* src = p.data + b * p.sb + g * p.sg;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t n = 0; n < N; ++n) {
      rows[(t - t0) * N + n] = src[n * p.sn + t * p.st];
    }
  }
}

// A (scale 1) or A log2(e) (scale LOG2E) for every block of the channel
// range [lo, hi), as contiguous [blocks, N] vectors.
template <typename T>
std::vector<Vec<T>> blocks_of_A(const Problem<T>& P, int64_t lo, int64_t hi,
                                T scale) {
  constexpr int W = Simd<T>::W;
  const int64_t N = P.nstate, blocks = (hi - lo + W - 1) / W;
  std::vector<Vec<T>> A(blocks * N);
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t d0 = lo + i * W;
    const int lanes = static_cast<int>(std::min<int64_t>(W, hi - d0));
    for (int64_t n = 0; n < N; ++n) {
      A[i * N + n] = load<T, false>(P.A + n * P.channels + d0, lanes) * scale;
    }
  }
  return A;
}

// A [B, L, D] sequence seen from one block over one chunk: step j is at
// row + j * stride. Rows are D channels apart, so a block's accesses (one
// 64-byte line per step, a new 4 KB page every step or two) defeat the
// hardware prefetcher: at each step the block prefetches the line that the
// next block of its item reads at the same step. Without a next block (or
// sequence), `next` points to a dummy line with stride 0, so that the
// prefetch needs no branch.
alignas(64) static const char prefetch_dummy[64] = {};

template <typename T>
struct Lane {
  T* row = nullptr;
  int64_t stride = 0;
  const char* next = prefetch_dummy;
  int64_t next_stride = 0;  // bytes
  SB_INLINE T* at(int64_t j) const { return row + j * stride; }
  SB_INLINE void prefetch(int64_t j) const {
    __builtin_prefetch(next + j * next_stride);
  }
  SB_INLINE void prefetch_write(int64_t j) const {
    __builtin_prefetch(next + j * next_stride, 1);
  }
};

// The lane of a sequence for steps t0..t1-1 of block k (row null if the
// sequence is absent). The next block's steps must lie within [0, L) to be
// prefetched.
template <typename T>
Lane<T> lane_of(T* data, int64_t sb, int64_t st, const Block<T>& k,
                int64_t t0, int64_t t1, int64_t L) {
  Lane<T> lane;
  if (data) {
    lane.row = data + k.b * sb + t0 * st + k.d0;
    lane.stride = st;
    const int64_t next_t0 = t0 + k.next_dt;
    if (next_t0 >= 0 && next_t0 + (t1 - t0) <= L) {
      lane.next = reinterpret_cast<const char*>(data + k.b * sb +
                                                next_t0 * st + k.next_d0);
      lane.next_stride = st * static_cast<int64_t>(sizeof(T));
    }
  }
  return lane;
}

template <typename T>
Lane<T> lane_of(const Seq<T>& x, const Block<T>& k, int64_t t0, int64_t t1,
                int64_t L) {
  return lane_of(x.data, x.sb, x.st, k, t0, t1, L);
}

// A contiguous [B, L, D] output (or gradient).
template <typename T>
Lane<T> lane_of(T* data, const Block<T>& k, int64_t t0, int64_t t1,
                int64_t L, int64_t D) {
  return lane_of(data, L * D, D, k, t0, t1, L);
}

// Kernel variants: FAST for full blocks with time-varying B and C (the
// Mamba mixer's case), with NF = 16 (N fixed at compile time, so that the
// states stay in registers) or NF = 0 (any N); anything else takes the
// general variant (partial blocks, time-invariant B or C).
template <typename T, typename F>
SB_INLINE void dispatch(const Problem<T>& P, const Block<T>& k, F&& f) {
  const bool fast = k.lanes == Simd<T>::W && P.B.varying && P.C.varying;
  if (fast && P.nstate == 16) {
    f(std::integral_constant<int, 16>{}, std::true_type{});
  } else if (fast) {
    f(std::integral_constant<int, 0>{}, std::true_type{});
  } else {
    f(std::integral_constant<int, 0>{}, std::false_type{});
  }
}

// B_t[n] (or C_t[n]) for the lanes of a block at step j of the chunk: a
// broadcast scalar (time-varying; always on the FAST path) or a row.
template <typename T, bool FAST>
SB_INLINE Vec<T> proj_at(bool varying, const T* rows, int64_t j, int64_t n,
                         int64_t N, int64_t D, int lanes) {
  if (FAST || varying) {
    return splat(rows[j * N + n]);
  }
  return load<T, false>(rows + n * D, lanes);
}

// Per-step quantities of one block over one chunk that do not depend on
// the state, computed first in a separate pass (the loads of the sequences,
// the softplus and the sigmoids, with much parallelism across steps), so
// that the state loops, which carry the long dependency chains, only read
// them from L1. Each is [chunk] vectors.
template <typename T>
struct StepBuffers {
  std::vector<Vec<T>> dt;     // Delta_t
  std::vector<Vec<T>> x;      // Delta_t u_t
  std::vector<Vec<T>> skip;   // D u_t
  std::vector<Vec<T>> gate;   // SiLU(z_t) (forward)
  std::vector<Vec<T>> u;      // u_t (backward)
  std::vector<Vec<T>> dy;     // dy_t = dout_t SiLU(z_t) (backward)
  std::vector<Vec<T>> dz;     // dout_t SiLU'(z_t): dz_t = it (y_t + D u_t)
  std::vector<Vec<T>> slope;  // d Delta_t / d delta_t (backward)
  explicit StepBuffers(int64_t chunk)
      : dt(chunk), x(chunk), skip(chunk), gate(chunk), u(chunk), dy(chunk),
        dz(chunk), slope(chunk) {}
};

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------
// Steps t0..t1-1 of block k from its state h [N] (updated in place); writes
// out [B, L, D].
template <typename T, int NF, bool FAST>
void forward_block(const Problem<T>& P, const Block<T>& k, int64_t t0,
                   int64_t t1, Vec<T>* h_mem, T* out, StepBuffers<T>& buf) {
  constexpr int ACC = NF > 0 ? 2 : 1;  // partial sums of y: shorter chains
  const int64_t N = NF > 0 ? NF : P.nstate;
  const int64_t D = P.channels, L = P.length, steps = t1 - t0;
  const int lanes = k.lanes;
  const bool softplus_on = P.softplus, gated = P.z.data != nullptr;
  const bool B_varying = P.B.varying, C_varying = P.C.varying;
  Vec<T>* dts = buf.dt.data();
  Vec<T>* xs = buf.x.data();
  Vec<T>* skips = buf.skip.data();
  Vec<T>* gates = buf.gate.data();

  const Lane<T> u = lane_of(P.u, k, t0, t1, L);
  const Lane<T> delta = lane_of(P.delta, k, t0, t1, L);
  const Lane<T> z = lane_of(P.z, k, t0, t1, L);
  const Lane<T> o = lane_of(out, k, t0, t1, L, D);

  // Delta_t, Delta_t u_t, D u_t and SiLU(z_t) of the chunk
  {
    const Vec<T> bias =
        P.bias ? load<T, FAST>(P.bias + k.d0, lanes) : Vec<T>{};
    const Vec<T> skip = P.D ? load<T, FAST>(P.D + k.d0, lanes) : Vec<T>{};
    for (int64_t j = 0; j < steps; ++j) {
      const Vec<T> uu = load<T, FAST>(u.at(j), lanes);
      const Vec<T> raw = load<T, FAST>(delta.at(j), lanes) + bias;
      const Vec<T> dt = softplus_on ? softplus<T>(raw) : raw;
      dts[j] = dt;
      xs[j] = dt * uu;
      skips[j] = skip * uu;
      if (gated) {
        const Vec<T> zz = load<T, FAST>(z.at(j), lanes);
        gates[j] = zz * sigmoid<T>(zz);
      }
    }
  }

  // eq. (2a)-(2b), the D skip and the gate; the prefetches for the next
  // block are spread over this loop, which has the most work per step
  const T* B_rows = k.B;
  const T* C_rows = k.C;
  const Vec<T>* A2 = k.A2;
  Vec<T> h_reg[NF > 0 ? NF : 1];
  Vec<T>* h = h_mem;
  if constexpr (NF > 0) {
    for (int n = 0; n < NF; ++n) h_reg[n] = h_mem[n];
    h = h_reg;
  }
  for (int64_t j = 0; j < steps; ++j) {
    u.prefetch(j);
    delta.prefetch(j);
    z.prefetch(j);
    o.prefetch_write(j);
    const Vec<T> dt = dts[j];
    const Vec<T> x = xs[j];
    Vec<T> y[ACC] = {};
#pragma GCC unroll 16
    for (int64_t n = 0; n < N; ++n) {
      const Vec<T> decay = vexp2(dt * A2[n]);  // exp(Delta_t A), eq. (4)
      const Vec<T> Bn =
          proj_at<T, FAST>(B_varying, B_rows, j, n, N, D, lanes);
      const Vec<T> Cn =
          proj_at<T, FAST>(C_varying, C_rows, j, n, N, D, lanes);
      h[n] = decay * h[n] + x * Bn;  // eq. (2a)
      y[n % ACC] += h[n] * Cn;       // eq. (2b)
    }
    Vec<T> result = y[0];
    for (int i = 1; i < ACC; ++i) result += y[i];
    result += skips[j];
    if (gated) result *= gates[j];
    store<T, FAST>(o.at(j), result, lanes);
  }
  if constexpr (NF > 0) {
    for (int n = 0; n < NF; ++n) h_mem[n] = h_reg[n];
  }
}

// One work item: batch row b, channels [lo, hi), all steps, chunk by chunk
// (the blocks of a chunk share the chunk's B_t and C_t rows).
template <typename T>
void forward_item(const Problem<T>& P, int64_t b, int64_t lo, int64_t hi,
                  T* out, T* last, T* checkpoints) {
  constexpr int W = Simd<T>::W;
  const int64_t N = P.nstate, D = P.channels, K = P.chunk;
  const int64_t blocks = (hi - lo + W - 1) / W;
  std::vector<Vec<T>> state(blocks * N, Vec<T>{});  // h, [blocks, N]
  const auto A2 = blocks_of_A(P, lo, hi, static_cast<T>(LOG2E));
  std::vector<T> B_rows(P.B.varying ? K * N : 0);
  std::vector<T> C_rows(P.C.varying ? K * N : 0);
  StepBuffers<T> buf(K);
  for (int64_t c = 0; c < P.n_chunks; ++c) {
    const int64_t t0 = c * K, t1 = std::min(t0 + K, P.length);
    if (P.B.varying) gather_rows(P, P.B, b, lo, t0, t1, B_rows.data());
    if (P.C.varying) gather_rows(P, P.C, b, lo, t0, t1, C_rows.data());
    for (int64_t i = 0; i < blocks; ++i) {
      Block<T> k = block_of<T>(b, lo, hi, i, K);
      k.B = P.B.varying ? B_rows.data() : P.B.data + k.d0;
      k.C = P.C.varying ? C_rows.data() : P.C.data + k.d0;
      k.A2 = A2.data() + i * N;
      Vec<T>* h = state.data() + i * N;
      if (checkpoints) {  // h_{t0 - 1}, [n_chunks, B, N, D]
        T* dst = checkpoints + (c * P.batch + b) * N * D + k.d0;
        for (int64_t n = 0; n < N; ++n) {
          store<T, false>(dst + n * D, h[n], k.lanes);
        }
      }
      dispatch(P, k, [&](auto nf, auto fast) {
        forward_block<T, decltype(nf)::value, decltype(fast)::value>(
            P, k, t0, t1, h, out, buf);
      });
    }
  }
  for (int64_t i = 0; i < blocks; ++i) {  // h_{L-1}, [B, N, D]
    const Block<T> k = block_of<T>(b, lo, hi, i, 0);
    for (int64_t n = 0; n < N; ++n) {
      store<T, false>(last + (b * N + n) * D + k.d0, state[i * N + n],
                      k.lanes);
    }
  }
}

template <typename T>
void run_forward(const Problem<T>& P, T* out, T* last, T* checkpoints) {
  at::parallel_for(0, P.batch * P.ranges, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t lo, hi;
      P.range(i % P.ranges, lo, hi);
      forward_item<T>(P, i / P.ranges, lo, hi, out, last, checkpoints);
    }
  });
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------
// With G_t = dLoss/dh_t, x_t = Delta_t u_t, a_t = exp(Delta_t A) and
// dy_t = dout_t SiLU(z_t) (dout_t without a gate):
//   G_t = C_t dy_t + a_{t+1} G_{t+1}          (reverse scan; G_L = dlast)
//   dC_t += dy_t h_t       dB_t += x_t G_t     (summed over channels)
//   dx_t = sum_n B_t G_t   du_t = dx_t Delta_t + D dy_t
//   M_t = G_t a_t h_{t-1}  dDelta_t = dx_t u_t + sum_n A M_t
//   dA += Delta_t M_t      (summed over b, t)
//   dz_t = dout_t (y_t + D u_t) SiLU'(z_t)    dD += dy_t u_t
// and dDelta goes through the softplus (times its slope) to delta and the
// bias. Per chunk and block: a pass computes the per-step quantities that
// do not depend on the state (dy_t among them); a forward pass recomputes
// a_t and h_t from the checkpoint and gives y_t, hence dz_t, and dC_t; a
// reverse pass runs the recurrence of G.

// Outputs and saved inputs of the backward.
template <typename T>
struct Grads {
  T* du = nullptr;      // [B, L, D]
  T* ddelta = nullptr;  // [B, L, D]
  T* dz = nullptr;      // [B, L, D] or null
  T* dA = nullptr;      // partial per batch row, [B, N, D]
  T* dB = nullptr;      // [B, J, L, N] (varying) or [B, N, D] (invariant)
  T* dC = nullptr;
  T* dD = nullptr;      // partial per batch row, [B, D] or null
  T* dbias = nullptr;   // partial per batch row, [B, D] or null
  const T* dout = nullptr;         // [B, L, D]
  const T* dlast = nullptr;        // [B, N, D] or null
  const T* checkpoints = nullptr;  // [n_chunks, B, N, D]
};

// Accumulators of one block, kept across chunks.
template <typename T>
struct BlockGrads {
  Vec<T>* carry;   // a_{t+1} G_{t+1}, [N]
  Vec<T>* dA;      // [N]
  Vec<T>* dB_inv;  // [N] (time-invariant B) or null
  Vec<T>* dC_inv;  // [N] (time-invariant C) or null
  Vec<T>* dD;      // [1]
  Vec<T>* dbias;   // [1]
  T* dB_rows;      // the item's dB_t partial sums of the chunk, [chunk, N]
  T* dC_rows;      // (time-varying B, C)
};

// Scratch of one item, for one chunk of one block at a time.
template <typename T>
struct Scratch {
  std::vector<Vec<T>> states;  // h_{t0-1} .. h_{t1-1}, [chunk + 1, N]
  std::vector<Vec<T>> decays;  // a_t, then M_t, [chunk, N]
  // dB_t, dC_t summed over the blocks of the chunk that do not add their
  // lane sums to the item's rows directly, [chunk, N]
  std::vector<Vec<T>> dB, dC;
  bool pending = false;  // whether dB, dC hold sums to add to the rows
  std::vector<T> B_rows, C_rows;  // [chunk, N] (time-varying)
  StepBuffers<T> steps;
  explicit Scratch(int64_t chunk) : steps(chunk) {}
};

template <typename T, int NF, bool FAST>
void backward_block(const Problem<T>& P, const Grads<T>& g, Scratch<T>& s,
                    const Block<T>& k, int64_t c, const BlockGrads<T>& acc) {
  constexpr int ACC = NF > 0 ? 2 : 1;  // partial sums: shorter chains
  const int64_t N = NF > 0 ? NF : P.nstate;
  const int64_t D = P.channels, L = P.length;
  const int64_t t0 = c * P.chunk, t1 = std::min(t0 + P.chunk, L);
  const int64_t steps = t1 - t0;
  const int lanes = k.lanes;
  const bool softplus_on = P.softplus, gated = P.z.data != nullptr;
  const bool B_varying = FAST || P.B.varying;
  const bool C_varying = FAST || P.C.varying;
  // the fast float kernel adds the lane sums of dB_t and dC_t to the item's
  // rows at each step (lane_sums16): nothing [chunk, N] to keep in L1
  constexpr bool ROW_SUMS = FAST && NF == 16 && std::is_same_v<T, float>;
  if (!ROW_SUMS && (B_varying || C_varying)) s.pending = true;
  Vec<T>* dts = s.steps.dt.data();
  Vec<T>* xs = s.steps.x.data();
  Vec<T>* skips = s.steps.skip.data();
  Vec<T>* us = s.steps.u.data();
  Vec<T>* dys = s.steps.dy.data();
  Vec<T>* dz_factors = s.steps.dz.data();
  Vec<T>* slopes = s.steps.slope.data();
  const Vec<T> skip = P.D ? load<T, FAST>(P.D + k.d0, lanes) : Vec<T>{};

  const Lane<T> u = lane_of(P.u, k, t0, t1, L);
  const Lane<T> delta = lane_of(P.delta, k, t0, t1, L);
  const Lane<T> z = lane_of(P.z, k, t0, t1, L);
  const Lane<T> dout = lane_of(const_cast<T*>(g.dout), k, t0, t1, L, D);
  const Lane<T> dz = lane_of(g.dz, k, t0, t1, L, D);
  const Lane<T> du = lane_of(g.du, k, t0, t1, L, D);
  const Lane<T> ddelta = lane_of(g.ddelta, k, t0, t1, L, D);

  // per-step quantities; dD
  {
    const Vec<T> bias =
        P.bias ? load<T, FAST>(P.bias + k.d0, lanes) : Vec<T>{};
    Vec<T> dD = *acc.dD;
    for (int64_t j = 0; j < steps; ++j) {
      const Vec<T> uu = load<T, FAST>(u.at(j), lanes);
      const Vec<T> raw = load<T, FAST>(delta.at(j), lanes) + bias;
      const Vec<T> dt = softplus_on ? softplus<T>(raw) : raw;
      const Vec<T> go = load<T, FAST>(dout.at(j), lanes);
      Vec<T> dy = go;
      if (gated) {
        const Vec<T> zz = load<T, FAST>(z.at(j), lanes);
        const Vec<T> sig = sigmoid<T>(zz);
        dy = go * (zz * sig);                                  // SiLU(z)
        dz_factors[j] = go * (sig * (zz * (T(1) - sig) + T(1)));  // SiLU'
      }
      dts[j] = dt;
      xs[j] = dt * uu;
      skips[j] = skip * uu;
      us[j] = uu;
      dys[j] = dy;
      slopes[j] = softplus_on ? softplus_slope<T>(raw) : splat(T(1));
      dD += dy * uu;
    }
    *acc.dD = dD;
  }

  // forward: a_t, h_t from the checkpoint h_{t0-1}; dz_t, dC_t (and the
  // next block's inputs are prefetched)
  const T* B_rows = k.B;
  const T* C_rows = k.C;
  const Vec<T>* A2 = k.A2;
  Vec<T>* hs = s.states.data();
  Vec<T>* decays = s.decays.data();
  {
    Vec<T>* dC_chunk = s.dC.data();
    const T* h0 = g.checkpoints + (c * P.batch + k.b) * N * D + k.d0;
    for (int64_t n = 0; n < N; ++n) {
      hs[n] = load<T, false>(h0 + n * D, lanes);
    }
    for (int64_t j = 0; j < steps; ++j) {
      u.prefetch(j);
      delta.prefetch(j);
      z.prefetch(j);
      dout.prefetch(j);
      dz.prefetch_write(j);
      const Vec<T> dt = dts[j];
      const Vec<T> x = xs[j];
      const Vec<T> dy = dys[j];
      const Vec<T>* prev = hs + j * N;  // h_{t-1}
      Vec<T>* next = hs + (j + 1) * N;
      Vec<T>* a = decays + j * N;
      Vec<T>* dC_t = C_varying ? dC_chunk + j * N : acc.dC_inv;
      Vec<T> y[ACC] = {};
      Vec<T> terms[ROW_SUMS ? 16 : 1];
#pragma GCC unroll 16
      for (int64_t n = 0; n < N; ++n) {
        a[n] = vexp2(dt * A2[n]);
        const Vec<T> Bn =
            proj_at<T, FAST>(B_varying, B_rows, j, n, N, D, lanes);
        const Vec<T> Cn =
            proj_at<T, FAST>(C_varying, C_rows, j, n, N, D, lanes);
        const Vec<T> hn = a[n] * prev[n] + x * Bn;
        next[n] = hn;
        y[n % ACC] += hn * Cn;
        if constexpr (ROW_SUMS) {
          terms[n] = dy * hn;
        } else {
          dC_t[n] += dy * hn;
        }
      }
      if constexpr (ROW_SUMS) {
        T* row = acc.dC_rows + j * N;
        store<T>(row, load<T>(row) + lane_sums16(terms));
      }
      if (gated) {
        Vec<T> o = y[0];
        for (int i = 1; i < ACC; ++i) o += y[i];
        store<T, FAST>(dz.at(j), dz_factors[j] * (o + skips[j]), lanes);
      }
    }
  }

  // reverse: the adjoint recurrence, backwards through the chunk; M_t
  // replaces a_t in the decays buffer
  {
    const Vec<T>* A = k.A;
    Vec<T>* dB_chunk = s.dB.data();
    Vec<T>* carry = acc.carry;
    Vec<T> dbias = *acc.dbias;
    for (int64_t j = steps - 1; j >= 0; --j) {
      du.prefetch_write(j);
      ddelta.prefetch_write(j);
      const Vec<T> x = xs[j];
      const Vec<T> dy = dys[j];
      const Vec<T>* prev = hs + j * N;  // h_{t-1}
      Vec<T>* a = decays + j * N;
      Vec<T>* dB_t = B_varying ? dB_chunk + j * N : acc.dB_inv;
      Vec<T> dx[ACC] = {}, ddt[ACC] = {};
      Vec<T> terms[ROW_SUMS ? 16 : 1];
#pragma GCC unroll 16
      for (int64_t n = 0; n < N; ++n) {
        const Vec<T> Bn =
            proj_at<T, FAST>(B_varying, B_rows, j, n, N, D, lanes);
        const Vec<T> Cn =
            proj_at<T, FAST>(C_varying, C_rows, j, n, N, D, lanes);
        const Vec<T> G = Cn * dy + carry[n];
        if constexpr (ROW_SUMS) {
          terms[n] = x * G;
        } else {
          dB_t[n] += x * G;
        }
        dx[n % ACC] += Bn * G;
        const Vec<T> aG = a[n] * G;
        carry[n] = aG;
        const Vec<T> M = aG * prev[n];
        a[n] = M;
        ddt[n % ACC] += A[n] * M;
      }
      if constexpr (ROW_SUMS) {
        T* row = acc.dB_rows + j * N;
        store<T>(row, load<T>(row) + lane_sums16(terms));
      }
      Vec<T> dx_sum = dx[0], ddt_sum = ddt[0];
      for (int i = 1; i < ACC; ++i) {
        dx_sum += dx[i];
        ddt_sum += ddt[i];
      }
      store<T, FAST>(du.at(j), dx_sum * dts[j] + skip * dy, lanes);
      ddt_sum = (ddt_sum + dx_sum * us[j]) * slopes[j];
      store<T, FAST>(ddelta.at(j), ddt_sum, lanes);
      dbias += ddt_sum;
    }
    *acc.dbias = dbias;
  }

  // dA += sum_t Delta_t M_t
  Vec<T> dA_reg[NF > 0 ? NF : 1];
  Vec<T>* dA = acc.dA;
  if constexpr (NF > 0) {
    for (int n = 0; n < NF; ++n) dA_reg[n] = acc.dA[n];
    dA = dA_reg;
  }
  for (int64_t j = 0; j < steps; ++j) {
    const Vec<T> dt = dts[j];
#pragma GCC unroll 16
    for (int64_t n = 0; n < N; ++n) dA[n] += dt * decays[j * N + n];
  }
  if constexpr (NF > 0) {
    for (int n = 0; n < NF; ++n) acc.dA[n] = dA_reg[n];
  }
}

template <typename T>
void backward_item(const Problem<T>& P, const Grads<T>& g, int64_t b,
                   int64_t j_range, int64_t lo, int64_t hi) {
  constexpr int W = Simd<T>::W;
  const int64_t N = P.nstate, D = P.channels, L = P.length, K = P.chunk;
  const int64_t blocks = (hi - lo + W - 1) / W;
  const Vec<T> zero{};
  std::vector<Vec<T>> carry(blocks * N, zero), dA(blocks * N, zero);
  std::vector<Vec<T>> dB_inv(P.B.varying ? 0 : blocks * N, zero);
  std::vector<Vec<T>> dC_inv(P.C.varying ? 0 : blocks * N, zero);
  std::vector<Vec<T>> dD(blocks, zero), dbias(blocks, zero);
  const auto A1 = blocks_of_A(P, lo, hi, T(1));
  const auto A2 = blocks_of_A(P, lo, hi, static_cast<T>(LOG2E));
  Scratch<T> s(K);
  s.states.resize((K + 1) * N);
  s.decays.resize(K * N);
  s.dB.resize(P.B.varying ? K * N : 0);
  s.dC.resize(P.C.varying ? K * N : 0);
  s.B_rows.resize(P.B.varying ? K * N : 0);
  s.C_rows.resize(P.C.varying ? K * N : 0);
  if (g.dlast) {  // G_{L-1} starts from dLoss/dh_{L-1}
    for (int64_t i = 0; i < blocks; ++i) {
      const Block<T> k = block_of<T>(b, lo, hi, i, 0);
      for (int64_t n = 0; n < N; ++n) {
        carry[i * N + n] =
            load<T, false>(g.dlast + (b * N + n) * D + k.d0, k.lanes);
      }
    }
  }
  for (int64_t c = P.n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * K, t1 = std::min(t0 + K, L);
    // this range's dB_t, dC_t rows of the chunk (zero-initialised)
    T* dB_rows = g.dB + ((b * P.ranges + j_range) * L + t0) * N;
    T* dC_rows = g.dC + ((b * P.ranges + j_range) * L + t0) * N;
    std::fill(s.dB.begin(), s.dB.end(), zero);
    std::fill(s.dC.begin(), s.dC.end(), zero);
    s.pending = false;
    if (P.B.varying) gather_rows(P, P.B, b, lo, t0, t1, s.B_rows.data());
    if (P.C.varying) gather_rows(P, P.C, b, lo, t0, t1, s.C_rows.data());
    for (int64_t i = 0; i < blocks; ++i) {
      Block<T> k = block_of<T>(b, lo, hi, i, -K);  // chunks run backwards
      k.B = P.B.varying ? s.B_rows.data() : P.B.data + k.d0;
      k.C = P.C.varying ? s.C_rows.data() : P.C.data + k.d0;
      k.A = A1.data() + i * N;
      k.A2 = A2.data() + i * N;
      const BlockGrads<T> acc{carry.data() + i * N,
                              dA.data() + i * N,
                              P.B.varying ? nullptr : dB_inv.data() + i * N,
                              P.C.varying ? nullptr : dC_inv.data() + i * N,
                              dD.data() + i,
                              dbias.data() + i,
                              dB_rows,
                              dC_rows};
      dispatch(P, k, [&](auto nf, auto fast) {
        backward_block<T, decltype(nf)::value, decltype(fast)::value>(
            P, g, s, k, c, acc);
      });
    }
    // the other blocks' dB_t, dC_t: lane sums (padded lanes hold 0)
    if (s.pending) {
      for (int64_t i = 0; i < (t1 - t0) * N; ++i) {
        if (P.B.varying) dB_rows[i] += hsum(s.dB[i]);
        if (P.C.varying) dC_rows[i] += hsum(s.dC[i]);
      }
    }
  }
  for (int64_t i = 0; i < blocks; ++i) {
    const Block<T> k = block_of<T>(b, lo, hi, i, 0);
    for (int64_t n = 0; n < N; ++n) {
      const int64_t at = (b * N + n) * D + k.d0;
      store<T, false>(g.dA + at, dA[i * N + n], k.lanes);
      if (!P.B.varying) store<T, false>(g.dB + at, dB_inv[i * N + n], k.lanes);
      if (!P.C.varying) store<T, false>(g.dC + at, dC_inv[i * N + n], k.lanes);
    }
    if (g.dD) store<T, false>(g.dD + b * D + k.d0, dD[i], k.lanes);
    if (g.dbias) store<T, false>(g.dbias + b * D + k.d0, dbias[i], k.lanes);
  }
}

template <typename T>
void run_backward(const Problem<T>& P, const Grads<T>& g) {
  at::parallel_for(0, P.batch * P.ranges, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      int64_t lo, hi;
      P.range(i % P.ranges, lo, hi);
      backward_item<T>(P, g, i / P.ranges, i % P.ranges, lo, hi);
    }
  });
}

}  // namespace

// ---------------------------------------------------------------------------
// Entry points (called by speechbrain_s4/ssm/scan_cpp.py)
// ---------------------------------------------------------------------------
// u, delta, z: [B, L, D] with contiguous channels; A: [N, D]; B, C: [B, G,
// N, L] (any strides) or [N, D]; D, delta_bias: [D]; all of one dtype
// (float or double). `chunk`: steps between checkpoints; `split`: channels
// per work item. Returns out [B, L, D], the last state [B, N, D] and, if
// asked, the checkpoints [n_chunks, B, N, D] (else an empty tensor).
std::vector<at::Tensor> scan_forward(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
    const at::Tensor& B, const at::Tensor& C,
    const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
    const c10::optional<at::Tensor>& delta_bias, bool delta_softplus,
    int64_t chunk, int64_t split, bool save_checkpoints) {
  const int64_t batch = u.size(0), length = u.size(1), channels = u.size(2);
  const int64_t nstate = A.size(0);
  const int64_t n_chunks = (length + chunk - 1) / chunk;
  auto out = at::empty({batch, length, channels}, u.options());
  auto last = at::empty({batch, nstate, channels}, u.options());
  auto checkpoints =
      save_checkpoints
          ? at::empty({n_chunks, batch, nstate, channels}, u.options())
          : at::empty({0}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_forward", [&] {
    const auto P = make_problem<scalar_t>(u, delta, A, B, C, D, z, delta_bias,
                                          delta_softplus, chunk, split);
    pybind11::gil_scoped_release no_gil;
    run_forward<scalar_t>(
        P, out.data_ptr<scalar_t>(), last.data_ptr<scalar_t>(),
        save_checkpoints ? checkpoints.data_ptr<scalar_t>() : nullptr);
  });
  return {out, last, checkpoints};
}

// Gradients: du, ddelta, dz [B, L, D] (dz empty without z); partial sums
// dA [B, N, D], dB and dC ([B, J, L, N] time-varying, [B, N, D]
// time-invariant), dD and ddelta_bias [B, D] (empty when absent).
std::vector<at::Tensor> scan_backward(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
    const at::Tensor& B, const at::Tensor& C,
    const c10::optional<at::Tensor>& D, const c10::optional<at::Tensor>& z,
    const c10::optional<at::Tensor>& delta_bias, bool delta_softplus,
    const at::Tensor& checkpoints, const at::Tensor& dout,
    const c10::optional<at::Tensor>& dlast, int64_t chunk, int64_t split) {
  const int64_t batch = u.size(0), length = u.size(1), channels = u.size(2);
  const int64_t nstate = A.size(0);
  TORCH_CHECK(dout.is_contiguous() && dout.sizes() == u.sizes(),
              "selective_scan_cpp: dout must be contiguous [B, L, D]");
  TORCH_CHECK(!dlast.has_value() || dlast->is_contiguous(),
              "selective_scan_cpp: dlast must be contiguous [B, N, D]");
  auto opts = u.options();
  auto du = at::empty({batch, length, channels}, opts);
  auto ddelta = at::empty({batch, length, channels}, opts);
  auto dz = z.has_value() ? at::empty({batch, length, channels}, opts)
                          : at::empty({0}, opts);
  auto dA = at::empty({batch, nstate, channels}, opts);
  auto dD = D.has_value() ? at::empty({batch, channels}, opts)
                          : at::empty({0}, opts);
  auto dbias = delta_bias.has_value() ? at::empty({batch, channels}, opts)
                                      : at::empty({0}, opts);
  at::Tensor dB, dC;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "scan_backward", [&] {
    const auto P = make_problem<scalar_t>(u, delta, A, B, C, D, z, delta_bias,
                                          delta_softplus, chunk, split);
    auto projection_grad = [&](const Proj<scalar_t>& p) {
      return p.varying ? at::zeros({batch, P.ranges, length, nstate}, opts)
                       : at::empty({batch, nstate, channels}, opts);
    };
    dB = projection_grad(P.B);
    dC = projection_grad(P.C);
    Grads<scalar_t> g;
    g.du = du.data_ptr<scalar_t>();
    g.ddelta = ddelta.data_ptr<scalar_t>();
    g.dz = z.has_value() ? dz.data_ptr<scalar_t>() : nullptr;
    g.dA = dA.data_ptr<scalar_t>();
    g.dB = dB.data_ptr<scalar_t>();
    g.dC = dC.data_ptr<scalar_t>();
    g.dD = D.has_value() ? dD.data_ptr<scalar_t>() : nullptr;
    g.dbias = delta_bias.has_value() ? dbias.data_ptr<scalar_t>() : nullptr;
    g.dout = dout.data_ptr<scalar_t>();
    g.dlast = dlast.has_value() ? dlast->data_ptr<scalar_t>() : nullptr;
    g.checkpoints = checkpoints.data_ptr<scalar_t>();
    pybind11::gil_scoped_release no_gil;
    run_backward<scalar_t>(P, g);
  });
  return {du, ddelta, dz, dA, dB, dC, dD, dbias};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused CPU selective scan (Mamba), forward and backward";
  m.def("scan_forward", &scan_forward, "selective scan forward");
  m.def("scan_backward", &scan_backward, "selective scan backward");
}
