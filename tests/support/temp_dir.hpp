#pragma once
// A GoogleTest fixture owning a fresh directory per test: <tmp>/reformer_<prefix><test>_<pid>,
// created empty before the test and removed after it.
//
//   class Checkpoint : public test::TempDirTest {
//    protected:
//     Checkpoint() : TempDirTest("ckpt_") {}
//   };
//   TEST_F(Checkpoint, RoundTrip) { save(path("a.safetensors")); ... }
#include <gtest/gtest.h>

#include <cstddef>
#include <filesystem>
#include <string>
#include <utility>

#include <unistd.h>

namespace reformer::test {

class TempDirTest : public ::testing::Test {
 protected:
  explicit TempDirTest(std::string prefix) : prefix_(std::move(prefix)) {}

  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("reformer_" + prefix_ + info->name() + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  /// The test's directory.
  std::string dir() const { return dir_.string(); }
  /// `name` inside the test's directory.
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  /// Number of regular files in the test's directory.
  std::size_t files_in_dir() const {
    std::size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir_))
      n += e.is_regular_file() ? 1 : 0;
    return n;
  }

  std::filesystem::path dir_;

 private:
  std::string prefix_;
};

}  // namespace reformer::test
