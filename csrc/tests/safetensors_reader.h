// A small reader of .safetensors files for the tests (no JSON library): 8-byte little-endian
// header length, a JSON header {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
// "__metadata__": {...}}, then the raw little-endian tensor bytes.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace kbit::testing {

struct Tensor {
  std::string dtype;  // "F32", "F16", "U8", "I8", "I64", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  int64_t numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
  template <typename T>
  std::vector<T> as() const {
    std::vector<T> out(bytes.size() / sizeof(T));
    std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
    return out;
  }
};

class SafeTensors {
 public:
  // Returns false (and sets error()) when the file is missing or malformed.
  bool load(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return fail("cannot open " + path);
    uint8_t len_bytes[8];
    if (!f.read(reinterpret_cast<char*>(len_bytes), 8)) return fail("short file");
    uint64_t len = 0;
    for (int i = 7; i >= 0; --i) len = (len << 8) | len_bytes[i];
    if (len > (1u << 26)) return fail("header too large");
    header_.resize(len);
    if (!f.read(&header_[0], std::streamsize(len))) return fail("short header");
    std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    pos_ = 0;
    if (!parse_header(data)) return fail("bad header near offset " + std::to_string(pos_));
    return true;
  }
  const std::string& error() const { return error_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const Tensor& at(const std::string& name) const { return tensors_.at(name); }

 private:
  bool fail(const std::string& e) {
    error_ = e;
    return false;
  }
  void skip_ws() {
    while (pos_ < header_.size() && std::strchr(" \t\r\n", header_[pos_])) ++pos_;
  }
  bool expect(char c) {
    skip_ws();
    if (pos_ >= header_.size() || header_[pos_] != c) return false;
    ++pos_;
    return true;
  }
  bool peek(char c) {
    skip_ws();
    return pos_ < header_.size() && header_[pos_] == c;
  }
  bool parse_string(std::string* out) {
    if (!expect('"')) return false;
    out->clear();
    while (pos_ < header_.size() && header_[pos_] != '"') {
      if (header_[pos_] == '\\') ++pos_;  // names here have no escapes that matter
      if (pos_ < header_.size()) out->push_back(header_[pos_++]);
    }
    return expect('"');
  }
  bool parse_int(int64_t* out) {
    skip_ws();
    const char* begin = header_.c_str() + pos_;
    char* end = nullptr;
    *out = std::strtoll(begin, &end, 10);
    if (end == begin) return false;
    pos_ += size_t(end - begin);
    return true;
  }
  bool parse_int_list(std::vector<int64_t>* out) {
    out->clear();
    if (!expect('[')) return false;
    if (peek(']')) return expect(']');
    do {
      int64_t v;
      if (!parse_int(&v)) return false;
      out->push_back(v);
    } while (expect(','));
    return expect(']');
  }
  // Skips any JSON value whose content we do not need (the metadata object of strings).
  bool skip_value() {
    if (peek('"')) {
      std::string s;
      return parse_string(&s);
    }
    if (peek('{')) {
      expect('{');
      if (peek('}')) return expect('}');
      do {
        std::string k;
        if (!parse_string(&k) || !expect(':') || !skip_value()) return false;
      } while (expect(','));
      return expect('}');
    }
    if (peek('[')) {
      expect('[');
      if (peek(']')) return expect(']');
      do {
        if (!skip_value()) return false;
      } while (expect(','));
      return expect(']');
    }
    skip_ws();
    while (pos_ < header_.size() && !std::strchr(",}] \t\r\n", header_[pos_])) ++pos_;
    return true;
  }
  bool parse_tensor(const std::vector<char>& data, Tensor* t) {
    if (!expect('{')) return false;
    std::vector<int64_t> offsets;
    do {
      std::string key;
      if (!parse_string(&key) || !expect(':')) return false;
      bool ok = key == "dtype" ? parse_string(&t->dtype)
                : key == "shape" ? parse_int_list(&t->shape)
                : key == "data_offsets" ? parse_int_list(&offsets)
                                        : skip_value();
      if (!ok) return false;
    } while (expect(','));
    if (!expect('}') || offsets.size() != 2) return false;
    if (offsets[0] < 0 || offsets[1] < offsets[0] || size_t(offsets[1]) > data.size()) return false;
    t->bytes.assign(data.begin() + offsets[0], data.begin() + offsets[1]);
    return true;
  }
  bool parse_header(const std::vector<char>& data) {
    if (!expect('{')) return false;
    if (peek('}')) return expect('}');
    do {
      std::string name;
      if (!parse_string(&name) || !expect(':')) return false;
      if (name == "__metadata__") {
        if (!skip_value()) return false;
      } else if (!parse_tensor(data, &tensors_[name])) {
        return false;
      }
    } while (expect(','));
    return expect('}');
  }

  std::string header_, error_;
  size_t pos_ = 0;
  std::map<std::string, Tensor> tensors_;
};

// Directory of the bitsandbytes test vectors: $KBIT_TESTDATA, else the build-time default.
inline std::string testdata_dir() {
  if (const char* env = std::getenv("KBIT_TESTDATA")) return env;
#ifdef KBIT_TESTDATA_DIR
  return KBIT_TESTDATA_DIR;
#else
  return "";
#endif
}

}  // namespace kbit::testing
