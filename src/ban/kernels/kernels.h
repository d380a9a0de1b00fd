// The functions of ban's CPU kernel module (bindings.cpp); the Python side is ban.kernels.
#pragma once

#include <torch/extension.h>

#include <cstdint>
#include <optional>
#include <vector>

// The hot loops are compiled for AVX-512 and AVX2 machines besides the baseline x86-64, and the dynamic loader picks
// the clone the CPU can run (GCC 12+ on x86-64; elsewhere one portable version). Without them the loops are not
// vectorised: dropout's masked copy ran 18× slower. -ffp-contract=off (ban.kernels) keeps multiply-adds unfused in
// every clone, so all clones round as PyTorch's operators do.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define BAN_HOT_LOOP __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BAN_HOT_LOOP
#endif

// adamax.cpp
void adamax_update(torch::Tensor param, torch::Tensor grad, torch::Tensor exp_avg, torch::Tensor exp_inf,
                   double beta1, double beta2, double eps, double step_size, double grad_scale);

// dropout.cpp
void masked_scale_(const torch::Tensor& input, torch::Tensor out, uint64_t seed, int64_t threshold, double scale);

// piecewise.cpp
torch::Tensor piecewise_linear(const torch::Tensor& x, const torch::Tensor& slopes);
std::vector<torch::Tensor> piecewise_linear_backward(const torch::Tensor& grad, const torch::Tensor& x,
                                                     const torch::Tensor& slopes);

// weight_norm.cpp
double square_sum_and_cast_(const torch::Tensor& direction, std::optional<torch::Tensor> cast);
double product_sum(const torch::Tensor& a, const torch::Tensor& b);
void weight_norm_grad_(const torch::Tensor& product_grad, const torch::Tensor& direction, double coefficient,
                       torch::Tensor out);
