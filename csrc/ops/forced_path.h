// KBIT_*_PATH environment variables, by which benchmarks and tests force one of an op's kernels.
#pragma once
#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace kbit::ops {

// 1 + the position in `names` of the variable's value; 0 when it is unset or names nothing.
inline int forced_choice(const char* variable, std::initializer_list<const char*> names) {
  const char* value = std::getenv(variable);
  if (value == nullptr) return 0;
  int i = 1;
  for (const char* name : names) {
    if (std::strcmp(value, name) == 0) return i;
    ++i;
  }
  return 0;
}

}  // namespace kbit::ops
