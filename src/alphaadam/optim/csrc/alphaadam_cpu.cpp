// The fused AlphaAdam step for CPU tensors: the two passes of docs/fused.md as plain loops
// that the compiler vectorises (built on first use by alphaadam.optim.fused_cpu).
//
// Pass 1 reads g, m, v and writes m, v and the masked direction phi u while it accumulates
// the per-tensor sums ||u||^2, ||phi u||^2, ||phi||_0 and ||g||_0 (the nonzero gradient
// elements: rescale="active"'s d, and the gradient density reported for every rescale);
// pass 2 reads phi u back and writes
// the parameter. Without sharding both passes of one tensor run back to back, and phi u goes
// to a workspace of the largest tensor's size in the state dtype (pass 2 then reads 4 bytes
// per element instead of m, v and a mask, 9 bytes, and computes no sqrt or division); a small
// tensor is still in cache for pass 2. With sharding, Python all-reduces the sums of every
// tensor between the passes, so every tensor's pass-1 output is alive at once: there pass 1
// writes a 1-byte agreement mask and pass 2 recomputes u from the stored moments.
//
// One-pass AlphaAdam (one_pass=True, an extension): a tensor whose previous statistics are
// usable (previous_scales[i] > 0) runs pass 1 only, writing the parameter with that previous
// multiplier instead of the mask; its sums feed the next step. Others take both passes.
//
// Sums are accumulated per fixed block of elements (float within 1024-element sub-blocks,
// double across them) and the blocks are added in order, so the result does not depend on
// the number of threads.

// Only the headers used (not torch/extension.h): the first build takes ~20 s instead of ~45 s.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/utils/pybind.h>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kBlock = 1 << 16;  // elements per partial sum (double)
constexpr int64_t kSub = 1024;       // float accumulators stay exact enough over this many
// Elements per parallel task, at least: small enough that a tensor of 2^15 elements (GPT-2
// at CPU sizes has many) is split across two threads, as torch's fused AdamW splits it.
constexpr int64_t kGrain = 1 << 14;

enum MaskKind : int64_t { kMaskNone = 0, kMaskAsync = 1, kMaskSync = 2 };
enum AlphaKind : int64_t { kAlphaNone = 0, kAlphaRatio = 1, kAlphaSqrtRatio = 2 };
// d / (nnz + 1) with d = every element (Algorithm 1), d = the nonzero-gradient elements, or 1.
enum RescaleKind : int64_t { kRescaleNone = 0, kRescaleAll = 1, kRescaleActive = 2 };
constexpr int kSums = 4;  // ||u||^2, ||phi u||^2, ||phi||_0, ||g||_0 per tensor

struct Hyper {
  double lr, beta1, beta2, eps, weight_decay, alpha_max;
  bool bias_correction, maximize;
  int64_t mask, alpha, rescale;
};

// Decoupled weight decay, every coordinate: theta *= 1 - lr wd.
double decay_factor(const Hyper& h) { return 1.0 - h.lr * h.weight_decay; }

// The loop constants of one tensor, rounded to the state dtype once (as the reference path
// rounds its bias corrections): u = (m * inv_bc1) / (sqrt(v) * inv_bc2 + eps).
template <typename S>
struct Consts {
  S w1, one_minus_w1, b2, one_minus_b2, inv_bc1, inv_bc2, eps;
  bool lerp_from_m;  // torch.lerp's two formulas, chosen by |weight| < 0.5
};

template <typename S>
Consts<S> loop_consts(const Hyper& h, double step) {
  double bc1 = 1.0, bc2_sqrt = 1.0;
  if (h.bias_correction) {
    bc1 = 1.0 - std::pow(h.beta1, step);
    bc2_sqrt = std::sqrt(1.0 - std::pow(h.beta2, step));
  }
  Consts<S> c;
  c.w1 = static_cast<S>(1.0 - h.beta1);
  c.one_minus_w1 = static_cast<S>(1.0 - static_cast<double>(c.w1));
  c.lerp_from_m = std::abs(1.0 - h.beta1) < 0.5;
  c.b2 = static_cast<S>(h.beta2);
  c.one_minus_b2 = static_cast<S>(1.0 - h.beta2);
  c.inv_bc1 = static_cast<S>(1.0 / bc1);
  c.inv_bc2 = static_cast<S>(1.0 / bc2_sqrt);
  c.eps = static_cast<S>(h.eps);
  return c;
}

// Increments a 0-d step counter (float32 or float64) and returns the new count.
double increment_step(const at::Tensor& step) {
  TORCH_CHECK(step.numel() == 1 && step.device().is_cpu(), "step must be a one-element CPU tensor");
  if (step.scalar_type() == at::kFloat) return ++*step.data_ptr<float>();
  if (step.scalar_type() == at::kDouble) return ++*step.data_ptr<double>();
  TORCH_CHECK(false, "step must be float32 or float64, got ", step.scalar_type());
}

double read_step(const at::Tensor& step) {
  if (step.scalar_type() == at::kFloat) return *step.data_ptr<float>();
  return *step.data_ptr<double>();
}

void write_scalar(const at::Tensor& t, double value) {
  if (!t.defined()) return;
  if (t.scalar_type() == at::kFloat) {
    *t.data_ptr<float>() = static_cast<float>(value);
  } else if (t.scalar_type() == at::kDouble) {
    *t.data_ptr<double>() = value;
  } else {
    TORCH_CHECK(false, "alpha/mask_density state must be float32 or float64, got ", t.scalar_type());
  }
}

template <typename S>
inline S to_state(S x) { return x; }
inline float to_state(c10::BFloat16 x) { return static_cast<float>(x); }
inline float to_state(c10::Half x) { return static_cast<float>(x); }

// torch.lerp(m, g, w) with w = 1 - b1: m + w (g - m) when |w| < 0.5, else g - (g - m)(1 - w).
// A template flag, so the choice is made once per tensor and not inside the element loop.
template <bool kLerpFromM, typename S>
inline S lerp_momentum(S m, S g, const Consts<S>& c) {
  if constexpr (kLerpFromM) {
    return m + c.w1 * (g - m);
  } else {
    return g - (g - m) * c.one_minus_w1;
  }
}

// ---------------------------------------------------------------------------- pass 1
// What pass 1 writes besides the moments: the agreement mask (for pass 2 to recompute u),
// the masked direction phi u itself, or (one-pass) the parameter p * decay - step * phi u.
enum Pass1Output : int { kWriteMask = 0, kWriteKept = 1, kWriteParam = 2 };

template <typename P, typename S, int64_t kMask, bool kLerpFromM, int kOut>
void moments_block(P* __restrict p, const P* __restrict g_in, S* __restrict m, S* __restrict v,
                   uint8_t* __restrict mask, S* __restrict kept_out, int64_t n,
                   const Consts<S>& c, bool maximize, S decay, S step,
                   double* __restrict sums) {
  double total = 0, kept = 0;
  double count = 0, active = 0;
  const S sign = maximize ? S(-1) : S(1);
  for (int64_t lo = 0; lo < n; lo += kSub) {
    const int64_t hi = std::min(n, lo + kSub);
    // A float count is exact up to 2^24, far above kSub.
    S sub_total = 0, sub_kept = 0, sub_count = 0, sub_active = 0;
#pragma omp simd reduction(+ : sub_total, sub_kept, sub_count, sub_active)
    for (int64_t i = lo; i < hi; ++i) {
      const S g = sign * to_state(g_in[i]);
      const S m_old = m[i];
      const S m_new = lerp_momentum<kLerpFromM>(m_old, g, c);
      const S v_new = v[i] * c.b2 + c.one_minus_b2 * (g * g);
      const S phi = static_cast<S>((kMask == kMaskAsync ? g * m_old : g * m_new) > S(0));
      m[i] = m_new;
      v[i] = v_new;
      const S u = (m_new * c.inv_bc1) / (std::sqrt(v_new) * c.inv_bc2 + c.eps);
      if constexpr (kOut == kWriteParam) {
        p[i] = static_cast<P>(to_state(p[i]) * decay - step * (u * phi));
      } else {
        // The mask is written in kWriteKept mode too, though pass 2 does not read it: its
        // 1-byte store sets the loop's vector width (64 lanes with AVX-512), and so the order
        // of the sums' partial additions. Without it phi u gets 16 lanes and alpha can differ
        // in the last bit from the mask route's (the sharded path, and earlier versions).
        mask[i] = static_cast<uint8_t>(phi);
        if constexpr (kOut == kWriteKept) kept_out[i] = u * phi;  // pass 2's product: same bits
      }
      const S uu = u * u;
      sub_total += uu;
      sub_kept += uu * phi;  // (u * phi)^2, as the reference paths compute it
      sub_count += phi;
      sub_active += static_cast<S>(g != S(0));
    }
    total += sub_total;
    kept += sub_kept;
    count += sub_count;
    active += sub_active;
  }
  sums[0] = total;
  sums[1] = kept;
  sums[2] = count;
  sums[3] = active;
}

// ---------------------------------------------------------------------------- pass 2
template <typename P, typename S>
void apply_block(P* __restrict p, const S* __restrict m, const S* __restrict v,
                 const uint8_t* __restrict mask, int64_t n, const Consts<S>& c, S decay, S step) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const S u = (m[i] * c.inv_bc1) / (std::sqrt(v[i]) * c.inv_bc2 + c.eps);
    // A multiply, as the reference paths mask (u * phi): a NaN u stays NaN where phi = 0.
    const S kept = u * static_cast<S>(mask[i]);
    p[i] = static_cast<P>(to_state(p[i]) * decay - step * kept);
  }
}

// Pass 2 from pass 1's phi u (kWriteKept).
template <typename P, typename S>
void apply_kept_block(P* __restrict p, const S* __restrict kept, int64_t n, S decay, S step) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    p[i] = static_cast<P>(to_state(p[i]) * decay - step * kept[i]);
  }
}

// mask="none": AdamW in one pass (no sums needed).
template <typename P, typename S, bool kLerpFromM>
void adamw_block(P* __restrict p, const P* __restrict g_in, S* __restrict m, S* __restrict v,
                 int64_t n, const Consts<S>& c, bool maximize, S decay, S lr) {
  const S sign = maximize ? S(-1) : S(1);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const S g = sign * to_state(g_in[i]);
    const S m_old = m[i];
    const S m_new = lerp_momentum<kLerpFromM>(m_old, g, c);
    const S v_new = v[i] * c.b2 + c.one_minus_b2 * (g * g);
    m[i] = m_new;
    v[i] = v_new;
    const S u = (m_new * c.inv_bc1) / (std::sqrt(v_new) * c.inv_bc2 + c.eps);
    p[i] = static_cast<P>(to_state(p[i]) * decay - lr * u);
  }
}

// ------------------------------------------------------------------ per-tensor drivers
// Pass 1 of one tensor; kOut says what it writes: the uint8 `mask` (kWriteMask), the mask and
// phi u into `kept` (kWriteKept; a byte buffer of at least n * sizeof(S)), or the parameter
// update with multiplier `step` (kWriteParam; neither buffer is used). Sums go to
// out[0..kSums).
template <typename P, typename S, int kOut>
void tensor_pass1(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& m,
                  const at::Tensor& v, const at::Tensor& mask, const at::Tensor& kept,
                  const Consts<S>& c, const Hyper& h, S decay, S step, double* out) {
  const int64_t n = m.numel();
  // Each sub-block of kSub elements is summed on its own (in parallel), and the sub-block sums
  // are then added in double in a fixed order, per kBlock block and then over the blocks: the
  // same additions in the same order as one sequential pass, whatever the thread count.
  const int64_t subs = (n + kSub - 1) / kSub;
  std::vector<double> partial(kSums * std::max<int64_t>(subs, 1), 0.0);
  P* p_ptr = kOut == kWriteParam ? param.data_ptr<P>() : nullptr;
  const P* g_ptr = grad.data_ptr<P>();
  S* m_ptr = m.data_ptr<S>();
  S* v_ptr = v.data_ptr<S>();
  uint8_t* mask_ptr = kOut != kWriteParam ? mask.data_ptr<uint8_t>() : nullptr;
  S* kept_ptr = kOut == kWriteKept ? reinterpret_cast<S*>(kept.data_ptr<uint8_t>()) : nullptr;
  at::parallel_for(0, subs, kGrain / kSub, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t lo = j * kSub, len = std::min(kSub, n - lo);
      const auto run = [&](auto kernel) {
        kernel(p_ptr ? p_ptr + lo : nullptr, g_ptr + lo, m_ptr + lo, v_ptr + lo,
               mask_ptr ? mask_ptr + lo : nullptr, kept_ptr ? kept_ptr + lo : nullptr, len, c,
               h.maximize, decay, step, &partial[kSums * j]);
      };
      if (h.mask == kMaskAsync) {
        c.lerp_from_m ? run(moments_block<P, S, kMaskAsync, true, kOut>)
                      : run(moments_block<P, S, kMaskAsync, false, kOut>);
      } else {
        c.lerp_from_m ? run(moments_block<P, S, kMaskSync, true, kOut>)
                      : run(moments_block<P, S, kMaskSync, false, kOut>);
      }
    }
  });
  for (int k = 0; k < kSums; ++k) out[k] = 0.0;
  constexpr int64_t kSubsPerBlock = kBlock / kSub;
  for (int64_t first = 0; first < subs; first += kSubsPerBlock) {
    double block[kSums] = {0.0, 0.0, 0.0, 0.0};
    for (int64_t j = first; j < std::min(subs, first + kSubsPerBlock); ++j) {
      for (int k = 0; k < kSums; ++k) block[k] += partial[kSums * j + k];
    }
    for (int k = 0; k < kSums; ++k) out[k] += block[k];
  }
}

template <typename P, typename S>
void tensor_pass2(const at::Tensor& param, const at::Tensor& m, const at::Tensor& v,
                  const at::Tensor& mask, const Consts<S>& c, S decay, S step) {
  const int64_t n = m.numel();
  P* p_ptr = param.data_ptr<P>();
  const S* m_ptr = m.data_ptr<S>();
  const S* v_ptr = v.data_ptr<S>();
  const uint8_t* mask_ptr = mask.data_ptr<uint8_t>();
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    apply_block<P, S>(p_ptr + lo, m_ptr + lo, v_ptr + lo, mask_ptr + lo, hi - lo, c, decay, step);
  });
}

// Pass 2 from phi u in `kept_buf` (a byte buffer written by tensor_pass1<..., kWriteKept>).
template <typename P, typename S>
void tensor_pass2_kept(const at::Tensor& param, const at::Tensor& kept_buf, S decay, S step) {
  const int64_t n = param.numel();
  P* p_ptr = param.data_ptr<P>();
  const S* kept_ptr = reinterpret_cast<const S*>(kept_buf.data_ptr<uint8_t>());
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    apply_kept_block<P, S>(p_ptr + lo, kept_ptr + lo, hi - lo, decay, step);
  });
}

template <typename P, typename S>
void tensor_adamw(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& m,
                  const at::Tensor& v, const Consts<S>& c, const Hyper& h) {
  const int64_t n = m.numel();
  P* p_ptr = param.data_ptr<P>();
  const P* g_ptr = grad.data_ptr<P>();
  S* m_ptr = m.data_ptr<S>();
  S* v_ptr = v.data_ptr<S>();
  const S decay = static_cast<S>(decay_factor(h));
  const S lr = static_cast<S>(h.lr);
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    const auto kernel = c.lerp_from_m ? adamw_block<P, S, true> : adamw_block<P, S, false>;
    kernel(p_ptr + lo, g_ptr + lo, m_ptr + lo, v_ptr + lo, hi - lo, c, h.maximize, decay, lr);
  });
}

// [1 - lr wd, lr * scale * alpha, alpha, density, grad density] from a tensor's complete
// sums: a copy, in double, of masking.compensation (scale * alpha, alpha, density, grad
// density) on the Python side, which tests/test_fused_cpu.py checks it against.
std::array<double, 5> coefficients(const double* sums, double numel, const Hyper& h) {
  const double total = sums[0], kept = sums[1], nnz = sums[2], active = sums[3];
  double scale = 1.0;
  if (h.rescale == kRescaleAll) scale = numel / (nnz + 1.0);
  if (h.rescale == kRescaleActive) scale = active / (nnz + 1.0);
  double alpha = 1.0;
  if (h.alpha != kAlphaNone) {
    if (kept > 0) {
      alpha = total / kept;
      if (h.alpha == kAlphaSqrtRatio) alpha = std::sqrt(alpha);
    } else {
      alpha = h.alpha_max;  // an empty mask moves nothing; report the clip (no 0/0)
    }
    alpha = std::min(alpha, h.alpha_max);
  }
  const double density = nnz / std::max(numel, 1.0);
  return {decay_factor(h), h.lr * scale * alpha, alpha, density,
          active / std::max(numel, 1.0)};
}

void check_tensor(const at::Tensor& t, const char* name, int64_t i) {
  TORCH_CHECK(t.device().is_cpu(), "fused='cpu' needs CPU tensors; ", name, "[", i,
              "] is on ", t.device(), " (use fused='triton' or fused=True on CUDA)");
  TORCH_CHECK(t.is_contiguous(), "fused='cpu' needs contiguous tensors; ", name, "[", i,
              "] is not (use fused=False)");
}

// Dispatch on (param dtype, state dtype); f is called as f(P{}, S{}).
template <typename F>
void dispatch(at::ScalarType p, at::ScalarType s, F&& f) {
  if (p == at::kFloat && s == at::kFloat) return f(float{}, float{});
  if (p == at::kDouble && s == at::kDouble) return f(double{}, double{});
  if (p == at::kBFloat16 && s == at::kFloat) return f(c10::BFloat16{}, float{});
  if (p == at::kHalf && s == at::kFloat) return f(c10::Half{}, float{});
  TORCH_CHECK(false, "fused='cpu' supports float32/float64 parameters and bfloat16/float16 "
              "parameters with float32 state; got parameter ", p, " with state ", s,
              " (use fused=False)");
}

Hyper make_hyper(double lr, double beta1, double beta2, double eps, double weight_decay,
                 bool bias_correction, bool maximize, int64_t mask, int64_t alpha,
                 double alpha_max, int64_t rescale) {
  TORCH_CHECK(mask >= 0 && mask <= 2, "mask kind must be 0 (none), 1 (async) or 2 (sync)");
  TORCH_CHECK(alpha >= 0 && alpha <= 2, "alpha kind must be 0 (none), 1 (ratio) or 2 (sqrt)");
  TORCH_CHECK(rescale >= 0 && rescale <= 2,
              "rescale kind must be 0 (none), 1 (all elements) or 2 (active elements)");
  return Hyper{lr, beta1, beta2, eps, weight_decay, alpha_max, bias_correction, maximize,
               mask, alpha, rescale};
}

void check_lists(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                 const std::vector<at::Tensor>& exp_avgs,
                 const std::vector<at::Tensor>& exp_avg_sqs, const std::vector<at::Tensor>& steps) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                  steps.size() == n,
              "params, grads, exp_avgs, exp_avg_sqs and steps must have the same length");
  for (size_t i = 0; i < n; ++i) {
    check_tensor(params[i], "params", i);
    check_tensor(grads[i], "grads", i);
    check_tensor(exp_avgs[i], "exp_avgs", i);
    check_tensor(exp_avg_sqs[i], "exp_avg_sqs", i);
    TORCH_CHECK(grads[i].scalar_type() == params[i].scalar_type(),
                "fused='cpu' needs gradients in the parameter dtype; grads[", i, "] is ",
                grads[i].scalar_type(), ", params[", i, "] is ", params[i].scalar_type());
    TORCH_CHECK(grads[i].numel() == params[i].numel() && exp_avgs[i].numel() == params[i].numel()
                    && exp_avg_sqs[i].numel() == params[i].numel(),
                "params[", i, "], its gradient and its state differ in size");
    TORCH_CHECK(exp_avg_sqs[i].scalar_type() == exp_avgs[i].scalar_type(),
                "exp_avg and exp_avg_sq differ in dtype at index ", i);
  }
}

// One-pass: the previous steps' multipliers (float64, one per tensor; > 0 where a tensor
// reuses it, 0 for the exact step), or nullptr for an empty tensor (every step exact).
const double* previous_multipliers(const at::Tensor& previous_scales, size_t n) {
  if (previous_scales.numel() == 0) return nullptr;
  TORCH_CHECK(previous_scales.scalar_type() == at::kDouble && previous_scales.device().is_cpu() &&
                  previous_scales.is_contiguous() &&
                  previous_scales.numel() == static_cast<int64_t>(n),
              "previous_scales must be a contiguous CPU float64 tensor with one value per "
              "parameter (or empty)");
  return previous_scales.data_ptr<double>();
}

}  // namespace

// The whole step for unsharded tensors: each tensor's pass 1, coefficients and pass 2 in turn.
// alphas/densities/grad_densities are the 0-d state tensors to receive alpha, the mask density
// and the gradient density (empty lists for mask="none"); previous_scales: see
// previous_multipliers. workspace: a uint8 buffer
// of at least (sizeof(state element) + 1) bytes per element of the largest masked tensor,
// phi u and then the mask of one tensor at a time, owned by the optimizer and reused every
// step (the step allocates nothing large).
void step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
          const std::vector<at::Tensor>& exp_avgs, const std::vector<at::Tensor>& exp_avg_sqs,
          const std::vector<at::Tensor>& steps, const std::vector<at::Tensor>& alphas,
          const std::vector<at::Tensor>& densities, const std::vector<at::Tensor>& grad_densities,
          const at::Tensor& previous_scales, const at::Tensor& workspace, double lr,
          double beta1, double beta2, double eps, double weight_decay, bool bias_correction,
          bool maximize, int64_t mask, int64_t alpha, double alpha_max, int64_t rescale) {
  check_lists(params, grads, exp_avgs, exp_avg_sqs, steps);
  const Hyper h = make_hyper(lr, beta1, beta2, eps, weight_decay, bias_correction, maximize,
                             mask, alpha, alpha_max, rescale);
  TORCH_CHECK(h.mask == kMaskNone || (alphas.size() == params.size() &&
                                      densities.size() == params.size() &&
                                      grad_densities.size() == params.size()),
              "a masked step needs one alpha, mask_density and grad_density tensor per "
              "parameter");
  const double* previous = previous_multipliers(previous_scales, params.size());
  TORCH_CHECK(workspace.scalar_type() == at::kByte && workspace.is_contiguous() &&
                  workspace.device().is_cpu(),
              "workspace must be a contiguous CPU uint8 tensor");
  for (size_t i = 0; i < params.size(); ++i) {
    const double t = increment_step(steps[i]);
    const int64_t n = params[i].numel();
    dispatch(params[i].scalar_type(), exp_avgs[i].scalar_type(), [&](auto p_tag, auto s_tag) {
      using P = decltype(p_tag);
      using S = decltype(s_tag);
      const Consts<S> c = loop_consts<S>(h, t);
      if (h.mask == kMaskNone) {
        if (n > 0) tensor_adamw<P, S>(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], c, h);
        return;
      }
      double sums[kSums] = {0, 0, 0, 0};
      if (previous != nullptr && previous[i] > 0) {  // one pass: the previous multiplier
        if (n > 0) {
          tensor_pass1<P, S, kWriteParam>(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i],
                                          at::Tensor(), at::Tensor(), c, h,
                                          static_cast<S>(decay_factor(h)),
                                          static_cast<S>(h.lr * previous[i]), sums);
        }
        const auto k = coefficients(sums, static_cast<double>(n), h);
        write_scalar(alphas[i], k[2]);
        write_scalar(densities[i], k[3]);
        write_scalar(grad_densities[i], k[4]);
        return;
      }
      const int64_t kept_bytes = n * static_cast<int64_t>(sizeof(S));
      TORCH_CHECK(workspace.numel() >= kept_bytes + n, "workspace holds ", workspace.numel(),
                  " bytes; params[", i, "] needs ", kept_bytes + n);
      const at::Tensor tensor_kept = workspace.narrow(0, 0, kept_bytes);
      const at::Tensor tensor_mask = workspace.narrow(0, kept_bytes, n);
      if (n > 0) {
        tensor_pass1<P, S, kWriteKept>(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i],
                                       tensor_mask, tensor_kept, c, h, S(0), S(0), sums);
      }
      const auto k = coefficients(sums, static_cast<double>(n), h);
      if (n > 0) {
        tensor_pass2_kept<P, S>(params[i], tensor_kept, static_cast<S>(k[0]),
                                static_cast<S>(k[1]));
      }
      write_scalar(alphas[i], k[2]);
      write_scalar(densities[i], k[3]);
      write_scalar(grad_densities[i], k[4]);
    });
  }
}

// Pass 1 of every (local shard of a) tensor: increments the steps, updates the moments, fills
// masks[i] (uint8, one per element) and returns the [n, kSums] float64 partial sums. A tensor
// with previous_scales[i] > 0 (one-pass) writes its parameter instead of a mask (masks[i]
// may then be empty): the update never waits for the all-reduce of the sums.
at::Tensor moments_and_sums(const std::vector<at::Tensor>& params,
                            const std::vector<at::Tensor>& grads,
                            const std::vector<at::Tensor>& exp_avgs,
                            const std::vector<at::Tensor>& exp_avg_sqs,
                            const std::vector<at::Tensor>& steps,
                            const std::vector<at::Tensor>& masks,
                            const at::Tensor& previous_scales, double lr, double beta1,
                            double beta2, double eps, double weight_decay, bool bias_correction,
                            bool maximize, int64_t mask) {
  check_lists(params, grads, exp_avgs, exp_avg_sqs, steps);
  TORCH_CHECK(masks.size() == grads.size(), "one mask per tensor");
  TORCH_CHECK(mask != kMaskNone, "moments_and_sums is for masked steps");
  const Hyper h = make_hyper(lr, beta1, beta2, eps, weight_decay, bias_correction, maximize, mask,
                             kAlphaNone, 1.0, kRescaleNone);
  const double* previous = previous_multipliers(previous_scales, grads.size());
  at::Tensor sums = at::zeros({static_cast<int64_t>(grads.size()), kSums},
                              at::TensorOptions().dtype(at::kDouble));
  double* out = sums.data_ptr<double>();
  for (size_t i = 0; i < grads.size(); ++i) {
    const double t = increment_step(steps[i]);
    const bool reuse = previous != nullptr && previous[i] > 0;
    TORCH_CHECK(reuse || (masks[i].scalar_type() == at::kByte &&
                          masks[i].numel() == grads[i].numel() && masks[i].is_contiguous()),
                "masks[", i, "] must be a contiguous uint8 tensor of the gradient's size");
    if (grads[i].numel() == 0) continue;
    dispatch(grads[i].scalar_type(), exp_avgs[i].scalar_type(), [&](auto p_tag, auto s_tag) {
      using P = decltype(p_tag);
      using S = decltype(s_tag);
      const Consts<S> c = loop_consts<S>(h, t);
      if (reuse) {
        tensor_pass1<P, S, kWriteParam>(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i],
                                        masks[i], at::Tensor(), c, h,
                                        static_cast<S>(decay_factor(h)),
                                        static_cast<S>(h.lr * previous[i]), out + kSums * i);
      } else {
        tensor_pass1<P, S, kWriteMask>(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i],
                                       masks[i], at::Tensor(), c, h, S(0), S(0),
                                       out + kSums * i);
      }
    });
  }
  return sums;
}

// Pass 2 from complete (all-reduced) sums; numels are the whole tensors' element counts.
// Tensors that took the one-pass update in moments_and_sums only get their alpha and density.
void apply_from_sums(const std::vector<at::Tensor>& params,
                     const std::vector<at::Tensor>& exp_avgs,
                     const std::vector<at::Tensor>& exp_avg_sqs,
                     const std::vector<at::Tensor>& steps, const std::vector<at::Tensor>& masks,
                     const at::Tensor& sums, const std::vector<int64_t>& numels,
                     const std::vector<at::Tensor>& alphas,
                     const std::vector<at::Tensor>& densities,
                     const std::vector<at::Tensor>& grad_densities,
                     const at::Tensor& previous_scales, double lr, double beta1,
                     double beta2, double eps, double weight_decay, bool bias_correction,
                     int64_t alpha, double alpha_max, int64_t rescale) {
  const size_t n = params.size();
  TORCH_CHECK(exp_avgs.size() == n && exp_avg_sqs.size() == n && steps.size() == n &&
                  masks.size() == n && numels.size() == n && alphas.size() == n &&
                  densities.size() == n && grad_densities.size() == n,
              "apply_from_sums: every list needs one entry per parameter");
  TORCH_CHECK(sums.scalar_type() == at::kDouble && sums.dim() == 2 && sums.size(0) == (int64_t)n &&
                  sums.size(1) == kSums && sums.is_contiguous() && sums.device().is_cpu(),
              "sums must be a contiguous CPU float64 tensor of shape [n, 4]");
  const Hyper h = make_hyper(lr, beta1, beta2, eps, weight_decay, bias_correction, false,
                             kMaskAsync, alpha, alpha_max, rescale);
  const double* s = sums.data_ptr<double>();
  const double* previous = previous_multipliers(previous_scales, n);
  for (size_t i = 0; i < n; ++i) {
    check_tensor(params[i], "params", i);
    const double t = read_step(steps[i]);
    const bool updated = previous != nullptr && previous[i] > 0;
    dispatch(params[i].scalar_type(), exp_avgs[i].scalar_type(), [&](auto p_tag, auto s_tag) {
      using P = decltype(p_tag);
      using S = decltype(s_tag);
      const auto k = coefficients(s + kSums * i, static_cast<double>(numels[i]), h);
      if (!updated && params[i].numel() > 0) {
        tensor_pass2<P, S>(params[i], exp_avgs[i], exp_avg_sqs[i], masks[i],
                           loop_consts<S>(h, t), static_cast<S>(k[0]), static_cast<S>(k[1]));
      }
      write_scalar(alphas[i], k[2]);
      write_scalar(densities[i], k[3]);
      write_scalar(grad_densities[i], k[4]);
    });
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("step", &step, "Fused AlphaAdam step over unsharded CPU tensors");
  m.def("moments_and_sums", &moments_and_sums, "Pass 1 over (local shards of) CPU tensors");
  m.def("apply_from_sums", &apply_from_sums, "Pass 2 from complete per-tensor sums");
}
