// Binary encoding of catalogue keys and values (docs/FORMAT.md).
//
// Keys use big-endian integers so that LMDB's byte order is numeric order;
// values use little-endian fixed-width integers and length-prefixed strings.
// Decoding never reads past the input: a short or malformed value makes the
// Decoder fail (ok() false), which callers report as catalogue damage (EIO).
//
// Thread-safety: values; no shared state.
#ifndef VSSFS_COW_STORE_SRC_CODEC_H_
#define VSSFS_COW_STORE_SRC_CODEC_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace vssfs::cow_store {

inline void PutBe64(std::string* s, uint64_t v) {
  char b[8];
  for (int i = 7; i >= 0; --i) {
    b[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  s->append(b, 8);
}

inline void PutBe32(std::string* s, uint32_t v) {
  char b[4];
  for (int i = 3; i >= 0; --i) {
    b[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  s->append(b, 4);
}

inline uint64_t GetBe64(std::string_view s, size_t pos) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(s[pos + i]);
  return v;
}

inline uint32_t GetBe32(std::string_view s, size_t pos) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(s[pos + i]);
  return v;
}

class Encoder {
 public:
  void U8(uint8_t v) { s_.push_back(static_cast<char>(v)); }
  void U32(uint32_t v) { Fixed(v); }
  void U64(uint64_t v) { Fixed(v); }
  void I64(int64_t v) { Fixed(static_cast<uint64_t>(v)); }
  void Str(std::string_view v) {
    U32(static_cast<uint32_t>(v.size()));
    s_.append(v);
  }
  void Raw(std::string_view v) { s_.append(v); }
  const std::string& str() const { return s_; }
  std::string Take() { return std::move(s_); }

 private:
  template <typename T>
  void Fixed(T v) {
    char b[sizeof(T)];
    for (size_t i = 0; i < sizeof(T); ++i) {
      b[i] = static_cast<char>(v & 0xff);
      v = static_cast<T>(v >> 8);
    }
    s_.append(b, sizeof(T));
  }
  std::string s_;
};

class Decoder {
 public:
  explicit Decoder(std::string_view s) : s_(s) {}
  uint8_t U8() { return static_cast<uint8_t>(Fixed<uint8_t>()); }
  uint32_t U32() { return Fixed<uint32_t>(); }
  uint64_t U64() { return Fixed<uint64_t>(); }
  int64_t I64() { return static_cast<int64_t>(Fixed<uint64_t>()); }
  std::string Str() {
    uint32_t n = U32();
    if (!ok_ || s_.size() - pos_ < n) {
      ok_ = false;
      return {};
    }
    std::string v(s_.substr(pos_, n));
    pos_ += n;
    return v;
  }
  std::string Raw(size_t n) {
    if (!ok_ || s_.size() - pos_ < n) {
      ok_ = false;
      return {};
    }
    std::string v(s_.substr(pos_, n));
    pos_ += n;
    return v;
  }
  bool ok() const { return ok_; }
  bool done() const { return ok_ && pos_ == s_.size(); }

 private:
  template <typename T>
  T Fixed() {
    if (!ok_ || s_.size() - pos_ < sizeof(T)) {
      ok_ = false;
      return 0;
    }
    T v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      v = static_cast<T>(v | (static_cast<T>(static_cast<uint8_t>(s_[pos_ + i])) << (8 * i)));
    }
    pos_ += sizeof(T);
    return v;
  }
  std::string_view s_;
  size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace vssfs::cow_store

#endif  // VSSFS_COW_STORE_SRC_CODEC_H_
