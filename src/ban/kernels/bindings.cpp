// The Python module of ban's CPU kernels (loaded by ban.kernels.compiled).
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("adamax_update", &adamax_update, "one fused Adamax step on a float32 CPU parameter");
  module.def("masked_scale_", &masked_scale_, "out = input · keep-mask(seed, threshold) · scale, in out's dtype");
  module.def("square_sum_and_cast_", &square_sum_and_cast_,
             "Σ direction² (float64, deterministic); writes direction in cast's dtype into cast when given");
  module.def("piecewise_linear", &piecewise_linear, "the counting module's f(x) from its normalised slopes");
  module.def("piecewise_linear_backward", &piecewise_linear_backward, "(∂/∂x, ∂/∂slopes) of piecewise_linear");
  module.def("product_sum", &product_sum, "Σ a·b (float64, deterministic) of two tensors of one dtype and size");
  module.def("weight_norm_grad_", &weight_norm_grad_, "out = float(product_grad) + coefficient · direction");
}
