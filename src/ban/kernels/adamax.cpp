// One pass of Adamax over a float32 CPU parameter (ban.engine.optim.FusedCPUAdamax).
//
// The arithmetic of torch.optim.Adamax's single-tensor update, element by element, on g = grad · grad_scale
// (gradient clipping's factor, which clip_grad_norm_ would have multiplied into the gradient first):
//   m ← m + (1 − β1)·(g − m)          exp_avg.lerp_(grad, 1 − β1)
//   u ← max(β2·u, |g| + ε)            torch.maximum(exp_inf.mul_(β2), grad.abs().add_(eps)), NaN propagating
//   p ← p − step_size·(m / u)          param.addcdiv_(exp_avg, exp_inf, value=−step_size)
// PyTorch runs these as six element-wise operations, sixteen passes over memory; this loop reads p, g, m, u and
// writes p, m, u once. Multiply-adds stay unfused (-ffp-contract=off), so a result can differ from PyTorch's
// vectorised kernels (which fuse them in lerp) in the last bit.

#include "kernels.h"

#include <ATen/Parallel.h>

#include <cmath>

namespace {

BAN_HOT_LOOP void update_range(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ exp_avg,
                  float* __restrict__ exp_inf, int64_t count, float scale, float weight, float beta2, float eps,
                  float value) {
  for (int64_t i = 0; i < count; ++i) {
    const float g = grad[i] * scale;
    const float m = exp_avg[i] + weight * (g - exp_avg[i]);
    const float decayed = exp_inf[i] * beta2;
    const float magnitude = std::fabs(g) + eps;
    const float u = (decayed > magnitude || decayed != decayed) ? decayed : magnitude;
    exp_avg[i] = m;
    exp_inf[i] = u;
    param[i] = param[i] + value * (m / u);
  }
}

void check(const torch::Tensor& tensor, const torch::Tensor& param, const char* name) {
  TORCH_CHECK(tensor.device().is_cpu() && tensor.scalar_type() == torch::kFloat && tensor.is_contiguous(),
              name, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(tensor.numel() == param.numel(), name, " must have the parameter's ", param.numel(), " elements");
}

}  // namespace

void adamax_update(torch::Tensor param, torch::Tensor grad, torch::Tensor exp_avg, torch::Tensor exp_inf,
                   double beta1, double beta2, double eps, double step_size, double grad_scale) {
  check(param, param, "param");
  check(grad, param, "grad");
  check(exp_avg, param, "exp_avg");
  check(exp_inf, param, "exp_inf");
  float* p = param.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* u = exp_inf.data_ptr<float>();
  const float scale = static_cast<float>(grad_scale);
  const float weight = static_cast<float>(1.0 - beta1), b2 = static_cast<float>(beta2);
  const float e = static_cast<float>(eps), value = static_cast<float>(-step_size);
  at::parallel_for(0, param.numel(), 32768, [=](int64_t begin, int64_t end) {
    update_range(p + begin, g + begin, m + begin, u + begin, end - begin, scale, weight, b2, e, value);
  });
}
