// safetensors reader/writer: bit-exact round trips, the byte layout, dtype conversions, the
// reference fixtures, and hostile input (every truncation, corrupt headers, bad offsets), which
// must raise IoError and never crash (this suite also runs under ASan/UBSan).
#include "reformer/io/safetensors.hpp"
#include "reformer/core/rng.hpp"

#include "support/temp_dir.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

namespace reformer::io {
namespace {

namespace fs = std::filesystem;

// A raw file from a header text and data bytes (header size field = header.size() unless given).
std::vector<char> raw_file(const std::string& header, const std::vector<unsigned char>& data = {},
                           std::uint64_t header_size = std::numeric_limits<std::uint64_t>::max()) {
  if (header_size == std::numeric_limits<std::uint64_t>::max()) header_size = header.size();
  std::vector<char> out(8);
  for (int k = 0; k < 8; ++k)
    out[static_cast<std::size_t>(k)] = static_cast<char>(header_size >> (8 * k));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// Expects parse() to throw IoError whose message contains `needle`.
void expect_io_error(const std::vector<char>& bytes, const std::string& needle) {
  try {
    SafetensorsFile::parse(bytes, "test.safetensors");
    ADD_FAILURE() << "no IoError; expected one mentioning '" << needle << "'";
  } catch (const IoError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(needle), std::string::npos) << what;
    EXPECT_NE(what.find("test.safetensors"), std::string::npos) << what;
  }
}

// A header that parse() must reject over a given data section, and what the error must mention.
struct BadHeader {
  std::string header, needle;
};

void expect_io_errors(const std::vector<unsigned char>& data,
                      std::initializer_list<BadHeader> cases) {
  for (const BadHeader& c : cases) expect_io_error(raw_file(c.header, data), c.needle);
}

template <class T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

std::vector<char> small_file() {
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.add("a", DType::F32, {2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6});
  w.add("b", DType::I64, {2}, std::vector<std::int64_t>{-7, 1LL << 40});
  w.add("c", DType::F64, {}, std::vector<double>{0.25});
  return w.serialize();
}

TEST(Safetensors, RoundTripIsBitExact) {
  const std::vector<float> f32 = {0.0f,
                                  -0.0f,
                                  1.5f,
                                  std::numeric_limits<float>::denorm_min(),
                                  std::numeric_limits<float>::infinity(),
                                  -std::numeric_limits<float>::max(),
                                  3.14159274f};
  const std::vector<double> f64 = {-0.0, 1e-310, std::numeric_limits<double>::quiet_NaN(),
                                   -std::numeric_limits<double>::infinity(), 2.718281828459045};
  const std::vector<std::int64_t> i64 = {std::numeric_limits<std::int64_t>::min(), -1, 0,
                                         std::numeric_limits<std::int64_t>::max()};
  const std::vector<std::int32_t> i32 = {std::numeric_limits<std::int32_t>::min(), 17};
  SafetensorsWriter w;
  w.set_metadata("config", "{\"x\": 1}");
  w.add("f32", DType::F32, {7}, f32);
  w.add("f64", DType::F64, {5, 1}, f64);
  w.add("i64", DType::I64, {2, 2}, i64);
  w.add("i32", DType::I32, {1, 2, 1}, i32);
  w.add("empty", DType::F32, {0, 3}, std::vector<float>{});
  const std::vector<char> bytes = w.serialize();

  const auto f = SafetensorsFile::parse(bytes, "mem");
  EXPECT_EQ(f.names(), (std::vector<std::string>{"empty", "f32", "f64", "i32", "i64"}));
  EXPECT_EQ(f.metadata("config"), "{\"x\": 1}");
  EXPECT_EQ(f.info("f64").shape, (std::vector<std::int64_t>{5, 1}));
  EXPECT_EQ(f.info("f64").dtype, DType::F64);
  EXPECT_EQ(f.info("empty").numel(), 0);
  const auto rf32 = f.read<float>("f32");
  for (std::size_t i = 0; i < f32.size(); ++i) EXPECT_TRUE(same_bits(rf32[i], f32[i])) << i;
  const auto rf64 = f.read<double>("f64");
  for (std::size_t i = 0; i < f64.size(); ++i) EXPECT_TRUE(same_bits(rf64[i], f64[i])) << i;
  EXPECT_EQ(f.read<std::int64_t>("i64"), i64);
  EXPECT_EQ(f.read<std::int32_t>("i32"), i32);
  EXPECT_TRUE(f.read<float>("empty").empty());

  // Re-encoding what was read gives the same bytes (and add() order does not matter).
  SafetensorsWriter w2;
  w2.add("i32", DType::I32, {1, 2, 1}, f.read<std::int32_t>("i32"));
  w2.add("i64", DType::I64, {2, 2}, f.read<std::int64_t>("i64"));
  w2.add("f64", DType::F64, {5, 1}, rf64);
  w2.add("empty", DType::F32, {0, 3}, std::vector<float>{});
  w2.add("f32", DType::F32, {7}, rf32);
  w2.set_metadata("config", "{\"x\": 1}");
  EXPECT_EQ(w2.serialize(), bytes);
}

TEST(Safetensors, ByteLayoutFollowsTheFormat) {
  const std::vector<char> bytes = small_file();
  std::uint64_t n = 0;
  for (int k = 0; k < 8; ++k)
    n |= static_cast<std::uint64_t>(static_cast<unsigned char>(bytes[static_cast<std::size_t>(k)]))
         << (8 * k);
  EXPECT_EQ((8 + n) % 8, 0u) << "data must start 8-byte aligned";
  EXPECT_EQ(bytes[8], '{');
  const std::string header(bytes.data() + 8, n);
  EXPECT_EQ(header.find("\"__metadata__\":{\"format\":\"pt\"}"), 1u) << header;
  EXPECT_NE(header.find("\"a\":{\"data_offsets\":[0,24],\"dtype\":\"F32\",\"shape\":[2,3]}"),
            std::string::npos)
      << header;
  // Data: a (24 bytes) then b then c, little-endian. 1.0f = 0x3f800000.
  const unsigned char* data = reinterpret_cast<const unsigned char*>(bytes.data()) + 8 + n;
  EXPECT_EQ(data[0], 0x00);
  EXPECT_EQ(data[3], 0x3f);
  EXPECT_EQ(data[2], 0x80);
  EXPECT_EQ(data[24], static_cast<unsigned char>(-7 & 0xff));  // b[0] = -7, low byte first
  EXPECT_EQ(bytes.size(), 8 + n + 24 + 16 + 8);
}

TEST(Safetensors, ConversionsOnRead) {
  const auto f = SafetensorsFile::parse(small_file(), "mem");
  EXPECT_EQ(f.read<double>("a")[5], 6.0);
  EXPECT_EQ(f.read<float>("c")[0], 0.25f);
  EXPECT_EQ(f.read<double>("b")[1], 1099511627776.0);  // ints into floats are allowed
  EXPECT_THROW(f.read<std::int64_t>("a"), IoError);    // floats into ints are not
  EXPECT_THROW(f.read<std::int32_t>("b"), IoError);    // 2^40 does not fit 32 bits
  EXPECT_THROW(f.read<std::uint64_t>("b"), IoError);   // -7 does not fit unsigned
  EXPECT_THROW(f.read<double>("zz"), IoError);
  std::vector<float> buf(5);
  EXPECT_THROW(f.read_into("a", buf.data(), buf.size()), IoError);

  // F16 and BF16 are readable (1.0, -2.0, 65504, smallest subnormal / 1.0, -0.5).
  SafetensorsWriter w;
  w.add_raw("h", DType::F16, {4}, {0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00});
  w.add_raw("bf", DType::BF16, {2}, {0x80, 0x3f, 0x00, 0xbf});
  w.add("u8", DType::U8, {3}, std::vector<int>{0, 200, 255});
  const auto g = SafetensorsFile::parse(w.serialize(), "mem");
  EXPECT_EQ(g.read<double>("h"), (std::vector<double>{1.0, -2.0, 65504.0, std::ldexp(1.0, -24)}));
  EXPECT_EQ(g.read<float>("bf"), (std::vector<float>{1.0f, -0.5f}));
  EXPECT_EQ(g.read<std::int32_t>("u8"), (std::vector<std::int32_t>{0, 200, 255}));
  EXPECT_THROW(g.read<std::int8_t>("u8"), IoError);

  // Doubles beyond float's range become +-inf when read as float (checkpoints then reject them).
  SafetensorsWriter big;
  big.add("x", DType::F64, {3}, std::vector<double>{1e300, -1e300, 1e-300});
  const auto b = SafetensorsFile::parse(big.serialize(), "mem").read<float>("x");
  EXPECT_EQ(b[0], std::numeric_limits<float>::infinity());
  EXPECT_EQ(b[1], -std::numeric_limits<float>::infinity());
  EXPECT_EQ(b[2], 0.0f);
}

TEST(Safetensors, WriterRejectsBadArguments) {
  SafetensorsWriter w;
  w.add("x", DType::F32, {1}, std::vector<float>{1});
  EXPECT_THROW(w.add("x", DType::F32, {1}, std::vector<float>{1}), InvalidArgument);
  EXPECT_THROW(w.add("__metadata__", DType::F32, {1}, std::vector<float>{1}), InvalidArgument);
  EXPECT_THROW(w.add("", DType::F32, {1}, std::vector<float>{1}), InvalidArgument);
  EXPECT_THROW(w.add("y", DType::F32, {2, 2}, std::vector<float>{1, 2, 3}), InvalidArgument);
  EXPECT_THROW(w.add("y", DType::F32, {-1}, std::vector<float>{}), InvalidArgument);
  EXPECT_THROW(w.add("y", DType::I64, {1}, std::vector<double>{1.0}), InvalidArgument);
  EXPECT_THROW(w.add("y", DType::I32, {1}, std::vector<std::int64_t>{1LL << 33}), InvalidArgument);
  EXPECT_THROW(w.add("y", DType::F16, {1}, std::vector<float>{1}), InvalidArgument);
  EXPECT_THROW(w.add_raw("y", DType::F32, {2}, {1, 2, 3}), InvalidArgument);
  EXPECT_EQ(w.size(), 1u);  // nothing was added by the failed calls
}

TEST(Safetensors, ReadsEveryReferenceFixture) {
  for (const auto& entry : fs::directory_iterator(REFORMER_TEST_DATA_DIR)) {
    if (entry.path().extension() != ".safetensors") continue;
    SCOPED_TRACE(entry.path().string());
    const auto f = SafetensorsFile::load(entry.path().string());
    ASSERT_TRUE(f.metadata().count("config"));
    ASSERT_TRUE(f.metadata().count("batch"));
    ASSERT_TRUE(f.metadata().count("length"));
    EXPECT_TRUE(nlohmann::json::parse(f.metadata("config")).is_object());
    const std::int64_t B = std::stoll(f.metadata("batch"));
    const std::int64_t T = std::stoll(f.metadata("length"));
    // HF's padding path runs (and hashes) a longer sequence than the one given.
    const std::int64_t padded =
        f.metadata().count("padded_length") ? std::stoll(f.metadata("padded_length")) : T;
    EXPECT_GE(B, 2);
    std::size_t params = 0, grads = 0;
    for (const auto& name : f.names()) {
      const TensorInfo& ti = f.info(name);
      const bool buckets = name.rfind("buckets", 0) == 0;
      if (name == "tokens" || name == "attention_mask" || name == "labels" || buckets) {
        EXPECT_EQ(ti.dtype, DType::I64) << name;
        EXPECT_EQ(ti.shape.front(), B) << name;
        if (name != "labels" || ti.shape.size() > 1) {
          EXPECT_EQ(ti.shape.back(), buckets ? padded : T) << name;
        }
        // Labels may be HF's ignore index -100; everything else is a non-negative id.
        const std::int64_t lowest = name == "labels" ? -100 : 0;
        for (std::int64_t v : f.read<std::int64_t>(name)) ASSERT_GE(v, lowest) << name;
      } else {
        EXPECT_EQ(ti.dtype, DType::F64) << name;
        for (double v : f.read<double>(name)) ASSERT_TRUE(std::isfinite(v)) << name;
      }
      if (name.rfind("param.", 0) == 0) ++params;
      if (name.rfind("grad.", 0) == 0) ++grads;
    }
    EXPECT_GT(params, 0u);
    EXPECT_EQ(params, grads);
    if (f.contains("input")) {
      EXPECT_EQ(f.info("input").shape, (std::vector<std::int64_t>{B, T, 24}));
      EXPECT_EQ(f.info("grad_input").shape, f.info("input").shape);
    } else {
      const auto& logits = f.info("logits").shape;
      if (logits.size() == 2) {  // sequence classification: [B, num_labels]
        EXPECT_EQ(logits.front(), B);
      } else {
        EXPECT_EQ(logits, (std::vector<std::int64_t>{B, T, 29}));
      }
      EXPECT_EQ(f.info("loss").numel(), 1);
      // The loss of a random model is near log(number of classes): below 4.5.
      const double loss = f.read<double>("loss")[0];
      EXPECT_GT(loss, 0.5);
      EXPECT_LT(loss, 4.5);
      for (std::int64_t t : f.read<std::int64_t>("tokens")) ASSERT_LT(t, 29);
    }
  }
}

TEST(Safetensors, EveryTruncationIsAnIoError) {
  const std::vector<char> full = small_file();
  ASSERT_NO_THROW(SafetensorsFile::parse(full, "full"));
  for (std::size_t n = 0; n < full.size(); ++n) {
    std::vector<char> cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW(SafetensorsFile::parse(cut, "cut"), IoError) << "truncated at " << n;
  }
}

TEST(Safetensors, RandomCorruptionNeverCrashes) {
  // Flip bytes of the size field and header: either a valid file or an IoError, nothing else.
  const std::vector<char> full = small_file();
  const Rng rng(42);
  for (std::uint64_t trial = 0; trial < 3000; ++trial) {
    std::vector<char> bad = full;
    const std::size_t header_end = 8 + 120;
    for (std::uint64_t k = 0; k < 1 + trial % 3; ++k) {
      const auto pos = static_cast<std::size_t>(rng.below(trial * 8 + k, header_end));
      bad[pos] = static_cast<char>(rng.below(trial * 8 + k + 4, 256));
    }
    try {
      const auto f = SafetensorsFile::parse(bad, "fuzz");
      for (const auto& name : f.names()) {
        try {
          (void)f.read<double>(name);
        } catch (const IoError&) {
        }
      }
    } catch (const IoError&) {
    }
  }
}

TEST(Safetensors, HeaderSizeProblems) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const std::vector<unsigned char> d = {0, 0, 128, 63};
  ASSERT_EQ(SafetensorsFile::parse(raw_file(h, d), "ok").read<float>("a")[0], 1.0f);
  expect_io_error(raw_file(h, d, h.size() + 5), "exceeds");
  expect_io_error(raw_file(h, d, 1ULL << 62), "exceeds the limit");
  expect_io_error(raw_file(h, d, std::numeric_limits<std::uint64_t>::max() - 1), "limit");
  expect_io_error(std::vector<char>{1, 0, 0}, "fewer than the 8-byte");
  expect_io_error(raw_file(""), "does not start with '{'");
  expect_io_error(raw_file(" " + h, d), "does not start with '{'");
}

TEST(Safetensors, BadJsonAndBadEntries) {
  const std::vector<unsigned char> four(4, 0);
  expect_io_error(raw_file("{\"a\":", four), "not valid JSON");
  expect_io_error(raw_file("{\"a\": 1} trailing", four), "not valid JSON");
  expect_io_error(raw_file("{\"a\":\"\xff\xfe\"}"), "not valid JSON");  // invalid UTF-8
  expect_io_error(raw_file("{\"a\": 1}"), "'a': entry is not a JSON object");
  expect_io_error(raw_file(R"({"__metadata__": [1]})"), "__metadata__ is not a JSON object");
  expect_io_error(raw_file(R"({"__metadata__": {"k": 3}})"), "value of 'k' is not a string");
  expect_io_errors(
      four, {
                {R"({"a":{"shape":[1],"data_offsets":[0,4]}})", "'dtype'"},
                {R"({"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", "unknown dtype 'Q7'"},
                {R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", "'dtype'"},
                {R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", "'shape'"},
                {R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
                 "not a non-negative integer"},
                {R"({"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}})",
                 "not a non-negative integer"},
                {R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})",
                 "overflows"},
                {R"({"a":{"dtype":"F32","shape":[1]}})", "'data_offsets'"},
                {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", "'data_offsets'"},
                {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,-4]}})", "non-negative"},
                {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", "reversed"},
                // Duplicate keys, at the top level and inside an entry.
                {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                 R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                 "repeats the key 'a'"},
                {R"({"a":{"dtype":"F32","dtype":"F64","shape":[1],"data_offsets":[0,4]}})",
                 "repeats the key 'dtype'"},
            });
}

TEST(Safetensors, BadOffsets) {
  const std::vector<unsigned char> eight(8, 0);
  expect_io_errors(
      eight,
      {
          // Past the end of the data section.
          {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", "exceed the data section"},
          // Span does not match dtype * shape.
          {R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", "need 16"},
          // Overlap.
          {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           "overlap"},
          // A hole before a tensor.
          {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", "gap"},
          // Bytes that no tensor covers.
          {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "trailing"},
      });
  // Zero-size tensors may share an offset.
  EXPECT_NO_THROW(
      SafetensorsFile::parse(raw_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                                      R"("b":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
                                      R"("c":{"dtype":"F32","shape":[2,0],"data_offsets":[8,8]}})",
                                      eight),
                             "ok"));
}

class SafetensorsWrite : public test::TempDirTest {
 protected:
  SafetensorsWrite() : TempDirTest("io_") {}
};

TEST_F(SafetensorsWrite, AtomicWriteReplacesTheFileAndLeavesNoTemporary) {
  const std::string path = (dir_ / "x.safetensors").string();
  SafetensorsWriter w1;
  w1.add("v", DType::F64, {2}, std::vector<double>{1, 2});
  w1.write(path);
  EXPECT_EQ(SafetensorsFile::load(path).read<double>("v"), (std::vector<double>{1, 2}));
  SafetensorsWriter w2;
  w2.add("w", DType::F32, {3}, std::vector<float>{4, 5, 6});
  w2.write(path);
  const auto f = SafetensorsFile::load(path);
  EXPECT_FALSE(f.contains("v"));
  EXPECT_EQ(f.read<float>("w"), (std::vector<float>{4, 5, 6}));
  EXPECT_EQ(files_in_dir(), 1u);
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  EXPECT_EQ(static_cast<std::size_t>(in.tellg()), w2.serialize().size());
}

TEST_F(SafetensorsWrite, FailedWriteThrowsAndLeavesNothing) {
  SafetensorsWriter w;
  w.add("v", DType::F64, {1}, std::vector<double>{1});
  EXPECT_THROW(w.write((dir_ / "missing_dir" / "x.safetensors").string()), IoError);
  EXPECT_EQ(files_in_dir(), 0u);
  EXPECT_THROW(SafetensorsFile::load((dir_ / "nope.safetensors").string()), IoError);
  // A directory cannot be replaced by a file: the rename fails, the temporary is removed.
  fs::create_directories(dir_ / "occupied");
  EXPECT_THROW(w.write((dir_ / "occupied").string()), IoError);
  EXPECT_EQ(files_in_dir(), 0u);
}

}  // namespace
}  // namespace reformer::io
