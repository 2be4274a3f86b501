#include "core/optim_adam.h"

#include <algorithm>

#include "core/parallel.h"

namespace kbit::core {

void code_search_tree(const float* code, float* tree) {
  tree[0] = 0.0f;
  for (int i = 1; i < 256; ++i) {
    const int k = tree_node_midpoint(i);
    tree[i] = mul_rn(0.5f, add_rn(code[k], code[k + 1]));
  }
}

template <typename T>
void adam_update_32bit(T* p, const T* g, float* m, float* v, int64_t n, const AdamConfig& c) {
  parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float pv = to_float(p[i]);
      adam_element(pv, to_float(g[i]), m[i], v[i], c);
      p[i] = from_float<T>(pv);
    }
  });
}

template <typename T>
void adam_update_8bit_blockwise(T* p, const T* g, uint8_t* state1, uint8_t* state2, float* absmax1,
                                float* absmax2, const float* code1, const float* code2, int64_t n,
                                const AdamConfig& c) {
  float tree1[256], tree2[256];
  code_search_tree(code1, tree1);
  code_search_tree(code2, tree2);
  const int64_t blocks = (n + kOptimBlocksize - 1) / kOptimBlocksize;
  parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    float m[kOptimBlocksize], v[kOptimBlocksize];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t start = b * kOptimBlocksize;
      const int64_t len = std::min(kOptimBlocksize, n - start);
      const float a1 = absmax1[b], a2 = absmax2[b];
      float new_a1 = 0.0f, new_a2 = 0.0f;
      for (int64_t j = 0; j < len; ++j) {
        const int64_t i = start + j;
        float pv = to_float(p[i]);
        m[j] = code1[state1[i]] * a1;
        v[j] = code2[state2[i]] * a2;
        adam_element(pv, to_float(g[i]), m[j], v[j], c);
        p[i] = from_float<T>(pv);
        new_a1 = std::max(new_a1, std::fabs(m[j]));
        new_a2 = std::max(new_a2, std::fabs(v[j]));
      }
      // An all-zero block keeps absmax 0; its values encode as the code's zero.
      const float inv1 = new_a1 > 0.0f ? 1.0f / new_a1 : 0.0f;
      const float inv2 = new_a2 > 0.0f ? 1.0f / new_a2 : 0.0f;
      for (int64_t j = 0; j < len; ++j) {
        state1[start + j] = uint8_t(nearest_in_tree(tree1, m[j] * inv1));
        state2[start + j] = uint8_t(nearest_in_tree(tree2, v[j] * inv2));
      }
      absmax1[b] = new_a1;
      absmax2[b] = new_a2;
    }
  });
}

#define KBIT_INSTANTIATE(T)                                                                          \
  template void adam_update_32bit<T>(T*, const T*, float*, float*, int64_t, const AdamConfig&);      \
  template void adam_update_8bit_blockwise<T>(T*, const T*, uint8_t*, uint8_t*, float*, float*,      \
                                              const float*, const float*, int64_t, const AdamConfig&);
KBIT_INSTANTIATE(float)
KBIT_INSTANTIATE(half)
KBIT_INSTANTIATE(bfloat16)
#undef KBIT_INSTANTIATE

}  // namespace kbit::core
