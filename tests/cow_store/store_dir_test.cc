#include "vssfs/cow_store/store_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>

#include "test_support.h"

using vssfs::cow_store::StoreDir;
using vssfs::testing::TempDir;

TEST_CASE("StoreDir creates the store with a format file", "[cow_store]") {
  TempDir tmp;
  auto store = StoreDir::Open(tmp.Sub("store"));
  REQUIRE(store.ok());
  struct stat st;
  REQUIRE(stat(tmp.Sub("store").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  CHECK(vssfs::testing::ReadFile(tmp.Sub("store/FORMAT")) == "vssfs-store 2\n");
  CHECK(vssfs::testing::ReadFile(tmp.Sub("store/lock")) == std::to_string(getpid()) + "\n");
}

TEST_CASE("StoreDir is exclusive between processes", "[cow_store]") {
  TempDir tmp;
  auto store = StoreDir::Open(tmp.Sub("store"));
  REQUIRE(store.ok());
  // flock(2) is per open file description: a second Open in this process
  // opens a new description and must also be refused.
  auto again = StoreDir::Open(tmp.Sub("store"));
  REQUIRE_FALSE(again.ok());
  CHECK(again.status().error() == EBUSY);
  CHECK_THAT(again.status().message(), Catch::Contains("in use by another vssfs process (pid " +
                                                       std::to_string(getpid()) + ")"));
  pid_t child = fork();
  if (child == 0) {
    auto other = StoreDir::Open(tmp.Sub("store"));
    _exit(!other.ok() && other.status().error() == EBUSY ? 0 : 1);
  }
  int status = 0;
  waitpid(child, &status, 0);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("StoreDir lock is released when the holder goes", "[cow_store]") {
  TempDir tmp;
  {
    auto store = StoreDir::Open(tmp.Sub("store"));
    REQUIRE(store.ok());
  }
  auto store = StoreDir::Open(tmp.Sub("store"));
  CHECK(store.ok());
}

TEST_CASE("StoreDir refuses an unknown format version", "[cow_store]") {
  TempDir tmp;
  REQUIRE(mkdir(tmp.Sub("store").c_str(), 0700) == 0);
  {
    std::ofstream f(tmp.Sub("store/FORMAT"));
    f << "vssfs-store 99\n";
  }
  auto store = StoreDir::Open(tmp.Sub("store"));
  REQUIRE_FALSE(store.ok());
  CHECK(store.status().error() == EPROTO);
  CHECK_THAT(store.status().message(), Catch::Contains("format version 99"));
  {
    std::ofstream f(tmp.Sub("store/FORMAT"));
    f << "something else\n";
  }
  auto other = StoreDir::Open(tmp.Sub("store"));
  REQUIRE_FALSE(other.ok());
  CHECK_THAT(other.status().message(), Catch::Contains("not a vssfs store format file"));
}

TEST_CASE("StoreDir reports a path it cannot create", "[cow_store]") {
  TempDir tmp;
  auto store = StoreDir::Open(tmp.Sub("missing/store"));
  REQUIRE_FALSE(store.ok());
  CHECK(store.status().error() == ENOENT);
  CHECK_THAT(store.status().message(), Catch::Contains("create store directory"));
}

TEST_CASE("StoreDir upgrades a version-1 store (no snapshot data) to the current version",
          "[cow_store]") {
  TempDir tmp;
  REQUIRE(mkdir(tmp.Sub("store").c_str(), 0700) == 0);
  {
    std::ofstream f(tmp.Sub("store/FORMAT"));
    f << "vssfs-store 1\n";
  }
  auto store = StoreDir::Open(tmp.Sub("store"));
  REQUIRE(store.ok());
  CHECK(vssfs::testing::ReadFile(tmp.Sub("store/FORMAT")) ==
        "vssfs-store " + std::to_string(vssfs::cow_store::kStoreFormatVersion) + "\n");
}
