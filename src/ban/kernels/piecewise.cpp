// The counting module's monotone piecewise-linear functions (ban.nn.counting.PiecewiseLinear) in one pass each way.
//
// f(x) = ŵ₀ + Σ_{k=1..n} ŵ_k · clamp(n·x − (k − 1), 0, 1). With t = n·x in segment m = ⌊t⌋ the terms k ≤ m are 1 and
// term m + 1 is t − m, so f(x) = ŵ₀ + (ŵ₁ + … + ŵ_m) + ŵ_{m+1}·(t − m): no [..., n] tensor of ramps. The backward
// follows the dense form's autograd exactly: ramp k passes the gradient where 0 ≤ n·x − (k − 1) < 1 (≤ 1 for the
// last ramp), as the reference's look-up does, and ∂f/∂ŵ_k = clamp(n·x − (k − 1), 0, 1), summed per fixed block in a
// histogram over the segments, then in block order (the sum does not depend on the thread count).

#include "kernels.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

constexpr int64_t kBlock = 1 << 14;

void check_inputs(const torch::Tensor& x, const torch::Tensor& slopes) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.is_contiguous(),
              "x must be a contiguous float32 CPU tensor");
  TORCH_CHECK(slopes.device().is_cpu() && slopes.scalar_type() == torch::kFloat && slopes.is_contiguous() &&
                  slopes.dim() == 1 && slopes.numel() >= 2,
              "slopes must be a contiguous float32 CPU vector of n + 1 ≥ 2 entries");
}

}  // namespace

torch::Tensor piecewise_linear(const torch::Tensor& x, const torch::Tensor& slopes) {
  check_inputs(x, slopes);
  const int64_t n = slopes.numel() - 1;
  const float* w = slopes.data_ptr<float>();
  // prefix[m] = ŵ₀ + ŵ₁ + … + ŵ_m, summed in double and rounded once (a float running sum drifts by an ulp or more)
  std::vector<float> prefix(static_cast<size_t>(n + 1));
  double sum = 0.0;
  for (int64_t k = 0; k <= n; ++k) {
    sum += static_cast<double>(w[k]);
    prefix[k] = static_cast<float>(sum);
  }
  torch::Tensor out = torch::empty_like(x);
  const float* input = x.data_ptr<float>();
  float* target = out.data_ptr<float>();
  const float segments = static_cast<float>(n);
  at::parallel_for(0, x.numel(), 32768, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float t = segments * input[i];
      if (std::isnan(t)) {
        target[i] = t;
      } else if (t <= 0.0f) {
        target[i] = prefix[0];
      } else if (t >= segments) {
        target[i] = prefix[n];
      } else {
        const auto m = static_cast<int64_t>(t);  // t > 0: truncation is the floor
        target[i] = prefix[m] + w[m + 1] * (t - static_cast<float>(m));
      }
    }
  });
  return out;
}

std::vector<torch::Tensor> piecewise_linear_backward(const torch::Tensor& grad, const torch::Tensor& x,
                                                     const torch::Tensor& slopes) {
  check_inputs(x, slopes);
  TORCH_CHECK(grad.device().is_cpu() && grad.scalar_type() == torch::kFloat && grad.is_contiguous() &&
                  grad.numel() == x.numel(),
              "grad must be a contiguous float32 CPU tensor with x's ", x.numel(), " elements");
  const int64_t n = slopes.numel() - 1;
  const float* w = slopes.data_ptr<float>();
  const float* input = x.data_ptr<float>();
  const float* upstream = grad.data_ptr<float>();
  torch::Tensor grad_x = torch::empty_like(x);
  float* grad_input = grad_x.data_ptr<float>();
  const int64_t count = x.numel();
  const int64_t blocks = (count + kBlock - 1) / kBlock;
  // per block: full[m] = Σ g over the elements in segment m (ramps 1…m at 1; t ≥ n counts as m = n, t ≤ 0 and NaN
  // as m = 0), then partial[k] = Σ g · ramp_k over the elements whose ramp k lies strictly between 0 and 1
  std::vector<double> histograms(static_cast<size_t>(blocks * 2 * (n + 1)), 0.0);
  const float segments = static_cast<float>(n);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      double* full = histograms.data() + block * 2 * (n + 1);
      double* partial = full + (n + 1);
      const int64_t end = std::min(count, (block + 1) * kBlock);
      for (int64_t i = block * kBlock; i < end; ++i) {
        const float g = upstream[i];
        const float t = segments * input[i];
        if (std::isnan(t)) {  // every ramp is NaN: clamp's backward passes nothing to x, ŵ₁…ŵ_n get NaN
          grad_input[i] = 0.0f;
          full[0] += g;
          for (int64_t k = 1; k <= n; ++k) partial[k] += static_cast<double>(t);
          continue;
        }
        if (t <= 0.0f) {
          grad_input[i] = t == 0.0f ? g * segments * w[1] : 0.0f;  // ramp 1 at its lower end still passes
          full[0] += g;
        } else if (t >= segments) {
          grad_input[i] = t == segments ? g * segments * w[n] : 0.0f;  // ramp n at its upper end still passes
          full[n] += g;
        } else {
          const auto m = static_cast<int64_t>(t);
          const float fraction = t - static_cast<float>(m);
          grad_input[i] = g * segments * w[m + 1];  // on a knot (t = m) only ramp m + 1, at 0, passes
          full[m] += g;
          partial[m + 1] += static_cast<double>(g) * fraction;
        }
      }
    }
  });
  std::vector<double> full(static_cast<size_t>(n + 1), 0.0), partial(static_cast<size_t>(n + 1), 0.0);
  for (int64_t block = 0; block < blocks; ++block) {
    const double* histogram = histograms.data() + block * 2 * (n + 1);
    for (int64_t k = 0; k <= n; ++k) {
      full[k] += histogram[k];
      partial[k] += histogram[n + 1 + k];
    }
  }
  torch::Tensor grad_slopes = torch::empty({n + 1}, slopes.options());
  float* grad_w = grad_slopes.data_ptr<float>();
  double above = 0.0;  // Σ full[m] for m ≥ k: the elements whose ramp k is 1; with full[0], every element once
  for (int64_t k = n; k >= 1; --k) {
    above += full[k];
    grad_w[k] = static_cast<float>(above + partial[k]);
  }
  grad_w[0] = static_cast<float>(above + full[0]);
  return {grad_x, grad_slopes};
}
