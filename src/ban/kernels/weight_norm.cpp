// The weight-normalised linear map's passes over its direction V (ban.nn.fc): forward, ‖V‖² and V in the product's
// dtype in one pass; backward, V's whole gradient in one pass — the product's gradient (cast to float32) plus the
// norm's term c·V — where autograd makes three (cast, the norm's term, their sum), and the scalar's gradient
// Σ grad_out·product without casting either to float32 first.

#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

namespace {

constexpr int64_t kBlock = 1 << 16;  // fixed blocks: the sum's rounding does not depend on the thread count
constexpr int kLanes = 8;

// Σ a·b over one block in kLanes float64 partial sums (so the loop vectorises); writes a in cast_t when cast is given.
template <typename in_t, typename cast_t>
BAN_HOT_LOOP double block_dot(const in_t* __restrict__ a, const in_t* __restrict__ b, cast_t* __restrict__ cast,
                              int64_t count) {
  double lanes[kLanes] = {0.0};
  const int64_t whole = count - count % kLanes;
  for (int64_t i = 0; i < whole; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) lanes[k] += static_cast<double>(a[i + k]) * static_cast<double>(b[i + k]);
  }
  for (int64_t i = whole; i < count; ++i) lanes[0] += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  if (cast != nullptr) {
    for (int64_t i = 0; i < count; ++i) cast[i] = static_cast<cast_t>(a[i]);
  }
  double total = 0.0;
  for (double lane : lanes) total += lane;
  return total;
}

// Σ over [0, count) of block_sum(start, length) for fixed blocks, summed in block order: the rounding does not
// depend on the thread count.
template <typename BlockSum>
double fixed_block_sum(int64_t count, const BlockSum& block_sum) {
  const int64_t blocks = (count + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<size_t>(blocks), 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t start = block * kBlock;
      partial[block] = block_sum(start, std::min(kBlock, count - start));
    }
  });
  double total = 0.0;
  for (double value : partial) total += value;
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
  const float* source = direction.data_ptr<float>();
  const auto run = [&](auto* target) {
    return fixed_block_sum(direction.numel(), [&](int64_t start, int64_t length) {
      return block_dot(source + start, source + start, target == nullptr ? nullptr : target + start, length);
    });
  };
  if (!casting) return run(static_cast<float*>(nullptr));
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, cast->scalar_type(), "square_sum_and_cast_", [&] {
    total = run(cast->data_ptr<scalar_t>());
  });
  return total;
}

double product_sum(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu() && a.is_contiguous() && b.is_contiguous() &&
                  a.scalar_type() == b.scalar_type() && a.numel() == b.numel(),
              "a and b must be contiguous CPU tensors of one dtype and size");
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "product_sum", [&] {
    const scalar_t* left = a.data_ptr<scalar_t>();
    const scalar_t* right = b.data_ptr<scalar_t>();
    total = fixed_block_sum(a.numel(), [&](int64_t start, int64_t length) {
      return block_dot(left + start, right + start, static_cast<float*>(nullptr), length);
    });
  });
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
