// Byte-exactness against bitsandbytes: its outputs for fixed inputs, stored in
// bnb_vectors.safetensors (see testdata/README.md), must come out of the core kernels unchanged.
// Skipped when the file is absent (set KBIT_TESTDATA to its directory).
#include <gtest/gtest.h>

#include <cstring>

#include "core/blockwise_4bit.h"
#include "core/blockwise_8bit.h"
#include "core/codebooks.h"
#include "core/int8_rowwise.h"
#include "safetensors_reader.h"
#include "test_util.h"

namespace kbit::core {
namespace {

class BnbVectors : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = testing::testdata_dir() + "/bnb_vectors.safetensors";
    file_ = new testing::SafeTensors();
    loaded_ = file_->load(path);
    if (!loaded_) error_ = path + ": " + file_->error();
  }
  static void TearDownTestSuite() { delete file_; }
  void SetUp() override {
    if (!loaded_) GTEST_SKIP() << "bitsandbytes vectors not available (" << error_ << ")";
  }
  const testing::Tensor& get(const std::string& name) {
    EXPECT_TRUE(file_->has(name)) << name;
    return file_->at(name);
  }
  static testing::SafeTensors* file_;
  static bool loaded_;
  static std::string error_;
};
testing::SafeTensors* BnbVectors::file_ = nullptr;
bool BnbVectors::loaded_ = false;
std::string BnbVectors::error_;

template <typename T>
int64_t count_mismatches(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return -1;
  int64_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i) bad += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  return bad;
}

TEST_F(BnbVectors, FileParses) {
  const auto& a = get("in.A_f32");
  EXPECT_EQ(a.dtype, "F32");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{256, 320}));
  EXPECT_EQ(int64_t(a.bytes.size()), a.numel() * 4);
  EXPECT_EQ(get("i8.X.t6.0.outlier_cols").dtype, "I64");
}

TEST_F(BnbVectors, Quantize4bitNoDoubleQuant) {
  for (const char* key : {"q4.A_f32.nf4.bs64", "q4.A_f32.fp4.bs64", "q4.odd_f32.nf4.bs64"}) {
    SCOPED_TRACE(key);
    const std::string k = key;
    const std::string input = k.substr(3, k.find(".", 3) - 3);
    const QuantType type = k.find("nf4") != std::string::npos ? QuantType::NF4 : QuantType::FP4;
    const auto A = get("in." + input).as<float>();
    const int64_t n = int64_t(A.size()), bs = 64;
    std::vector<uint8_t> packed(static_cast<size_t>((n + 1) / 2));
    std::vector<float> absmax(static_cast<size_t>((n + bs - 1) / bs));
    quantize_4bit<float>(A.data(), n, bs, type, packed.data(), absmax.data());
    EXPECT_EQ(count_mismatches(packed, get(k + ".packed").as<uint8_t>()), 0);
    EXPECT_EQ(count_mismatches(absmax, get(k + ".absmax").as<float>()), 0);

    const auto want = get(k + ".deq").as<float>();
    std::vector<float> deq(static_cast<size_t>(n));
    dequantize_4bit<float>(packed.data(), absmax.data(), n, bs, type, deq.data());
    EXPECT_EQ(count_mismatches(deq, want), 0);
    // 16-bit outputs are the float32 result rounded once.
    std::vector<bfloat16> deq_bf16(static_cast<size_t>(n));
    dequantize_4bit<bfloat16>(packed.data(), absmax.data(), n, bs, type, deq_bf16.data());
    EXPECT_EQ(count_mismatches(deq_bf16, testing::convert<bfloat16>(want)), 0);
    std::vector<half> deq_f16(static_cast<size_t>(n));
    dequantize_4bit<half>(packed.data(), absmax.data(), n, bs, type, deq_f16.data());
    EXPECT_EQ(count_mismatches(deq_f16, testing::convert<half>(want)), 0);
  }
}

TEST_F(BnbVectors, DynamicMapIsBitsandbytesCode) {
  const auto code = get("q8.code").as<float>();
  const auto& map = dynamic_map_signed();
  EXPECT_EQ(count_mismatches(std::vector<float>(map.begin(), map.end()), code), 0);
  EXPECT_EQ(count_mismatches(code, get("q4dq.A_f32.nf4.bs64.nested_code").as<float>()), 0);
}

TEST_F(BnbVectors, Quantize8bitBlockwise) {
  const auto A = get("in.A_f32").as<float>();
  const int64_t n = int64_t(A.size()), bs = 256;
  std::vector<uint8_t> q(static_cast<size_t>(n));
  std::vector<float> absmax(static_cast<size_t>((n + bs - 1) / bs));
  quantize_blockwise<float>(A.data(), dynamic_map_signed().data(), n, bs, q.data(), absmax.data());
  EXPECT_EQ(count_mismatches(q, get("q8.A_f32.bs256.q").as<uint8_t>()), 0);
  EXPECT_EQ(count_mismatches(absmax, get("q8.A_f32.bs256.absmax").as<float>()), 0);
}

// Double quantization composed from the core pieces: 4-bit quantize, offset = mean(absmax),
// 8-bit blockwise (blocksize 256) of absmax - offset; dequantize composes back.
TEST_F(BnbVectors, DoubleQuant) {
  const std::string k = "q4dq.A_f32.nf4.bs64";
  const auto A = get("in.A_f32").as<float>();
  const int64_t n = int64_t(A.size()), bs = 64, blocks = n / bs;
  std::vector<uint8_t> packed(static_cast<size_t>(n / 2));
  std::vector<float> absmax(static_cast<size_t>(blocks));
  quantize_4bit<float>(A.data(), n, bs, QuantType::NF4, packed.data(), absmax.data());
  EXPECT_EQ(count_mismatches(packed, get(k + ".packed").as<uint8_t>()), 0);

  const float offset = double_quant_offset(absmax.data(), blocks);
  EXPECT_EQ(offset, get(k + ".offset").as<float>()[0]);
  std::vector<float> centered(absmax);
  for (auto& v : centered) v -= offset;
  const float* code = dynamic_map_signed().data();
  std::vector<uint8_t> qabsmax(static_cast<size_t>(blocks));
  std::vector<float> nested_absmax(static_cast<size_t>((blocks + 255) / 256));
  quantize_blockwise<float>(centered.data(), code, blocks, 256, qabsmax.data(), nested_absmax.data());
  EXPECT_EQ(count_mismatches(qabsmax, get(k + ".qabsmax").as<uint8_t>()), 0);
  EXPECT_EQ(count_mismatches(nested_absmax, get(k + ".nested_absmax").as<float>()), 0);

  std::vector<float> decoded(static_cast<size_t>(blocks)), deq(static_cast<size_t>(n));
  dequantize_blockwise<float>(qabsmax.data(), nested_absmax.data(), code, blocks, 256, decoded.data());
  for (auto& v : decoded) v += offset;
  dequantize_4bit<float>(packed.data(), decoded.data(), n, bs, QuantType::NF4, deq.data());
  EXPECT_EQ(count_mismatches(deq, get(k + ".deq").as<float>()), 0);
}

TEST_F(BnbVectors, Int8VectorwiseQuant) {
  const auto& X = get("in.X_f16");
  ASSERT_EQ(X.dtype, "F16");
  const auto x = X.as<half>();
  const int64_t rows = X.shape[0], cols = X.shape[1];
  for (const char* t : {"0.0", "6.0"}) {
    SCOPED_TRACE(t);
    const std::string k = std::string("i8.X.t") + t;
    const float threshold = std::stof(t);
    std::vector<uint8_t> mask(static_cast<size_t>(cols));
    std::vector<int8_t> q(static_cast<size_t>(rows * cols));
    std::vector<float> stats(static_cast<size_t>(rows));
    find_outlier_columns<half>(x.data(), rows, cols, threshold, mask.data());
    int8_vectorwise_quant<half>(x.data(), rows, cols, threshold, mask.data(), q.data(), stats.data());
    EXPECT_EQ(count_mismatches(q, get(k + ".q").as<int8_t>()), 0);
    EXPECT_EQ(count_mismatches(stats, get(k + ".row_stats").as<float>()), 0);
    std::vector<int64_t> cols_found;
    for (int64_t c = 0; c < cols; ++c)
      if (mask[size_t(c)]) cols_found.push_back(c);
    if (threshold > 0)
      EXPECT_EQ(cols_found, get(k + ".outlier_cols").as<int64_t>());
    else
      EXPECT_TRUE(cols_found.empty());
  }
}

}  // namespace
}  // namespace kbit::core
