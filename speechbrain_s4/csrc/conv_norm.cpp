// Fused CPU inference kernels of S4M's memory-bound layers.
//
// S4M (Chen et al., Interspeech 2023) spends most of its CPU time outside
// its matrix products: depthwise convolutions, global layer norms (gLN,
// Conv-TasNet) and the local-attention fusion of its multi-scale block
// (eq. 9-10) each read and write a full-resolution [B, C, L] tensor
// several times when run op by op. Each function below does one such layer
// in two passes over memory:
//
//   conv_norm        y = PReLU(gLN(DWConv(x)))  (conv, PReLU optional)
//   local_attention  y = gLN(DWConv_l(x_l)) * sigmoid(gLN(DWConv_a(x_g)))
//                        + gLN(DWConv_e(x_g)),  x_g terms nearest-upsampled
//   channel_layer_norm  LayerNorm over channels of a [B, C, L] tensor
//   avg_pool         mean over windows of an exact factor (one pass)
//
// Pass 1 filters one (batch, channel) row at a time (the row stays in the
// L1 cache while the k taps are added) and accumulates the row's sum and
// sum of squares in double precision; pass 2 applies the per-item
// normalisation (and the gate) in place. gLN statistics are the biased
// mean and variance over channels and time of each item, as
// torch.nn.functional.group_norm(x, 1, ...) computes them; the results agree
// with the op-by-op PyTorch layers to float round-off.
//
// Rows run in parallel through at::parallel_for (torch's OpenMP pool, so
// torch.set_num_threads applies). Each row's arithmetic and the per-item
// reductions (summed over rows in a fixed order) do not depend on the
// number of threads.
//
// Inputs are contiguous CPU tensors of float or double; the Python wrapper
// (speechbrain_s4/conv_norm_cpp.py) checks this and falls back to PyTorch
// otherwise. These kernels have no backward: training uses PyTorch's ops.
//
// Shape legend: B batch, C channels, L frames (L_g of the global input),
// k filter taps.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sigmoid.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace {

// Rows per parallel task: a row is ~1000 frames, a few microseconds.
constexpr int64_t kGrain = 16;

// y[l] = bias + sum_j w[j] x[stride l + j - pad], l < n, x zero outside
// [0, L). Stride 2 first splits x into its even and odd samples (scratch,
// L + 1 values) so that every tap is a unit-stride multiply-add.
template <typename T>
void conv_row(const T* x, int64_t L, const T* w, int64_t k, int64_t stride,
              int64_t pad, T bias, T* y, int64_t n, T* scratch) {
  for (int64_t l = 0; l < n; ++l) y[l] = bias;
  if (stride == 1) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t off = j - pad;
      const int64_t lo = std::max<int64_t>(0, -off);
      const int64_t hi = std::min<int64_t>(n, L - off);
      const T wj = w[j];
      const T* xs = x + off;
#pragma omp simd
      for (int64_t l = lo; l < hi; ++l) y[l] += wj * xs[l];
    }
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
      const int64_t off = j - pad;           // x index 2 l + off
      const int64_t m = (off - (off & 1)) / 2;  // floor(off / 2)
      const T* src = (off & 1) ? odd : even;
      const int64_t count = (off & 1) ? n_odd : n_even;
      const int64_t lo = std::max<int64_t>(0, -m);
      const int64_t hi = std::min<int64_t>(n, count - m);
      const T wj = w[j];
      const T* xs = src + m;
#pragma omp simd
      for (int64_t l = lo; l < hi; ++l) y[l] += wj * xs[l];
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

// Per item: mean and 1 / sqrt(var + eps) from the rows' moments, summed
// over the item's C rows in channel order.
void item_stats(const std::vector<double>& sum, const std::vector<double>& sq,
                int64_t B, int64_t C, int64_t n, double eps,
                std::vector<double>* mean, std::vector<double>* rstd) {
  mean->assign(B, 0.0);
  rstd->assign(B, 0.0);
  const double count = static_cast<double>(C) * static_cast<double>(n);
  for (int64_t b = 0; b < B; ++b) {
    double s = 0.0, q = 0.0;
    for (int64_t c = 0; c < C; ++c) {
      s += sum[b * C + c];
      q += sq[b * C + c];
    }
    const double mu = s / count;
    const double var = std::max(q / count - mu * mu, 0.0);
    (*mean)[b] = mu;
    (*rstd)[b] = 1.0 / std::sqrt(var + eps);
  }
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

// Pass 1 of a gLN layer: filter every row of x [B, C, L] into y [B, C, n]
// (or, without a filter, only read x) and return the per-item statistics.
template <typename T>
void filter_and_moments(const T* x, int64_t B, int64_t C, int64_t L,
                        const T* w, int64_t k, const T* bias, int64_t stride,
                        int64_t pad, T* y, int64_t n, double eps,
                        std::vector<double>* mean, std::vector<double>* rstd) {
  std::vector<double> sum(B * C), sq(B * C);
  at::parallel_for(0, B * C, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(stride == 2 ? L + 1 : 0);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t c = r % C;
      if (w == nullptr) {
        row_moments(x + r * L, L, &sum[r], &sq[r]);
        continue;
      }
      T* yr = y + r * n;
      conv_row(x + r * L, L, w + c * k, k, stride, pad,
               bias ? bias[c] : T(0), yr, n, scratch.data());
      row_moments(yr, n, &sum[r], &sq[r]);
    }
  });
  item_stats(sum, sq, B, C, n, eps, mean, rstd);
}

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

// y[i R + t] = (y[i R + t] a + s) g[i] + e[i], t < R: the last pass of
// the local attention, nearest up-sampling by R included. R is a template
// argument for the factors S4M uses (1, 2, 4, 8), so that the compiler
// vectorises the R-fold broadcast; other factors take the generic loop.
template <typename T, int R>
void gate_row_fixed(T* y, int64_t Lg, T a, T s, const T* g, const T* e) {
#pragma omp simd
  for (int64_t i = 0; i < Lg; ++i) {
    const T gi = g[i], ei = e[i];
    for (int t = 0; t < R; ++t) y[i * R + t] = (y[i * R + t] * a + s) * gi + ei;
  }
}

template <typename T>
void gate_row(T* y, int64_t Lg, int64_t ratio, T a, T s, const T* g,
              const T* e) {
  switch (ratio) {
    case 1: return gate_row_fixed<T, 1>(y, Lg, a, s, g, e);
    case 2: return gate_row_fixed<T, 2>(y, Lg, a, s, g, e);
    case 4: return gate_row_fixed<T, 4>(y, Lg, a, s, g, e);
    case 8: return gate_row_fixed<T, 8>(y, Lg, a, s, g, e);
    default:
      for (int64_t i = 0; i < Lg; ++i)
        for (int64_t t = 0; t < ratio; ++t)
          y[i * ratio + t] = (y[i * ratio + t] * a + s) * g[i] + e[i];
  }
}

template <typename T>
void conv_norm_impl(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                    const std::optional<at::Tensor>& bias, int64_t stride,
                    int64_t pad, const at::Tensor& gn_weight,
                    const at::Tensor& gn_bias, double eps,
                    const std::optional<at::Tensor>& prelu, int64_t k,
                    int64_t n, at::Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  const T* xp = x.data_ptr<T>();
  const T* wp = weight.has_value() ? weight->data_ptr<T>() : nullptr;
  const T* bp = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  const T* gw = gn_weight.data_ptr<T>();
  const T* gb = gn_bias.data_ptr<T>();
  const T* slope = prelu.has_value() ? prelu->data_ptr<T>() : nullptr;
  const bool per_channel_slope = prelu.has_value() && prelu->numel() == C;
  T* yp = out.data_ptr<T>();
  std::vector<double> mean, rstd;
  filter_and_moments(xp, B, C, L, wp, k, bp, stride, pad, yp, n, eps, &mean,
                     &rstd);
  at::parallel_for(0, B * C, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / C, c = r % C;
      const T a = static_cast<T>(gw[c] * rstd[b]);
      const T s = static_cast<T>(gb[c] - mean[b] * gw[c] * rstd[b]);
      const T* src = (wp ? yp : xp) + r * n;
      T* yr = yp + r * n;
      if (slope) {
        const T p = slope[per_channel_slope ? c : 0];
        affine_prelu_row(src, yr, n, a, s, p);
      } else {
        affine_row(src, yr, n, a, s);
      }
    }
  });
}

// y = PReLU(gLN(DWConv(x))); weight [C, k] or None (no filter), bias [C] or
// None, prelu [1] or [C] or None.
at::Tensor conv_norm(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                     const std::optional<at::Tensor>& bias, int64_t stride,
                     int64_t pad, const at::Tensor& gn_weight,
                     const at::Tensor& gn_bias, double eps,
                     const std::optional<at::Tensor>& prelu) {
  check_input(x, "x", 3);
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  int64_t k = 0, n = L;
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
    n = output_length(L, k, stride, pad);
  }
  at::Tensor out = at::empty({B, C, n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_norm", [&] {
    conv_norm_impl<scalar_t>(x, weight, bias, stride, pad, gn_weight, gn_bias,
                             eps, prelu, k, n, out);
  });
  return out;
}

template <typename T>
void local_attention_impl(const at::Tensor& x_local, const at::Tensor& w_local,
                          const at::Tensor& nw_local, const at::Tensor& nb_local,
                          at::Tensor& gate, const at::Tensor& shift, int64_t pad,
                          double eps, at::Tensor& out) {
  const int64_t B = x_local.size(0), C = x_local.size(1), L = x_local.size(2);
  const int64_t Lg = gate.size(2), k = w_local.size(1), ratio = L / Lg;
  gate.sigmoid_();  // rho, eq. 9 (ATen's vectorised sigmoid)
  const T* gp = gate.data_ptr<T>();
  const T* sp = shift.data_ptr<T>();
  const T* gw = nw_local.data_ptr<T>();
  const T* gb = nb_local.data_ptr<T>();
  T* yp = out.data_ptr<T>();
  std::vector<double> mean, rstd;
  filter_and_moments(x_local.data_ptr<T>(), B, C, L, w_local.data_ptr<T>(), k,
                     static_cast<const T*>(nullptr), 1, pad, yp, L, eps, &mean,
                     &rstd);
  at::parallel_for(0, B * C, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / C, c = r % C;
      const T a = static_cast<T>(gw[c] * rstd[b]);
      const T s = static_cast<T>(gb[c] - mean[b] * gw[c] * rstd[b]);
      gate_row(yp + r * L, Lg, ratio, a, s, gp + r * Lg, sp + r * Lg);
    }
  });
}

// S4M's local attention (eq. 9-10) with an integer up-sampling factor
// L / L_g: out = gLN_l(DWConv_l(x_l)) * sigmoid(g[l / r]) + e[l / r], where
// g = gLN_a(DWConv_a(x_g)) and e = gLN_e(DWConv_e(x_g)) (no biases).
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
  TORCH_CHECK(Lg > 0 && L % Lg == 0, "L must be a multiple of L_g");
  TORCH_CHECK(x_global.scalar_type() == x_local.scalar_type(),
              "x_local and x_global must share a dtype");
  check_input(w_local, "w_local", 2);
  TORCH_CHECK(w_local.size(0) == C && w_local.scalar_type() == x_local.scalar_type(),
              "w_local must be [C, k] of the input's dtype");
  check_vector(nw_local, "nw_local", C, x_local);
  check_vector(nb_local, "nb_local", C, x_local);
  const int64_t k = w_local.size(1);
  TORCH_CHECK(output_length(L, k, 1, pad) == L &&
                  output_length(Lg, k, 1, pad) == Lg,
              "local attention filters must keep the length");
  at::Tensor gate = conv_norm(x_global, w_act, std::nullopt, 1, pad, nw_act,
                              nb_act, eps, std::nullopt);
  at::Tensor shift = conv_norm(x_global, w_emb, std::nullopt, 1, pad, nw_emb,
                               nb_emb, eps, std::nullopt);
  at::Tensor out = at::empty_like(x_local);
  const int64_t ratio = L / Lg;
  AT_DISPATCH_FLOATING_TYPES(x_local.scalar_type(), "local_attention", [&] {
    local_attention_impl<scalar_t>(x_local, w_local, nw_local, nb_local, gate,
                                   shift, pad, eps, out);
  });
  return out;
}

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
      for (int64_t c = 0; c < C; ++c) accumulate_moments(xb + c * L, m, s.data(), q.data());
      for (int64_t l = 0; l < m; ++l) {
        const double mu = s[l] / C;
        const double var = std::max(q[l] / C - mu * mu, 0.0);
        mean[l] = static_cast<T>(mu);
        rstd[l] = static_cast<T>(1.0 / std::sqrt(var + eps));
      }
      T* yb = yp + b * C * L + l0;
      for (int64_t c = 0; c < C; ++c)
        normalise_row(xb + c * L, yb + c * L, m, mean.data(), rstd.data(), wp[c], bp[c]);
    }
  });
}

// LayerNorm over the channels of x [B, C, L] at every frame (biased
// variance), weight and bias [C]: the channels-first layout of S4M's
// pre-norm blocks, without the two transposes.
at::Tensor channel_layer_norm(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& bias, double eps) {
  check_input(x, "x", 3);
  const int64_t B = x.size(0), C = x.size(1), L = x.size(2);
  at::Tensor out = at::empty_like(x);
  constexpr int64_t kBlock = 256;  // frames per task: C rows of it in L2
  const int64_t blocks = (L + kBlock - 1) / kBlock;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "channel_layer_norm", [&] {
    channel_layer_norm_impl<scalar_t>(x, weight, bias, eps, out);
  });
  return out;
}

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
    for (int64_t r = begin; r < end; ++r) pool_row(xp + r * L, yp + r * n, n, L / n);
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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused CPU inference kernels of S4M's conv/norm layers";
  m.def("conv_norm", &conv_norm, "y = PReLU(gLN(DWConv(x)))");
  m.def("local_attention", &local_attention,
        "S4M local attention with integer up-sampling");
  m.def("channel_layer_norm", &channel_layer_norm,
        "LayerNorm over the channels of [B, C, L]");
  m.def("avg_pool", &avg_pool, "average pooling by an exact factor");
}
