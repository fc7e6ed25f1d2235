// Reading what tests/cpp/write_python_data.py writes (a ctest fixture) into
// TORCH_EXT_TEST_DATA: the Python modules' cases the C++ modules must match.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

namespace python_data {

using torch::Tensor;
namespace fs = std::filesystem;

inline const fs::path kData = TORCH_EXT_TEST_DATA;

inline c10::impl::GenericDict read_dict(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  EXPECT_TRUE(file) << "cannot open " << path << " (written by write_python_data.py)";
  const std::vector<char> bytes((std::istreambuf_iterator<char>(file)),
                                std::istreambuf_iterator<char>());
  return torch::pickle_load(bytes).toGenericDict();
}

inline std::optional<Tensor> optional_tensor(const c10::IValue& value) {
  return value.isNone() ? std::nullopt : std::optional<Tensor>(value.toTensor());
}

inline c10::Dict<std::string, Tensor> tensor_dict(const c10::IValue& value) {
  c10::Dict<std::string, Tensor> result;
  for (const auto& entry : value.toGenericDict()) {
    result.insert(entry.key().toStringRef(), entry.value().toTensor());
  }
  return result;
}

}  // namespace python_data
