// The content key of the bank caches (cache.h).
#include "bank_plan/cache.h"

#include <ATen/ATen.h>

#include <cstring>

namespace fixedbranch {

std::string bank_content_key(const at::Tensor& bank) {
  const at::Tensor values = bank.detach().contiguous();
  const int64_t header[4] = {static_cast<int64_t>(values.scalar_type()), values.size(0), values.size(1),
                             values.size(2)};
  const size_t value_bytes = values.nbytes();
  std::string key(sizeof(header) + value_bytes, '\0');
  std::memcpy(&key[0], header, sizeof(header));
  if (value_bytes > 0) std::memcpy(&key[sizeof(header)], values.const_data_ptr(), value_bytes);
  return key;
}

}  // namespace fixedbranch
