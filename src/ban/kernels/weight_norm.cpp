// The weight-normalised linear map's passes over its direction V (ban.nn.fc): forward, ‖V‖² and V in the product's
// dtype in one pass; backward, V's whole gradient in one pass — the product's gradient (cast to float32) plus the
// norm's term c·V — where autograd makes three (cast, the norm's term, their sum).

#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

namespace {

constexpr int64_t kBlock = 1 << 16;  // fixed blocks: the sum's rounding does not depend on the thread count
constexpr int kLanes = 8;

// Σ x² over one block in kLanes float64 partial sums (so the loop vectorises), writing x in cast_t when cast is given.
template <typename cast_t>
BAN_HOT_LOOP double block_square_sum(const float* __restrict__ x, cast_t* __restrict__ cast, int64_t count) {
  double lanes[kLanes] = {0.0};
  const int64_t whole = count - count % kLanes;
  for (int64_t i = 0; i < whole; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) lanes[k] += static_cast<double>(x[i + k]) * x[i + k];
  }
  for (int64_t i = whole; i < count; ++i) lanes[0] += static_cast<double>(x[i]) * x[i];
  if (cast != nullptr) {
    for (int64_t i = 0; i < count; ++i) cast[i] = static_cast<cast_t>(x[i]);
  }
  double total = 0.0;
  for (double lane : lanes) total += lane;
  return total;
}

template <typename grad_t>
BAN_HOT_LOOP void add_norm_term(const grad_t* __restrict__ grad, const float* __restrict__ direction, float coefficient,
                                float* __restrict__ out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = static_cast<float>(grad[i]) + coefficient * direction[i];
}

void check_direction(const torch::Tensor& direction) {
  TORCH_CHECK(direction.device().is_cpu() && direction.scalar_type() == torch::kFloat && direction.is_contiguous(),
              "direction must be a contiguous float32 CPU tensor");
}

}  // namespace

double square_sum_and_cast_(const torch::Tensor& direction, std::optional<torch::Tensor> cast) {
  check_direction(direction);
  const bool casting = cast.has_value();
  TORCH_CHECK(!casting || (cast->device().is_cpu() && cast->is_contiguous() && cast->numel() == direction.numel()),
              "cast must be a contiguous CPU tensor with the direction's ", direction.numel(), " elements");
  const int64_t count = direction.numel();
  const int64_t blocks = (count + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(blocks), 0.0);
  const float* source = direction.data_ptr<float>();
  const auto run = [&](auto* target) {
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t start = block * kBlock;
        auto* cast_start = target == nullptr ? nullptr : target + start;
        partial[block] = block_square_sum(source + start, cast_start, std::min(kBlock, count - start));
      }
    });
  };
  if (!casting) {
    run(static_cast<float*>(nullptr));
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, cast->scalar_type(), "square_sum_and_cast_", [&] {
      run(cast->data_ptr<scalar_t>());
    });
  }
  double total = 0.0;
  for (double value : partial) total += value;
  return total;
}

void weight_norm_grad_(const torch::Tensor& product_grad, const torch::Tensor& direction, double coefficient,
                       torch::Tensor out) {
  check_direction(direction);
  TORCH_CHECK(product_grad.device().is_cpu() && product_grad.is_contiguous() &&
                  product_grad.numel() == direction.numel(),
              "product_grad must be a contiguous CPU tensor with the direction's ", direction.numel(), " elements");
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == torch::kFloat && out.is_contiguous() &&
                  out.numel() == direction.numel(),
              "out must be a contiguous float32 CPU tensor with the direction's ", direction.numel(), " elements");
  const float c = static_cast<float>(coefficient);
  const float* v = direction.data_ptr<float>();
  float* target = out.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, product_grad.scalar_type(), "weight_norm_grad_", [&] {
    const scalar_t* grad = product_grad.data_ptr<scalar_t>();
    at::parallel_for(0, direction.numel(), 32768, [&](int64_t begin, int64_t end) {
      add_norm_term(grad + begin, v + begin, c, target + begin, end - begin);
    });
  });
}
