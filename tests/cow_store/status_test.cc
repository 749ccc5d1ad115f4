#include "vssfs/cow_store/status.h"

#include <catch2/catch.hpp>

using vssfs::cow_store::Result;
using vssfs::cow_store::Status;

TEST_CASE("Status carries errno and message", "[cow_store]") {
  Status ok;
  CHECK(ok.ok());
  CHECK(ok.ToString() == "OK");
  Status e = Status::FromErrno(ENOENT, "open x");
  CHECK_FALSE(e.ok());
  CHECK(e.error() == ENOENT);
  CHECK(e.message() == "open x: No such file or directory");
}

TEST_CASE("Result holds a value or an error", "[cow_store]") {
  Result<int> v = 42;
  REQUIRE(v.ok());
  CHECK(v.value() == 42);
  CHECK(v.status().ok());
  Result<int> e = Status::Error(EINVAL, "bad");
  CHECK_FALSE(e.ok());
  CHECK(e.status().error() == EINVAL);
  CHECK(e.status().message() == "bad");
}
