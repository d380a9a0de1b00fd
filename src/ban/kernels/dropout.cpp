// Dropout's mask drawn and applied in one pass (ban.nn.dropout).
//
// Element i of a mask with seed s is kept when 32 bits of SplitMix64's word i / 2 fall under the threshold
// round(keep · 2³²): word w = mix(s + (w + 1) · γ), its low half for even i, its high half for odd i. That is the
// SplitMix64 sequence seeded with s, computed from the word's index, so any range of elements is drawn on any
// thread and the result does not depend on the thread count. ban.nn.dropout.seeded_mask computes the same bits with
// NumPy; the backward pass draws the mask again from the seed instead of storing it.

#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ULL;

inline uint64_t splitmix64_word(uint64_t seed, uint64_t word) {
  uint64_t z = seed + (word + 1) * kGamma;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// 1 when the 32 bits fall under the threshold, else 0 — as a number, not a branch (a branch on random bits
// mispredicts half the time, and stops the loop from being vectorised).
inline uint64_t kept(uint64_t bits32, uint64_t threshold) { return (bits32 - threshold) >> 63; }

// out = x · keep · factor for the elements of words [first_word, end_word): the torch path's x · mask · factor, NaN
// and the sign of zero included.
template <typename in_t, typename out_t>
BAN_HOT_LOOP void masked_scale_words(const in_t* __restrict__ input, out_t* __restrict__ out, int64_t count,
                                     int64_t first_word, int64_t end_word, uint64_t seed, uint64_t threshold,
                                     double scale) {
  using opmath_t = at::opmath_type<in_t>;
  const auto factor = static_cast<opmath_t>(scale);
  const int64_t whole_words = std::min(end_word, count / 2);  // words with two elements
  for (int64_t word = first_word; word < whole_words; ++word) {
    const uint64_t bits = splitmix64_word(seed, static_cast<uint64_t>(word));
    const auto low = static_cast<opmath_t>(kept(bits & 0xFFFFFFFFULL, threshold));
    const auto high = static_cast<opmath_t>(kept(bits >> 32, threshold));
    out[2 * word] = static_cast<out_t>(static_cast<opmath_t>(input[2 * word]) * factor * low);
    out[2 * word + 1] = static_cast<out_t>(static_cast<opmath_t>(input[2 * word + 1]) * factor * high);
  }
  if (end_word > whole_words) {  // an odd count's last element: the low half of the last word
    const uint64_t bits = splitmix64_word(seed, static_cast<uint64_t>(whole_words));
    const auto low = static_cast<opmath_t>(kept(bits & 0xFFFFFFFFULL, threshold));
    out[count - 1] = static_cast<out_t>(static_cast<opmath_t>(input[count - 1]) * factor * low);
  }
}

}  // namespace

void masked_scale_(const torch::Tensor& input, torch::Tensor out, uint64_t seed, int64_t threshold, double scale) {
  TORCH_CHECK(input.device().is_cpu() && input.is_contiguous(), "input must be a contiguous CPU tensor");
  TORCH_CHECK(out.device().is_cpu() && out.is_contiguous() && out.numel() == input.numel(),
              "out must be a contiguous CPU tensor with the input's ", input.numel(), " elements");
  TORCH_CHECK(threshold >= 0 && threshold <= 0xFFFFFFFFLL, "threshold must fit in 32 bits, got ", threshold);
  const int64_t count = input.numel();
  const int64_t words = (count + 1) / 2;
  const auto limit = static_cast<uint64_t>(threshold);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "masked_scale_", [&] {
    using in_t = scalar_t;
    const in_t* source = input.data_ptr<in_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "masked_scale_out", [&] {
      scalar_t* target = out.data_ptr<scalar_t>();
      at::parallel_for(0, words, 16384, [&](int64_t begin, int64_t end) {
        masked_scale_words<in_t, scalar_t>(source, target, count, begin, end, seed, limit, scale);
      });
    });
  });
}
