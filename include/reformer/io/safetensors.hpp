#pragma once
// Reading and writing safetensors files (the format Hugging Face uses for checkpoints).
//
// Layout of a file:
//   [8 bytes]  N, the header size, unsigned 64-bit little-endian
//   [N bytes]  a JSON object: { "__metadata__": {string: string, ...},       (optional)
//                               "<name>": {"dtype": "F32", "shape": [2, 3],
//                                          "data_offsets": [begin, end]}, ... }
//              padded with spaces so that the data starts at a multiple of 8 bytes
//   [rest]     the data section: every tensor's elements, row-major, little-endian, at
//              [begin, end) relative to the start of the data section
//
// The reader trusts nothing: every size, offset, dtype and shape is checked before any tensor
// byte is touched, so a truncated, corrupt or hostile file raises reformer::IoError (with a
// message naming the file and the tensor or field at fault) and never reads out of bounds.
// Byte order is handled explicitly, so the code is correct on big-endian hosts as well.
//
// Needs nlohmann/json (Debian nlohmann-json3-dev); this header is therefore not part of the
// umbrella reformer.hpp.
#include "reformer/core/error.hpp"
#include "reformer/io/json_reader.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <unistd.h>
#define REFORMER_IO_HAVE_POSIX 1
#endif

namespace reformer::io {

/// Element types of the safetensors format.
enum class DType { BOOL, U8, I8, U16, I16, F16, BF16, U32, I32, F32, U64, I64, F64 };

/// The format's spelling of a dtype ("F32", ...).
inline const char* dtype_name(DType d) {
  static constexpr const char* kNames[] = {
      "BOOL", "U8",  "I8",  "U16", "I16", "F16", "BF16",
      "U32",  "I32", "F32", "U64", "I64", "F64"};  // enum order
  const auto k = static_cast<std::size_t>(d);
  return k < std::size(kNames) ? kNames[k] : "?";
}

/// The dtype spelled `s`, or nullopt when the format has no such dtype.
inline std::optional<DType> parse_dtype(const std::string& s) {
  for (DType d :
       {DType::BOOL, DType::U8, DType::I8, DType::U16, DType::I16, DType::F16, DType::BF16,
        DType::U32, DType::I32, DType::F32, DType::U64, DType::I64, DType::F64}) {
    if (s == dtype_name(d)) return d;
  }
  return std::nullopt;
}

/// Bytes per element.
inline std::size_t dtype_size(DType d) {
  switch (d) {
    case DType::BOOL:
    case DType::U8:
    case DType::I8:
      return 1;
    case DType::U16:
    case DType::I16:
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::U32:
    case DType::I32:
    case DType::F32:
      return 4;
    case DType::U64:
    case DType::I64:
    case DType::F64:
      return 8;
  }
  return 0;
}

inline bool dtype_is_floating(DType d) {
  return d == DType::F16 || d == DType::BF16 || d == DType::F32 || d == DType::F64;
}

/// The natural dtype of a C++ element type (float → F32, std::int64_t → I64, ...).
template <class T>
constexpr DType dtype_of() {
  static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>,
                "dtype_of: T must be a floating-point or integer type");
  if constexpr (std::is_floating_point_v<T>) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "dtype_of: only float and double");
    return sizeof(T) == 4 ? DType::F32 : DType::F64;
  } else if constexpr (std::is_signed_v<T>) {
    return sizeof(T) == 1   ? DType::I8
           : sizeof(T) == 2 ? DType::I16
           : sizeof(T) == 4 ? DType::I32
                            : DType::I64;
  } else {
    return sizeof(T) == 1   ? DType::U8
           : sizeof(T) == 2 ? DType::U16
           : sizeof(T) == 4 ? DType::U32
                            : DType::U64;
  }
}

/// One tensor of a file: its name, dtype, shape and byte range inside the data section.
struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;  // row-major (PyTorch) extents; empty for a scalar
  std::uint64_t begin = 0;          // [begin, end) relative to the start of the data section
  std::uint64_t end = 0;

  /// Number of elements (1 for a scalar).
  std::int64_t numel() const {
    std::int64_t n = 1;
    for (std::int64_t e : shape) n *= e;
    return n;
  }
  std::uint64_t byte_size() const { return end - begin; }
};

namespace detail {

/// Headers larger than this are rejected before allocating anything (Hugging Face uses 100 MB).
inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

// Explicit little-endian loads and stores (compilers turn these into plain moves on LE hosts).
template <class U>
U load_le(const unsigned char* p) {
  U v = 0;
  for (std::size_t k = 0; k < sizeof(U); ++k)
    v = static_cast<U>(v | (static_cast<U>(p[k]) << (8 * k)));
  return v;
}
template <class U>
void store_le(unsigned char* p, U v) {
  for (std::size_t k = 0; k < sizeof(U); ++k) p[k] = static_cast<unsigned char>(v >> (8 * k));
}
template <class To, class From>
To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast: sizes differ");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

inline double half_to_double(std::uint16_t h) {
  const int sign = (h >> 15) & 1;
  const int exponent = (h >> 10) & 0x1f;
  const int mantissa = h & 0x3ff;
  double v;
  if (exponent == 0) {
    v = std::ldexp(static_cast<double>(mantissa), -24);  // zero or subnormal
  } else if (exponent == 31) {
    v = mantissa == 0 ? std::numeric_limits<double>::infinity()
                      : std::numeric_limits<double>::quiet_NaN();
  } else {
    v = std::ldexp(static_cast<double>(mantissa | 0x400), exponent - 25);
  }
  return sign ? -v : v;
}

inline double bfloat16_to_double(std::uint16_t h) {
  return static_cast<double>(bit_cast<float>(static_cast<std::uint32_t>(h) << 16));
}

/// static_cast<T>(v) for a floating T, with values beyond T's range mapped to +-infinity
/// explicitly (the plain cast is undefined behaviour there, although IEEE hardware gives inf).
template <class T>
T to_floating(double v) {
  if constexpr (sizeof(T) < sizeof(double)) {
    if (std::isfinite(v) && std::abs(v) > static_cast<double>(std::numeric_limits<T>::max())) {
      return v > 0 ? std::numeric_limits<T>::infinity() : -std::numeric_limits<T>::infinity();
    }
  }
  return static_cast<T>(v);
}

/// Element i of a floating-point tensor as a double.
inline double load_floating(const unsigned char* p, DType d, std::size_t i) {
  switch (d) {
    case DType::F16:
      return half_to_double(load_le<std::uint16_t>(p + 2 * i));
    case DType::BF16:
      return bfloat16_to_double(load_le<std::uint16_t>(p + 2 * i));
    case DType::F32:
      return static_cast<double>(bit_cast<float>(load_le<std::uint32_t>(p + 4 * i)));
    case DType::F64:
      return bit_cast<double>(load_le<std::uint64_t>(p + 8 * i));
    default:
      return 0.0;
  }
}

/// Element i of a signed (or bool / unsigned below 64 bits) integer tensor as an int64.
inline std::int64_t load_signed(const unsigned char* p, DType d, std::size_t i) {
  switch (d) {
    case DType::BOOL:
      return p[i] != 0 ? 1 : 0;
    case DType::U8:
      return p[i];
    case DType::I8:
      return static_cast<std::int8_t>(p[i]);
    case DType::U16:
      return load_le<std::uint16_t>(p + 2 * i);
    case DType::I16:
      return static_cast<std::int16_t>(load_le<std::uint16_t>(p + 2 * i));
    case DType::U32:
      return load_le<std::uint32_t>(p + 4 * i);
    case DType::I32:
      return static_cast<std::int32_t>(load_le<std::uint32_t>(p + 4 * i));
    case DType::I64:
      return static_cast<std::int64_t>(load_le<std::uint64_t>(p + 8 * i));
    default:
      return 0;
  }
}

/// Whether the integer v fits in T.
template <class T, class V>
bool fits(V v) {
  static_assert(std::is_integral_v<T> && std::is_integral_v<V>, "fits: integers only");
  if constexpr (std::is_signed_v<V>) {
    if (v < 0) {
      if constexpr (std::is_signed_v<T>) {
        return static_cast<std::int64_t>(v) >=
               static_cast<std::int64_t>(std::numeric_limits<T>::min());
      } else {
        return false;
      }
    }
  }
  return static_cast<std::uint64_t>(v) <= static_cast<std::uint64_t>(std::numeric_limits<T>::max());
}

/// Converts n elements of dtype d at p into dst. Integer targets reject floating-point sources
/// and values out of range; floating targets accept every dtype.
template <class T>
void convert_elements(const unsigned char* p, DType d, std::size_t n, T* dst,
                      const std::string& source, const std::string& name) {
  static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>,
                "SafetensorsFile::read: T must be a floating-point or integer type");
  if constexpr (std::is_floating_point_v<T>) {
    if (dtype_is_floating(d)) {
      for (std::size_t i = 0; i < n; ++i) dst[i] = to_floating<T>(load_floating(p, d, i));
    } else if (d == DType::U64) {
      for (std::size_t i = 0; i < n; ++i)
        dst[i] = static_cast<T>(load_le<std::uint64_t>(p + 8 * i));
    } else {
      for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<T>(load_signed(p, d, i));
    }
  } else {
    if (dtype_is_floating(d)) {
      raise<IoError>("SafetensorsFile::read", "'", source, "': tensor '", name, "' has dtype ",
                     dtype_name(d), ", which cannot be read as an integer type");
    }
    for (std::size_t i = 0; i < n; ++i) {
      bool ok;
      if (d == DType::U64) {
        const std::uint64_t v = load_le<std::uint64_t>(p + 8 * i);
        ok = fits<T>(v);
        if (ok) dst[i] = static_cast<T>(v);
      } else {
        const std::int64_t v = load_signed(p, d, i);
        ok = fits<T>(v);
        if (ok) dst[i] = static_cast<T>(v);
      }
      if (!ok) {
        raise<IoError>("SafetensorsFile::read", "'", source, "': tensor '", name, "' element ", i,
                       " (dtype ", dtype_name(d), ") does not fit the requested ", sizeof(T) * 8,
                       "-bit integer type");
      }
    }
  }
}

/// Encodes n elements of T as dtype d (little-endian). Integer dtypes reject floating-point
/// inputs and values out of range; floating dtypes F32/F64 accept every input.
template <class T>
void encode_elements(const T* src, std::size_t n, DType d, unsigned char* out,
                     const std::string& name) {
  static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>,
                "SafetensorsWriter::add: T must be a floating-point or integer type");
  const char* where = "SafetensorsWriter::add";
  if (d == DType::F32) {
    for (std::size_t i = 0; i < n; ++i)
      store_le(out + 4 * i,
               bit_cast<std::uint32_t>(to_floating<float>(static_cast<double>(src[i]))));
    return;
  }
  if (d == DType::F64) {
    for (std::size_t i = 0; i < n; ++i)
      store_le(out + 8 * i, bit_cast<std::uint64_t>(static_cast<double>(src[i])));
    return;
  }
  if (dtype_is_floating(d)) {
    raise(where, "tensor '", name, "': writing dtype ", dtype_name(d),
          " is not supported (use F32 or F64)");
  }
  if constexpr (std::is_floating_point_v<T>) {
    raise(where, "tensor '", name, "': floating-point data cannot be stored as dtype ",
          dtype_name(d));
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      const T v = src[i];
      bool ok = true;
      switch (d) {
        case DType::BOOL:
          ok = v == 0 || v == 1;
          if (ok) out[i] = static_cast<unsigned char>(v);
          break;
        case DType::U8:
          ok = fits<std::uint8_t>(v);
          if (ok) out[i] = static_cast<unsigned char>(v);
          break;
        case DType::I8:
          ok = fits<std::int8_t>(v);
          if (ok) out[i] = static_cast<unsigned char>(static_cast<std::int8_t>(v));
          break;
        case DType::U16:
          ok = fits<std::uint16_t>(v);
          if (ok) store_le(out + 2 * i, static_cast<std::uint16_t>(v));
          break;
        case DType::I16:
          ok = fits<std::int16_t>(v);
          if (ok) store_le(out + 2 * i, static_cast<std::uint16_t>(static_cast<std::int16_t>(v)));
          break;
        case DType::U32:
          ok = fits<std::uint32_t>(v);
          if (ok) store_le(out + 4 * i, static_cast<std::uint32_t>(v));
          break;
        case DType::I32:
          ok = fits<std::int32_t>(v);
          if (ok) store_le(out + 4 * i, static_cast<std::uint32_t>(static_cast<std::int32_t>(v)));
          break;
        case DType::U64:
          ok = fits<std::uint64_t>(v);
          if (ok) store_le(out + 8 * i, static_cast<std::uint64_t>(v));
          break;
        case DType::I64:
          ok = fits<std::int64_t>(v);
          if (ok) store_le(out + 8 * i, static_cast<std::uint64_t>(static_cast<std::int64_t>(v)));
          break;
        default:
          break;
      }
      if (!ok) {
        raise(where, "tensor '", name, "': element ", i, " = ", +v, " does not fit dtype ",
              dtype_name(d));
      }
    }
  }
}

}  // namespace detail

/// A parsed safetensors file held in memory. Construct with load() or parse().
class SafetensorsFile {
 public:
  /// Reads and validates the file at `path`; IoError if it cannot be read or is invalid.
  static SafetensorsFile load(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      raise<IoError>("SafetensorsFile::load", "cannot open '", path, "': ", std::strerror(errno));
    }
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    in.seekg(0, std::ios::beg);
    if (size < 0 || !in)
      raise<IoError>("SafetensorsFile::load", "cannot determine the size of '", path, "'");
    std::vector<char> bytes(static_cast<std::size_t>(size));
    if (size > 0 && !in.read(bytes.data(), size)) {
      raise<IoError>("SafetensorsFile::load", "cannot read ", size, " bytes from '", path, "'");
    }
    return parse(std::move(bytes), path);
  }

  /// Validates `bytes` as a safetensors file; `source` names it in error messages.
  static SafetensorsFile parse(std::vector<char> bytes, const std::string& source) {
    SafetensorsFile f;
    f.source_ = source;
    f.bytes_ = std::move(bytes);
    f.validate();
    return f;
  }

  /// The name the file was loaded from (or the `source` given to parse()).
  const std::string& source() const { return source_; }

  /// The `__metadata__` entries (empty when the header has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// The metadata value of `key`; IoError naming the file and key when absent.
  const std::string& metadata(const std::string& key) const {
    auto it = metadata_.find(key);
    if (it == metadata_.end()) {
      raise<IoError>("SafetensorsFile::metadata", "'", source_, "' has no metadata key '", key,
                     "'");
    }
    return it->second;
  }

  /// Tensor names in ascending order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (const auto& kv : tensors_) out.push_back(kv.first);
    return out;
  }
  std::size_t size() const { return tensors_.size(); }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }
  /// Bytes of the data section (what all tensors together occupy).
  std::uint64_t tensor_bytes() const { return bytes_.size() - data_offset_; }

  /// Dtype, shape and byte range of `name`; IoError naming the file and tensor when absent.
  const TensorInfo& info(const std::string& name) const {
    auto it = tensors_.find(name);
    if (it == tensors_.end()) {
      raise<IoError>("SafetensorsFile::info", "'", source_, "' has no tensor named '", name, "'");
    }
    return it->second;
  }

  /// The tensor's raw little-endian bytes (info(name).byte_size() of them).
  const unsigned char* raw(const std::string& name) const {
    return data_begin() + info(name).begin;
  }

  /// The elements of `name` converted to T, row-major. Floating targets accept every dtype;
  /// integer targets reject floating dtypes and values that do not fit (IoError).
  template <class T>
  std::vector<T> read(const std::string& name) const {
    const TensorInfo& ti = info(name);
    std::vector<T> out(static_cast<std::size_t>(ti.numel()));
    detail::convert_elements(data_begin() + ti.begin, ti.dtype, out.size(), out.data(), source_,
                             name);
    return out;
  }

  /// Like read(), into a caller buffer of exactly `count` = numel elements (IoError otherwise).
  template <class T>
  void read_into(const std::string& name, T* dst, std::size_t count) const {
    const TensorInfo& ti = info(name);
    if (count != static_cast<std::size_t>(ti.numel())) {
      raise<IoError>("SafetensorsFile::read_into", "'", source_, "': tensor '", name, "' has ",
                     ti.numel(), " elements, the destination holds ", count);
    }
    detail::convert_elements(data_begin() + ti.begin, ti.dtype, count, dst, source_, name);
  }

 private:
  SafetensorsFile() = default;

  const unsigned char* data_begin() const {
    return reinterpret_cast<const unsigned char*>(bytes_.data()) + data_offset_;
  }

  template <class... Args>
  [[noreturn]] void fail(const Args&... args) const {
    raise<IoError>("SafetensorsFile::parse", "'", source_, "': ", args...);
  }

  // A non-negative integer JSON value, or nullopt.
  static std::optional<std::uint64_t> as_uint(const nlohmann::json& v) {
    if (v.is_number_unsigned()) return v.get<std::uint64_t>();
    if (v.is_number_integer() && v.get<std::int64_t>() >= 0)
      return static_cast<std::uint64_t>(v.get<std::int64_t>());
    return std::nullopt;
  }

  void validate() {
    const std::uint64_t file_size = bytes_.size();
    if (file_size < 8)
      fail("the file has ", file_size, " bytes, fewer than the 8-byte header size");
    const std::uint64_t header_size =
        detail::load_le<std::uint64_t>(reinterpret_cast<const unsigned char*>(bytes_.data()));
    if (header_size > detail::kMaxHeaderBytes) {
      fail("header size ", header_size, " exceeds the limit of ", detail::kMaxHeaderBytes,
           " bytes");
    }
    if (header_size > file_size - 8) {
      fail("header size ", header_size, " exceeds the ", file_size - 8,
           " bytes that follow the size field (truncated file?)");
    }
    if (header_size < 2 || bytes_[8] != '{') fail("the header does not start with '{'");
    data_offset_ = static_cast<std::size_t>(8 + header_size);
    const std::uint64_t data_size = file_size - 8 - header_size;

    // Parse with bounded nesting, rejecting duplicate keys in any object (nlohmann would
    // silently keep the last).
    const char* h = bytes_.data() + 8;
    JsonReadOptions options;
    options.reject_duplicate_keys = true;
    JsonReadResult parsed = read_json(h, h + header_size, options);
    if (!parsed.ok()) fail("the header: ", parsed.error);
    const nlohmann::json header = std::move(parsed.value);
    if (!header.is_object()) fail("the header is not a JSON object");

    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const nlohmann::json& entry = it.value();
      if (name == "__metadata__") {
        if (!entry.is_object()) fail("__metadata__ is not a JSON object");
        for (auto m = entry.begin(); m != entry.end(); ++m) {
          if (!m.value().is_string())
            fail("__metadata__ value of '", detail::truncated(m.key()), "' is not a string");
          metadata_.emplace(m.key(), m.value().get<std::string>());
        }
        continue;
      }
      tensors_.emplace(name, parse_entry(name, entry, data_size));
    }

    // The tensors must tile the data section exactly: no overlap, no hole, nothing left over.
    std::vector<const TensorInfo*> order;
    order.reserve(tensors_.size());
    for (const auto& kv : tensors_) order.push_back(&kv.second);
    std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    std::uint64_t covered = 0;
    const TensorInfo* previous = nullptr;
    for (const TensorInfo* t : order) {
      if (t->begin < covered) {
        fail("tensor '", detail::truncated(t->name), "' data_offsets [", t->begin, ", ", t->end,
             "] overlap tensor '", detail::truncated(previous->name), "' [", previous->begin, ", ",
             previous->end, "]");
      }
      if (t->begin > covered) {
        fail("tensor '", detail::truncated(t->name), "' starts at data offset ", t->begin,
             " leaving a gap after ", covered);
      }
      covered = t->end;
      previous = t;
    }
    if (covered != data_size) {
      fail("the tensors cover ", covered, " bytes of a data section of ", data_size,
           " bytes (trailing bytes)");
    }
  }

  TensorInfo parse_entry(const std::string& full_name, const nlohmann::json& entry,
                         std::uint64_t data_size) const {
    TensorInfo ti;
    ti.name = full_name;
    const std::string name = detail::truncated(full_name, 4 * kJsonExcerptChars);  // for messages
    if (!entry.is_object()) fail("tensor '", name, "': entry is not a JSON object");

    auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string())
      fail("tensor '", name, "': missing or non-string 'dtype'");
    const std::string dtype_str = dtype_it->get<std::string>();
    const auto dtype = parse_dtype(dtype_str);
    if (!dtype) fail("tensor '", name, "': unknown dtype '", detail::truncated(dtype_str), "'");
    ti.dtype = *dtype;

    auto shape_it = entry.find("shape");
    if (shape_it == entry.end() || !shape_it->is_array())
      fail("tensor '", name, "': missing or non-array 'shape'");
    // Overflow-safe element count: every partial product stays below the data size bound.
    const std::uint64_t limit = std::numeric_limits<std::int64_t>::max() / 8;
    std::uint64_t numel = 1;
    bool empty = false;
    for (const auto& e : *shape_it) {
      const auto extent = as_uint(e);
      if (!extent)
        fail("tensor '", name, "': shape entry ", json_excerpt(e),
             " is not a non-negative integer");
      if (*extent > limit) fail("tensor '", name, "': shape extent ", *extent, " is too large");
      ti.shape.push_back(static_cast<std::int64_t>(*extent));
      if (*extent == 0) empty = true;
      if (!empty) {
        if (numel > limit / *extent)
          fail("tensor '", name, "': the shape's element count overflows");
        numel *= *extent;
      }
    }
    if (empty) numel = 0;

    auto off_it = entry.find("data_offsets");
    if (off_it == entry.end() || !off_it->is_array() || off_it->size() != 2)
      fail("tensor '", name, "': 'data_offsets' must be an array of two integers");
    const auto begin = as_uint((*off_it)[0]);
    const auto end = as_uint((*off_it)[1]);
    if (!begin || !end) fail("tensor '", name, "': 'data_offsets' must be non-negative integers");
    if (*begin > *end)
      fail("tensor '", name, "': data_offsets [", *begin, ", ", *end, "] are reversed");
    if (*end > data_size) {
      fail("tensor '", name, "': data_offsets [", *begin, ", ", *end,
           "] exceed the data section of ", data_size, " bytes (truncated file?)");
    }
    const std::uint64_t expected = numel * dtype_size(ti.dtype);
    if (*end - *begin != expected) {
      fail("tensor '", name, "': data_offsets [", *begin, ", ", *end, "] span ", *end - *begin,
           " bytes, but dtype ", dtype_str, " and shape ", json_excerpt(*shape_it), " need ",
           expected);
    }
    ti.begin = *begin;
    ti.end = *end;
    return ti;
  }

  std::string source_;
  std::vector<char> bytes_;
  std::size_t data_offset_ = 0;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorInfo> tensors_;
};

/// Builds a safetensors file. The header lists tensors and metadata in ascending name order and
/// the data section holds the tensors in the same order, so the output depends only on the
/// content, not on the order of add() calls.
class SafetensorsWriter {
 public:
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  /// Adds `count` elements of `data` (row-major, numel(shape) of them) stored as `dtype`.
  /// InvalidArgument on a duplicate or reserved name, a negative extent, a count mismatch, a
  /// floating input for an integer dtype, or an integer that does not fit the dtype.
  template <class T>
  void add(const std::string& name, DType dtype, std::vector<std::int64_t> shape, const T* data,
           std::size_t count) {
    const std::size_t n = check_new(name, shape, count);
    std::vector<unsigned char> bytes(n * dtype_size(dtype));
    detail::encode_elements(data, n, dtype, bytes.data(), name);
    entries_.emplace(name, Entry{dtype, std::move(shape), std::move(bytes)});
  }
  template <class T>
  void add(const std::string& name, DType dtype, std::vector<std::int64_t> shape,
           const std::vector<T>& data) {
    add(name, dtype, std::move(shape), data.data(), data.size());
  }

  /// Adds already-encoded little-endian bytes (any dtype, e.g. F16 copied from another file).
  void add_raw(const std::string& name, DType dtype, std::vector<std::int64_t> shape,
               std::vector<unsigned char> bytes) {
    const std::size_t n = check_new(name, shape, bytes.size() / dtype_size(dtype));
    if (bytes.size() != n * dtype_size(dtype)) {
      raise("SafetensorsWriter::add_raw", "tensor '", name, "': ", bytes.size(),
            " bytes given, dtype ", dtype_name(dtype), " and the shape need ",
            n * dtype_size(dtype));
    }
    entries_.emplace(name, Entry{dtype, std::move(shape), std::move(bytes)});
  }

  std::size_t size() const { return entries_.size(); }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }

  /// The complete file.
  std::vector<char> serialize() const {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) {
      nlohmann::json meta = nlohmann::json::object();
      for (const auto& kv : metadata_) meta[kv.first] = kv.second;
      header["__metadata__"] = std::move(meta);
    }
    std::uint64_t offset = 0;
    for (const auto& kv : entries_) {
      const std::uint64_t n = kv.second.bytes.size();
      header[kv.first] = {{"dtype", dtype_name(kv.second.dtype)},
                          {"shape", kv.second.shape},
                          {"data_offsets", {offset, offset + n}}};
      offset += n;
    }
    std::string text;
    try {
      text = header.dump();
    } catch (const nlohmann::json::exception& e) {
      raise("SafetensorsWriter::serialize",
            "a tensor name or metadata string is not valid UTF-8: ", e.what());
    }
    while ((8 + text.size()) % 8 != 0) text.push_back(' ');  // data starts 8-byte aligned

    std::vector<char> out(8 + text.size() + offset);
    unsigned char size_field[8];
    detail::store_le<std::uint64_t>(size_field, text.size());
    std::memcpy(out.data(), size_field, 8);
    std::memcpy(out.data() + 8, text.data(), text.size());
    char* p = out.data() + 8 + text.size();
    for (const auto& kv : entries_) {
      if (!kv.second.bytes.empty()) std::memcpy(p, kv.second.bytes.data(), kv.second.bytes.size());
      p += kv.second.bytes.size();
    }
    return out;
  }

  /// Writes the file atomically: a temporary file in the same directory is written, flushed to
  /// disk and renamed over `path`, so readers see either the old or the new file, never a part.
  void write(const std::string& path) const { write_file_atomically(path, serialize()); }

  /// The atomic write used by write(); usable for any byte content.
  static void write_file_atomically(const std::string& path, const std::vector<char>& bytes) {
    const char* where = "SafetensorsWriter::write";
    const std::string tmp = temp_name(path);
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) raise<IoError>(where, "cannot create '", tmp, "': ", std::strerror(errno));
    bool ok = bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    ok = std::fflush(f) == 0 && ok;
#if defined(REFORMER_IO_HAVE_POSIX)
    ok = ::fsync(::fileno(f)) == 0 && ok;
#endif
    const int saved_errno = errno;
    ok = std::fclose(f) == 0 && ok;
    if (!ok) {
      std::remove(tmp.c_str());
      raise<IoError>(where, "cannot write ", bytes.size(), " bytes to '", tmp,
                     "': ", std::strerror(saved_errno));
    }
#if defined(_WIN32)
    std::remove(path.c_str());  // rename does not replace an existing file on Windows
#endif
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      const int e = errno;
      std::remove(tmp.c_str());
      raise<IoError>(where, "cannot rename '", tmp, "' to '", path, "': ", std::strerror(e));
    }
#if defined(REFORMER_IO_HAVE_POSIX)
    // Make the rename itself durable (best effort).
    const auto slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
    const int fd = ::open(dir.c_str(), O_RDONLY);
    if (fd >= 0) {
      (void)::fsync(fd);
      ::close(fd);
    }
#endif
  }

 private:
  struct Entry {
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<unsigned char> bytes;
  };

  std::size_t check_new(const std::string& name, const std::vector<std::int64_t>& shape,
                        std::size_t count) const {
    const char* where = "SafetensorsWriter::add";
    REFORMER_REQUIRE(!name.empty(), InvalidArgument, where, "tensor name must not be empty");
    REFORMER_REQUIRE(name != "__metadata__", InvalidArgument, where,
                     "'__metadata__' is reserved and cannot name a tensor");
    REFORMER_REQUIRE(entries_.count(name) == 0, InvalidArgument, where, "tensor '", name,
                     "' was already added");
    std::size_t n = 1;
    for (std::int64_t e : shape) {
      REFORMER_REQUIRE(e >= 0, InvalidArgument, where, "tensor '", name, "' has extent ", e,
                       ", extents must be non-negative");
      n *= static_cast<std::size_t>(e);
    }
    REFORMER_REQUIRE(n == count, InvalidArgument, where, "tensor '", name, "': the shape has ", n,
                     " elements, ", count, " were given");
    return n;
  }

  static std::string temp_name(const std::string& path) {
    const auto ticks = static_cast<unsigned long long>(
        std::chrono::steady_clock::now().time_since_epoch().count());
#if defined(REFORMER_IO_HAVE_POSIX)
    const auto pid = static_cast<unsigned long long>(::getpid());
#else
    const unsigned long long pid = 0;
#endif
    return path + ".tmp." + std::to_string(pid) + "." + std::to_string(ticks);
  }

  std::map<std::string, std::string> metadata_;
  std::map<std::string, Entry> entries_;
};

}  // namespace reformer::io
