// Fused CPU inference kernels of S4M's memory-bound layers.
//
// S4M (Chen et al., Interspeech 2023) spends most of its CPU time outside
// its matrix products: depthwise convolutions, global layer norms (gLN,
// Conv-TasNet), the local-attention fusion of its multi-scale block
// (eq. 9-10) and the pointwise tail of its S4 layers each read and write a
// full-resolution [B, C, L] tensor several times when run op by op. Each
// function below does one such layer in one or two passes over memory:
//
//   conv_norm        y = act(gLN(DWConv(x))), act = none, PReLU or sigmoid
//   local_attention  y = gLN(DWConv_l(x_l)) * sigmoid(gLN(DWConv_a(x_g)))
//                        + gLN(DWConv_e(x_g)),  x_g terms nearest-upsampled
//   channel_layer_norm  LayerNorm over channels of a [B, C, L] tensor
//   avg_pool         mean over windows of an exact factor
//   gelu_skip        GELU(y + D u), the S4 layer after its convolution
//   glu_residual     x + a * sigmoid(b), [a; b] the S4 layer's projection
//
// gLN layers filter one (batch, channel) row at a time (the row stays in the
// L1 cache while the k taps are added) and accumulate the row's sum and sum
// of squares in double precision (pass 1), then filter the row again and
// apply the per-item normalisation and the activation (pass 2): recomputing
// k multiply-adds per value is cheaper than writing the filter output and
// reading it back. A one-tap filter (or none) is folded into pass 2's
// affine map. The local attention computes its three filters this way and
// combines their rows in pass 2, so only its output is written. gLN
// statistics are the biased mean and variance over channels and time of
// each item, as torch.nn.functional.group_norm(x, 1, ...) computes them.
//
// float32 results agree with PyTorch's op-by-op layers to round-off: exp is
// a degree-6 polynomial after range reduction (within 1e-7 relative), erf
// (exact GELU) is Abramowitz and Stegun 7.1.26 (within 1.5e-7 absolute).
// float64 uses the C library's exp and erf. Loops are written so that GCC
// vectorises them (-O3 -march=native -fno-trapping-math).
//
// Rows run in parallel through at::parallel_for (torch's OpenMP pool, so
// torch.set_num_threads applies). Each row's arithmetic and the per-item
// reductions (summed over rows in a fixed order) do not depend on the
// number of threads.
//
// Inputs are contiguous CPU tensors of float or double; the Python wrapper
// (speechbrain_s4/cpu_kernels.py) checks this and falls back to PyTorch
// otherwise. These kernels have no backward: training uses PyTorch's ops.
//
// Shape legend: B batch, C channels, L frames (L_g of the global input),
// k filter taps, H channels of an S4 layer.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace {

// Rows per parallel task: a row is ~1000 frames, a few microseconds.
constexpr int64_t kGrain = 16;

// ---------------------------------------------------------------------------
// Elementary functions that vectorise
// ---------------------------------------------------------------------------
// e^x = 2^k e^r, k = round(x / ln 2), |r| <= ln(2) / 2 (Cody-Waite split of
// ln 2), e^r by the minimax polynomial of Cephes' expf; 2^k from the
// exponent bits. Clamped to the normal range of float.
inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float k = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

inline double exp_approx(double x) { return std::exp(x); }

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + exp_approx(-x));
}

// Exact (erf) GELU: v (1 + erf(v / sqrt 2)) / 2. For x = v / sqrt 2 < 0,
// 1 + erf(x) = erfc(|x|) = q is computed directly (no cancellation), with
// q = t P(t) exp(-x^2), t = 1 / (1 + p |x|) (A&S 7.1.26).
inline float gelu(float v) {
  const float x = v * 0.70710678118654752f;
  const float ax = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float q = p * t * exp_approx(-ax * ax);
  return 0.5f * v * (x < 0.0f ? q : 2.0f - q);
}

inline double gelu(double v) {
  return 0.5 * v * (1.0 + std::erf(v * 0.70710678118654752));
}

// ---------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------
// y[l] += w src[l + off] for the l < n where src[l + off] exists (src has
// `count` values): one tap of a filter, unit stride.
template <typename T>
void add_tap(T* y, int64_t n, const T* src, int64_t count, int64_t off, T w) {
  const int64_t lo = std::max<int64_t>(0, -off);
  const int64_t hi = std::min<int64_t>(n, count - off);
  const T* xs = src + off;
#pragma omp simd
  for (int64_t l = lo; l < hi; ++l) y[l] += w * xs[l];
}

// y[l] = bias + sum_j w[j] x[stride l + j - pad], l < n, x zero outside
// [0, L). Stride 2 first splits x into its even and odd samples (scratch,
// L + 1 values) so that every tap is a unit-stride multiply-add.
template <typename T>
void conv_row(const T* x, int64_t L, const T* w, int64_t k, int64_t stride,
              int64_t pad, T bias, T* y, int64_t n, T* scratch) {
  for (int64_t l = 0; l < n; ++l) y[l] = bias;
  if (stride == 1) {
    for (int64_t j = 0; j < k; ++j) add_tap(y, n, x, L, j - pad, w[j]);
    return;
  }
  if (stride == 2) {
    const int64_t n_even = (L + 1) / 2, n_odd = L / 2;
    T* even = scratch;
    T* odd = scratch + n_even;
    for (int64_t i = 0; i < n_odd; ++i) {
      even[i] = x[2 * i];
      odd[i] = x[2 * i + 1];
    }
    if (n_even > n_odd) even[n_even - 1] = x[L - 1];
    for (int64_t j = 0; j < k; ++j) {
      const int64_t off = j - pad;              // x index 2 l + off
      const int64_t m = (off - (off & 1)) / 2;  // floor(off / 2)
      if (off & 1) {
        add_tap(y, n, odd, n_odd, m, w[j]);
      } else {
        add_tap(y, n, even, n_even, m, w[j]);
      }
    }
    return;
  }
  for (int64_t l = 0; l < n; ++l) {
    T acc = y[l];
    for (int64_t j = 0; j < k; ++j) {
      const int64_t i = stride * l + j - pad;
      if (i >= 0 && i < L) acc += w[j] * x[i];
    }
    y[l] = acc;
  }
}

template <typename T>
void row_moments(const T* y, int64_t n, double* sum, double* sq) {
  double s = 0.0, q = 0.0;
#pragma omp simd reduction(+ : s, q)
  for (int64_t l = 0; l < n; ++l) {
    const double v = y[l];
    s += v;
    q += v * v;
  }
  *sum = s;
  *sq = q;
}

void check_input(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got ",
              t.dim());
}

void check_vector(const at::Tensor& t, const char* name, int64_t size,
                  const at::Tensor& like) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.numel() == size &&
                  t.scalar_type() == like.scalar_type(),
              name, " must be a contiguous CPU tensor of ", size,
              " values of the input's dtype");
}

int64_t output_length(int64_t L, int64_t k, int64_t stride, int64_t pad) {
  return (L + 2 * pad - k) / stride + 1;
}

// ---------------------------------------------------------------------------
// gLN layers
// ---------------------------------------------------------------------------
// One depthwise filter over the rows of x [B, C, L] (or none: the identity),
// giving rows of n frames. A one-tap filter (or none) is "pointwise": its
// output w_c x + b_c is never formed, pass 2 folds it into its affine map.
template <typename T>
struct Filter {
  const T* x;
  int64_t B, C, L;
  const T* w;  // [C, k] or nullptr
  int64_t k;
  const T* bias;  // [C] or nullptr
  int64_t stride, pad, n;

  bool pointwise() const {
    return w == nullptr || (k == 1 && stride == 1 && pad == 0);
  }

  // the filter output of row r into y (n values), scratch >= L + 1 values
  void run(int64_t r, T* y, T* scratch) const {
    const int64_t c = r % C;
    conv_row(x + r * L, L, w + c * k, k, stride, pad, bias ? bias[c] : T(0),
             y, n, scratch);
  }
};

template <typename T>
Filter<T> make_filter(const T* x, int64_t B, int64_t C, int64_t L, const T* w,
                      int64_t k, const T* bias, int64_t stride, int64_t pad) {
  const int64_t n = w == nullptr ? L : output_length(L, k, stride, pad);
  return Filter<T>{x, B, C, L, w, k, bias, stride, pad, n};
}

// What pass 2 applies to a gLN layer: per row r, the normalised filter
// output is src_r[l] * scale[r] + shift[r], src being the filter output or,
// for a pointwise filter, x itself (the filter folded into scale and shift).
template <typename T>
struct Normalisation {
  std::vector<T> scale, shift;
};

// Pass 1 of a gLN layer: the rows' moments, then each row's affine map.
// Filter outputs are formed row by row in a scratch row and not kept: pass
// 2 filters again, which costs a few multiply-adds per value where writing
// the output and reading it back would cost a round trip to memory.
template <typename T>
Normalisation<T> normalisation(const Filter<T>& f, const T* gn_weight,
                               const T* gn_bias, double eps) {
  const int64_t B = f.B, C = f.C, n = f.n;
  std::vector<double> sum(B * C), sq(B * C);
  at::parallel_for(0, B * C, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> row(f.pointwise() ? 0 : n), scratch(f.L + 1);
    for (int64_t r = begin; r < end; ++r) {
      if (f.pointwise()) {
        row_moments(f.x + r * f.L, f.L, &sum[r], &sq[r]);
      } else {
        f.run(r, row.data(), scratch.data());
        row_moments(row.data(), n, &sum[r], &sq[r]);
      }
    }
  });
  const bool folded = f.pointwise() && f.w != nullptr;
  Normalisation<T> result;
  result.scale.resize(B * C);
  result.shift.resize(B * C);
  const double count = static_cast<double>(C) * static_cast<double>(n);
  for (int64_t b = 0; b < B; ++b) {
    // moments of the filter output w_c x + b_c from those of x
    double s = 0.0, q = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t r = b * C + c;
      if (folded) {
        const double wc = f.w[c], bc = f.bias ? f.bias[c] : 0.0;
        s += wc * sum[r] + n * bc;
        q += wc * wc * sq[r] + 2.0 * wc * bc * sum[r] + n * bc * bc;
      } else {
        s += sum[r];
        q += sq[r];
      }
    }
    const double mean = s / count;
    const double var = std::max(q / count - mean * mean, 0.0);
    const double rstd = 1.0 / std::sqrt(var + eps);
    for (int64_t c = 0; c < C; ++c) {
      const int64_t r = b * C + c;
      const double a = gn_weight[c] * rstd;
      double scale = a, shift = gn_bias[c] - mean * a;
      if (folded) {  // (w x + b) a + shift0
        shift += (f.bias ? f.bias[c] : 0.0) * a;
        scale *= f.w[c];
      }
      result.scale[r] = static_cast<T>(scale);
      result.shift[r] = static_cast<T>(shift);
    }
  }
  return result;
}

// The source row of pass 2: x's row for a pointwise filter, else the
// filter output recomputed into `row`.
template <typename T>
const T* source_row(const Filter<T>& f, int64_t r, T* row, T* scratch) {
  if (f.pointwise()) return f.x + r * f.L;
  f.run(r, row, scratch);
  return row;
}

enum class Activation { kNone, kPrelu, kSigmoid };

template <typename T>
void affine_row(const T* src, T* y, int64_t n, T a, T s) {
#pragma omp simd
  for (int64_t l = 0; l < n; ++l) y[l] = src[l] * a + s;
}

template <typename T>
void affine_prelu_row(const T* src, T* y, int64_t n, T a, T s, T p) {
#pragma omp simd
  for (int64_t l = 0; l < n; ++l) {
    const T v = src[l] * a + s;
    y[l] = v > T(0) ? v : p * v;
  }
}

template <typename T>
void affine_sigmoid_row(const T* src, T* y, int64_t n, T a, T s) {
#pragma omp simd
  for (int64_t l = 0; l < n; ++l) y[l] = sigmoid(src[l] * a + s);
}

// act(src * a + s) into y (src may be y)
template <typename T>
void activate_row(const T* src, T* y, int64_t n, T a, T s, Activation act,
                  T slope) {
  if (act == Activation::kPrelu) {
    affine_prelu_row(src, y, n, a, s, slope);
  } else if (act == Activation::kSigmoid) {
    affine_sigmoid_row(src, y, n, a, s);
  } else {
    affine_row(src, y, n, a, s);
  }
}

// y = act(gLN(filter(x))) into out [B, C, n], in two passes over x.
template <typename T>
void filter_norm_act(const Filter<T>& f, const T* gn_weight, const T* gn_bias,
                     double eps, Activation act, const T* slope,
                     bool per_channel_slope, T* out) {
  const Normalisation<T> norm = normalisation(f, gn_weight, gn_bias, eps);
  const int64_t C = f.C, n = f.n;
  at::parallel_for(0, f.B * C, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(f.L + 1);
    for (int64_t r = begin; r < end; ++r) {
      T* yr = out + r * n;
      const T* src = source_row(f, r, yr, scratch.data());
      const T p = slope ? slope[per_channel_slope ? r % C : 0] : T(0);
      activate_row(src, yr, n, norm.scale[r], norm.shift[r], act, p);
    }
  });
}

// y = act(gLN(DWConv(x))); weight [C, k] or None (no filter), bias [C] or
// None; act: PReLU with slopes prelu ([1] or [C]) if given, else sigmoid if
// sigmoid_act, else none.
at::Tensor conv_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                     const std::optional<at::Tensor>& bias, int64_t stride,
                     int64_t pad, const at::Tensor& gn_weight,
                     const at::Tensor& gn_bias, double eps,
                     const std::optional<at::Tensor>& prelu, bool sigmoid_act) {
  check_input(x, "x", 3);
  const int64_t C = x.size(1), L = x.size(2);
  int64_t k = 0;
  check_vector(gn_weight, "gn_weight", C, x);
  check_vector(gn_bias, "gn_bias", C, x);
  if (bias.has_value()) check_vector(*bias, "bias", C, x);
  if (prelu.has_value())
    check_vector(*prelu, "prelu", prelu->numel() == 1 ? 1 : C, x);
  if (weight.has_value()) {
    check_input(*weight, "weight", 2);
    TORCH_CHECK(weight->size(0) == C && weight->scalar_type() == x.scalar_type(),
                "weight must be [C, k] of the input's dtype");
    k = weight->size(1);
    TORCH_CHECK(stride >= 1 && pad >= 0 && L + 2 * pad >= k,
                "bad stride/padding");
  }
  const int64_t n = weight.has_value() ? output_length(L, k, stride, pad) : L;
  at::Tensor out = at::empty({x.size(0), C, n}, x.options());
  const Activation act = prelu.has_value()
                             ? Activation::kPrelu
                             : (sigmoid_act ? Activation::kSigmoid
                                            : Activation::kNone);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_norm", [&] {
    using T = scalar_t;
    const Filter<T> f = make_filter<T>(
        x.data_ptr<T>(), x.size(0), C, L,
        weight.has_value() ? weight->data_ptr<T>() : nullptr, k,
        bias.has_value() ? bias->data_ptr<T>() : nullptr, stride, pad);
    filter_norm_act(f, gn_weight.data_ptr<T>(), gn_bias.data_ptr<T>(), eps,
                    act, prelu.has_value() ? prelu->data_ptr<T>() : nullptr,
                    prelu.has_value() && prelu->numel() == C,
                    out.data_ptr<T>());
  });
  return out;
}

// y[i R + t] = y[i R + t] g[i] + e[i], t < R: the last step of the local
// attention, nearest up-sampling by R included. R is a template argument
// for the factors S4M uses (1, 2, 4, 8), so that the compiler vectorises
// the R-fold broadcast; other factors take the generic loop.
template <typename T, int R>
void gate_row_fixed(T* y, int64_t Lg, const T* g, const T* e) {
#pragma omp simd
  for (int64_t i = 0; i < Lg; ++i) {
    const T gi = g[i], ei = e[i];
    for (int t = 0; t < R; ++t) y[i * R + t] = y[i * R + t] * gi + ei;
  }
}

template <typename T>
void gate_row(T* y, int64_t Lg, int64_t ratio, const T* g, const T* e) {
  switch (ratio) {
    case 1: return gate_row_fixed<T, 1>(y, Lg, g, e);
    case 2: return gate_row_fixed<T, 2>(y, Lg, g, e);
    case 4: return gate_row_fixed<T, 4>(y, Lg, g, e);
    case 8: return gate_row_fixed<T, 8>(y, Lg, g, e);
    default:
      for (int64_t i = 0; i < Lg; ++i)
        for (int64_t t = 0; t < ratio; ++t)
          y[i * ratio + t] = y[i * ratio + t] * g[i] + e[i];
  }
}

// The local attention in two passes: pass 1 takes the statistics of the
// three filters (local, gate, shift), pass 2 recomputes each output row of
// all three in cache-resident rows and combines them. Neither the local
// term nor the global ones are ever written out.
template <typename T>
void local_attention_impl(const Filter<T>& local, const Filter<T>& act,
                          const Filter<T>& emb, const T* const norms[6],
                          double eps, T* out) {
  const Normalisation<T> nl = normalisation(local, norms[0], norms[1], eps);
  const Normalisation<T> na = normalisation(act, norms[2], norms[3], eps);
  const Normalisation<T> ne = normalisation(emb, norms[4], norms[5], eps);
  const int64_t L = local.n, Lg = act.n, ratio = L / Lg;
  at::parallel_for(0, local.B * local.C, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> gate(Lg), shift(Lg), scratch(std::max(local.L, act.L) + 1);
    for (int64_t r = begin; r < end; ++r) {
      T* yr = out + r * L;
      const T* src = source_row(local, r, yr, scratch.data());
      affine_row(src, yr, L, nl.scale[r], nl.shift[r]);
      src = source_row(act, r, gate.data(), scratch.data());
      affine_sigmoid_row(src, gate.data(), Lg, na.scale[r], na.shift[r]);
      src = source_row(emb, r, shift.data(), scratch.data());
      affine_row(src, shift.data(), Lg, ne.scale[r], ne.shift[r]);
      gate_row(yr, Lg, ratio, gate.data(), shift.data());
    }
  });
}

// S4M's local attention (eq. 9-10) with an integer up-sampling factor
// r = L / L_g: out = gLN_l(DWConv_l(x_l)) * g[l / r] + e[l / r], where
// g = sigmoid(gLN_a(DWConv_a(x_g))) (rho) and e = gLN_e(DWConv_e(x_g))
// (tau); no filter biases; the filters keep the length.
at::Tensor local_attention(const at::Tensor& x_local, const at::Tensor& x_global,
                           const at::Tensor& w_local, const at::Tensor& nw_local,
                           const at::Tensor& nb_local, const at::Tensor& w_act,
                           const at::Tensor& nw_act, const at::Tensor& nb_act,
                           const at::Tensor& w_emb, const at::Tensor& nw_emb,
                           const at::Tensor& nb_emb, int64_t pad, double eps) {
  check_input(x_local, "x_local", 3);
  check_input(x_global, "x_global", 3);
  const int64_t B = x_local.size(0), C = x_local.size(1), L = x_local.size(2);
  const int64_t Lg = x_global.size(2);
  TORCH_CHECK(x_global.size(0) == B && x_global.size(1) == C,
              "x_local and x_global must share batch and channels");
  TORCH_CHECK(x_global.scalar_type() == x_local.scalar_type(),
              "x_local and x_global must share a dtype");
  TORCH_CHECK(Lg > 0 && L % Lg == 0, "L must be a multiple of L_g");
  const at::Tensor* filters[3] = {&w_local, &w_act, &w_emb};
  for (const at::Tensor* w : filters) {
    check_input(*w, "filter", 2);
    TORCH_CHECK(w->size(0) == C && w->size(1) == w_local.size(1) &&
                    w->scalar_type() == x_local.scalar_type(),
                "the three filters must be [C, k] of the input's dtype");
  }
  const at::Tensor* norm_params[6] = {&nw_local, &nb_local, &nw_act,
                                      &nb_act,   &nw_emb,   &nb_emb};
  for (const at::Tensor* t : norm_params) check_vector(*t, "gLN parameter", C, x_local);
  const int64_t k = w_local.size(1);
  TORCH_CHECK(output_length(L, k, 1, pad) == L &&
                  output_length(Lg, k, 1, pad) == Lg,
              "local attention filters must keep the length");
  at::Tensor out = at::empty_like(x_local);
  AT_DISPATCH_FLOATING_TYPES(x_local.scalar_type(), "local_attention", [&] {
    using T = scalar_t;
    const T* xg = x_global.data_ptr<T>();
    const Filter<T> local = make_filter<T>(
        x_local.data_ptr<T>(), B, C, L, w_local.data_ptr<T>(), k, nullptr, 1, pad);
    const Filter<T> act =
        make_filter<T>(xg, B, C, Lg, w_act.data_ptr<T>(), k, nullptr, 1, pad);
    const Filter<T> emb =
        make_filter<T>(xg, B, C, Lg, w_emb.data_ptr<T>(), k, nullptr, 1, pad);
    const T* norms[6];
    for (int i = 0; i < 6; ++i) norms[i] = norm_params[i]->data_ptr<T>();
    local_attention_impl(local, act, emb, norms, eps, out.data_ptr<T>());
  });
  return out;
}

// ---------------------------------------------------------------------------
// LayerNorm over channels
// ---------------------------------------------------------------------------
template <typename T>
void accumulate_moments(const T* row, int64_t m, double* s, double* q) {
#pragma omp simd
  for (int64_t l = 0; l < m; ++l) {
    const double v = row[l];
    s[l] += v;
    q[l] += v * v;
  }
}

template <typename T>
void normalise_row(const T* row, T* y, int64_t m, const T* mean, const T* rstd,
                   T w, T b) {
#pragma omp simd
  for (int64_t l = 0; l < m; ++l) y[l] = (row[l] - mean[l]) * rstd[l] * w + b;
}

template <typename T>
void channel_layer_norm_impl(const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& bias, double eps,
                             at::Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  constexpr int64_t kBlock = 256;  // frames per task: C rows of it in L2
  const int64_t blocks = (L + kBlock - 1) / kBlock;
  const T* xp = x.data_ptr<T>();
  const T* wp = weight.data_ptr<T>();
  const T* bp = bias.data_ptr<T>();
  T* yp = out.data_ptr<T>();
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> s(kBlock), q(kBlock);
    std::vector<T> mean(kBlock), rstd(kBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t l0 = (task % blocks) * kBlock;
      const int64_t m = std::min(kBlock, L - l0);
      std::fill(s.begin(), s.end(), 0.0);
      std::fill(q.begin(), q.end(), 0.0);
      const T* xb = xp + b * C * L + l0;
      for (int64_t c = 0; c < C; ++c)
        accumulate_moments(xb + c * L, m, s.data(), q.data());
      for (int64_t l = 0; l < m; ++l) {
        const double mu = s[l] / C;
        const double var = std::max(q[l] / C - mu * mu, 0.0);
        mean[l] = static_cast<T>(mu);
        rstd[l] = static_cast<T>(1.0 / std::sqrt(var + eps));
      }
      T* yb = yp + b * C * L + l0;
      for (int64_t c = 0; c < C; ++c)
        normalise_row(xb + c * L, yb + c * L, m, mean.data(), rstd.data(),
                      wp[c], bp[c]);
    }
  });
}

// LayerNorm over the channels of x [B, C, L] at every frame (biased
// variance), weight and bias [C]: the channels-first layout of S4M's
// pre-norm blocks, without the two transposes.
at::Tensor channel_layer_norm(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, double eps) {
  check_input(x, "x", 3);
  check_vector(weight, "weight", x.size(1), x);
  check_vector(bias, "bias", x.size(1), x);
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_layer_norm", [&] {
    channel_layer_norm_impl<scalar_t>(x, weight, bias, eps, out);
  });
  return out;
}

// ---------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------
// Mean of every window of R consecutive frames of each row: S4M's pooling
// of every scale to the coarsest length (an exact factor here).
template <typename T, int R>
void pool_row_fixed(const T* x, T* y, int64_t n) {
  const T scale = T(1) / T(R);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    T acc = x[j * R];
    for (int t = 1; t < R; ++t) acc += x[j * R + t];
    y[j] = acc * scale;
  }
}

template <typename T>
void pool_row(const T* x, T* y, int64_t n, int64_t ratio) {
  switch (ratio) {
    case 2: return pool_row_fixed<T, 2>(x, y, n);
    case 4: return pool_row_fixed<T, 4>(x, y, n);
    case 8: return pool_row_fixed<T, 8>(x, y, n);
    default:
      for (int64_t j = 0; j < n; ++j) {
        T acc = x[j * ratio];
        for (int64_t t = 1; t < ratio; ++t) acc += x[j * ratio + t];
        y[j] = acc / T(ratio);
      }
  }
}

template <typename T>
void avg_pool_impl(const at::Tensor& x, int64_t n, at::Tensor& out) {
  const int64_t rows = x.size(0) * x.size(1), L = x.size(2);
  const T* xp = x.data_ptr<T>();
  T* yp = out.data_ptr<T>();
  at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      pool_row(xp + r * L, yp + r * n, n, L / n);
  });
}

// Average pooling of x [B, C, L] to n frames, L a multiple of n.
at::Tensor avg_pool(const at::Tensor& x, int64_t n) {
  check_input(x, "x", 3);
  TORCH_CHECK(n > 0 && x.size(2) % n == 0, "L must be a multiple of n");
  at::Tensor out = at::empty({x.size(0), x.size(1), n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "avg_pool", [&] {
    avg_pool_impl<scalar_t>(x, n, out);
  });
  return out;
}

// ---------------------------------------------------------------------------
// The S4 layer's pointwise tail
// ---------------------------------------------------------------------------
// Row loops whose output never aliases their inputs: restrict and no
// inlining, so that GCC vectorises each once, whatever the call site.
template <typename T>
__attribute__((noinline)) void gelu_skip_row(const T* __restrict y,
                                             const T* __restrict u, T d,
                                             T* __restrict out, int64_t L) {
#pragma omp simd
  for (int64_t l = 0; l < L; ++l) out[l] = gelu(y[l] + d * u[l]);
}

template <typename T>
void gelu_skip_impl(const at::Tensor& y, const at::Tensor& u,
                    const at::Tensor& D, at::Tensor& out) {
  const int64_t H = u.size(1), L = u.size(2), n = y.size(2);
  const T* yp = y.data_ptr<T>();
  const T* up = u.data_ptr<T>();
  const T* dp = D.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, u.size(0) * H, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      gelu_skip_row(yp + r * n, up + r * L, dp[r % H], op + r * L, L);
  });
}

// GELU(y[..., :L] + D u): y [B, H, n >= L] the convolution (an FFT
// convolution's untrimmed output), u [B, H, L] the layer input, D [H].
at::Tensor gelu_skip(const at::Tensor& y, const at::Tensor& u,
                     const at::Tensor& D) {
  check_input(y, "y", 3);
  check_input(u, "u", 3);
  TORCH_CHECK(y.size(0) == u.size(0) && y.size(1) == u.size(1) &&
                  y.size(2) >= u.size(2) && y.scalar_type() == u.scalar_type(),
              "y must be [B, H, n >= L] of u's dtype");
  check_vector(D, "D", u.size(1), u);
  at::Tensor out = at::empty_like(u);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "gelu_skip", [&] {
    gelu_skip_impl<scalar_t>(y, u, D, out);
  });
  return out;
}

template <typename T>
__attribute__((noinline)) void glu_residual_row(const T* __restrict a,
                                                const T* __restrict b,
                                                const T* __restrict x,
                                                T* __restrict out, int64_t L) {
#pragma omp simd
  for (int64_t l = 0; l < L; ++l) out[l] = x[l] + a[l] * sigmoid(b[l]);
}

template <typename T>
void glu_residual_impl(const at::Tensor& z, const at::Tensor& x,
                       at::Tensor& out) {
  const int64_t H = x.size(1), L = x.size(2);
  const T* zp = z.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, x.size(0) * H, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* a = zp + ((r / H) * 2 * H + r % H) * L;
      glu_residual_row(a, a + H * L, xp + r * L, op + r * L, L);
    }
  });
}

// x + GLU(z) over channels: z [B, 2H, L] = [a; b], x [B, H, L].
at::Tensor glu_residual(const at::Tensor& z, const at::Tensor& x) {
  check_input(z, "z", 3);
  check_input(x, "x", 3);
  TORCH_CHECK(z.size(0) == x.size(0) && z.size(1) == 2 * x.size(1) &&
                  z.size(2) == x.size(2) && z.scalar_type() == x.scalar_type(),
              "z must be [B, 2H, L] for x [B, H, L], of x's dtype");
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "glu_residual", [&] {
    glu_residual_impl<scalar_t>(z, x, out);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused CPU inference kernels of S4M's memory-bound layers";
  m.def("conv_norm", &conv_norm, "y = act(gLN(DWConv(x)))");
  m.def("local_attention", &local_attention,
        "S4M local attention with integer up-sampling");
  m.def("channel_layer_norm", &channel_layer_norm,
        "LayerNorm over the channels of [B, C, L]");
  m.def("avg_pool", &avg_pool, "average pooling by an exact factor");
  m.def("gelu_skip", &gelu_skip, "GELU(y[..., :L] + D u)");
  m.def("glu_residual", &glu_residual, "x + GLU(z) over channels");
}
