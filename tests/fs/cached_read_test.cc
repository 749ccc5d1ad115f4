// Unit tests of CachedRead (fs/src/cached_read.h): reads through the page
// cache that report whether they waited for the disk. Pages are dropped
// with POSIX_FADV_DONTNEED and checked with mincore(2); where the temporary
// directory's filesystem keeps them (tmpfs), the cases that need a cold
// page say so and stop.
#include "cached_read.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "test_support.h"
#include "vssfs/cow_store/unique_fd.h"

namespace {

using vssfs::cow_store::UniqueFd;
using vssfs::fs::CachedRead;
using vssfs::testing::TempDir;

constexpr size_t kPage = 4096;

// A file of `size` bytes, byte i = i * 7 % 251, written and synced (so that
// its pages are clean and can be dropped).
struct TestFile {
  TempDir dir;
  std::string path;
  UniqueFd fd;
  std::vector<char> data;

  explicit TestFile(size_t size) : path(dir.Sub("file")), data(size) {
    for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>(i * 7 % 251);
    fd.reset(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    REQUIRE(fd);
    REQUIRE(pwrite(fd.get(), data.data(), size, 0) == static_cast<ssize_t>(size));
    REQUIRE(fsync(fd.get()) == 0);
    // No read-ahead: a page read brings in that page only.
    REQUIRE(posix_fadvise(fd.get(), 0, 0, POSIX_FADV_RANDOM) == 0);
  }

  // Drops the file's pages; whether none is left in the page cache (if some
  // are, says that the case is not tested here).
  bool Drop() {
    REQUIRE(posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED) == 0);
    if (CachedPages() == 0) return true;
    WARN("the page cache keeps this filesystem's pages (tmpfs?): not tested here");
    return false;
  }

  // How many of the file's pages are in the page cache.
  size_t CachedPages() {
    const size_t len = data.size();
    void* map = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd.get(), 0);
    REQUIRE(map != MAP_FAILED);
    std::vector<unsigned char> vec((len + kPage - 1) / kPage);
    const int r = mincore(map, len, vec.data());
    munmap(map, len);
    REQUIRE(r == 0);
    size_t n = 0;
    for (unsigned char v : vec) n += v & 1;
    return n;
  }
};

}  // namespace

TEST_CASE("CachedRead: reads what the file has, short only at its end", "[fs][cached_read]") {
  TestFile f(16 * kPage + 100);
  std::vector<char> buf(8 * kPage);
  bool blocked = true;
  CHECK(CachedRead(f.fd.get(), buf.data(), kPage, 3, &blocked) == static_cast<ssize_t>(kPage));
  CHECK(std::equal(buf.begin(), buf.begin() + kPage, f.data.begin() + 3));
  // 100 bytes left after the last whole page.
  const off_t tail = static_cast<off_t>(16 * kPage);
  CHECK(CachedRead(f.fd.get(), buf.data(), 2 * kPage, tail, &blocked) == 100);
  CHECK(std::equal(buf.begin(), buf.begin() + 100, f.data.begin() + tail));
  CHECK(CachedRead(f.fd.get(), buf.data(), kPage, tail + 100, &blocked) == 0);
  CHECK_FALSE(blocked);
  CHECK(CachedRead(f.fd.get(), buf.data(), kPage, tail + 5000, &blocked) == 0);
  CHECK(CachedRead(f.fd.get(), buf.data(), 0, 0, &blocked) == 0);
  CHECK(CachedRead(-1, buf.data(), kPage, 0, &blocked) == -EBADF);
}

TEST_CASE("CachedRead: a read from the disk is blocked, a cached one is not", "[fs][cached_read]") {
  TestFile f(16 * kPage);
  std::vector<char> buf(4 * kPage);
  if (!f.Drop()) return;
  bool blocked = false;
  REQUIRE(CachedRead(f.fd.get(), buf.data(), kPage, 0, &blocked) == static_cast<ssize_t>(kPage));
  CHECK(blocked);
  CHECK(std::equal(buf.begin(), buf.begin() + kPage, f.data.begin()));
  REQUIRE(CachedRead(f.fd.get(), buf.data(), kPage, 0, &blocked) == static_cast<ssize_t>(kPage));
  CHECK_FALSE(blocked);
}

TEST_CASE("CachedRead: a read partly cached is blocked and complete", "[fs][cached_read]") {
  TestFile f(16 * kPage);
  std::vector<char> buf(4 * kPage);
  if (!f.Drop()) return;
  // Page 4 back in the cache, page 5 not.
  REQUIRE(pread(f.fd.get(), buf.data(), kPage, 4 * kPage) == static_cast<ssize_t>(kPage));
  if (f.CachedPages() != 1) {
    WARN("a page read brought in others (" << f.CachedPages() << " cached): not tested here");
    return;
  }
  bool blocked = false;
  REQUIRE(CachedRead(f.fd.get(), buf.data(), 2 * kPage, 4 * kPage, &blocked) ==
          static_cast<ssize_t>(2 * kPage));
  CHECK(blocked);
  CHECK(std::equal(buf.begin(), buf.begin() + 2 * kPage, f.data.begin() + 4 * kPage));
}
