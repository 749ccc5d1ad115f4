#include "inode_table.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "fake_inodes.h"
#include "test_support.h"

using vssfs::cow_store::UniqueFd;
using vssfs::fs::Inode;
using vssfs::fs::InodeTable;
using vssfs::fs::kReservedNodeIdBase;
using vssfs::testing::SomeFd;
using vssfs::testing::StatWithIno;

TEST_CASE("inode table: node ids are backing inode numbers", "[fs][inode_table]") {
  InodeTable table(SomeFd(), StatWithIno(2, S_IFDIR));
  CHECK(table.NodeIdFor(2) == FUSE_ROOT_ID);  // The backing root.
  CHECK(table.NodeIdFor(1) == 2);             // Swapped with the root.
  CHECK(table.NodeIdFor(12345) == 12345);
  CHECK(table.NodeIdFor(kReservedNodeIdBase) == 0);
  CHECK(table.NodeIdFor(0) == 0);
  CHECK(table.root()->nodeid == FUSE_ROOT_ID);
  CHECK(table.Find(FUSE_ROOT_ID) == table.root());
}

TEST_CASE("inode table: lookups are counted and forgotten", "[fs][inode_table]") {
  InodeTable table(SomeFd(), StatWithIno(2, S_IFDIR));
  auto a = table.Acquire(SomeFd(), StatWithIno(100));
  REQUIRE(a);
  CHECK(a->nodeid == 100);
  CHECK(a->type == S_IFREG);
  int first_fd = a->fd.get();
  // A second lookup of the same inode (e.g. a hard link) reuses the entry and
  // closes the new descriptor.
  UniqueFd second = SomeFd();
  int second_fd = second.get();
  auto b = table.Acquire(std::move(second), StatWithIno(100));
  CHECK(b == a);
  CHECK(a->fd.get() == first_fd);
  CHECK(fcntl(second_fd, F_GETFD) == -1);
  CHECK(a->nlookup == 2);
  CHECK(table.size() == 2);
  table.Forget(100, 1);
  CHECK(table.Find(100) == a);
  table.Forget(100, 1);
  CHECK(table.Find(100) == nullptr);
  CHECK(table.size() == 1);
  // Forgetting more than was looked up, or unknown ids, is harmless.
  table.Forget(100, 5);
  table.Forget(FUSE_ROOT_ID, 1000);
  CHECK(table.Find(FUSE_ROOT_ID) != nullptr);
}

TEST_CASE("inode table: every entry of a node id has its own generation", "[fs][inode_table]") {
  InodeTable table(SomeFd(), StatWithIno(2, S_IFDIR));
  CHECK(table.root()->generation == 0);  // The kernel's root inode has 0.
  auto a = table.Acquire(SomeFd(), StatWithIno(100));
  auto b = table.Acquire(SomeFd(), StatWithIno(101));
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->generation != 0);
  CHECK(b->generation != 0);
  CHECK(a->generation != b->generation);
  // Looked up again while known: the same entry, the same generation.
  const uint32_t first = a->generation;
  CHECK(table.Acquire(SomeFd(), StatWithIno(100))->generation == first);
  // Forgotten, then node id 100 is a new file (the backing filesystem reused
  // the inode number): a handle of the old file must not open it.
  table.Forget(100, 2);
  REQUIRE(table.Find(100) == nullptr);
  auto reused = table.Acquire(SomeFd(), StatWithIno(100, S_IFIFO));
  REQUIRE(reused);
  CHECK(reused->generation != first);
  CHECK(reused->generation != 0);
}

TEST_CASE("inode table: reserved inode numbers are refused", "[fs][inode_table]") {
  InodeTable table(SomeFd(), StatWithIno(2, S_IFDIR));
  CHECK(table.Acquire(SomeFd(), StatWithIno(kReservedNodeIdBase + 5)) == nullptr);
  CHECK(table.size() == 1);
}

TEST_CASE("inode table: entries come out least recently used first", "[fs][inode_table]") {
  InodeTable table(SomeFd(), StatWithIno(2, S_IFDIR));
  for (ino_t ino = 100; ino < 105; ++ino) REQUIRE(table.Acquire(SomeFd(), StatWithIno(ino)));
  // 102 is looked up again, then 100 used (a request on it). The clock is
  // the count of lookups, so both were last used at the same time.
  REQUIRE(table.Acquire(SomeFd(), StatWithIno(102)));
  REQUIRE(table.Find(100));
  CHECK(table.LeastRecentlyUsed(10) == std::vector<uint64_t>{101, 103, 104, 100, 102});
  CHECK(table.LeastRecentlyUsed(2) == std::vector<uint64_t>{101, 103});
  CHECK(table.LeastRecentlyUsed(0).empty());
  // An open file is never offered, nor the root.
  table.Find(101)->open_files = 1;
  CHECK(table.LeastRecentlyUsed(10) == std::vector<uint64_t>{103, 104, 100, 102});
}

TEST_CASE("inode table: the pressure hook runs when a new entry passes the limit",
          "[fs][inode_table]") {
  InodeTable table(SomeFd(), StatWithIno(2, S_IFDIR));
  int calls = 0;
  table.SetPressureHook(3, [&] { ++calls; });
  REQUIRE(table.Acquire(SomeFd(), StatWithIno(100)));  // 2 entries with the root
  REQUIRE(table.Acquire(SomeFd(), StatWithIno(101)));  // 3
  CHECK(calls == 0);
  REQUIRE(table.Acquire(SomeFd(), StatWithIno(102)));  // 4: past the limit
  CHECK(calls == 1);
  REQUIRE(table.Acquire(SomeFd(), StatWithIno(102)));  // known: no new entry
  CHECK(calls == 1);
  REQUIRE(table.Acquire(SomeFd(), StatWithIno(103)));
  CHECK(calls == 2);
}

TEST_CASE("inode table: kept entries move to the end of the use order", "[fs][inode_table]") {
  InodeTable table(SomeFd(), StatWithIno(2, S_IFDIR));
  for (ino_t ino = 100; ino < 104; ++ino) REQUIRE(table.Acquire(SomeFd(), StatWithIno(ino)));
  table.MarkUsed({100, 101, 999});  // 999 is not in the table: ignored.
  CHECK(table.LeastRecentlyUsed(10) == std::vector<uint64_t>{102, 100, 101, 103});
}

TEST_CASE("inode table: a birth epoch outlives the entry until the next cut", "[fs][inode_table]") {
  // A file created after the latest snapshot has nothing to preserve; the
  // kernel forgetting it (a prune) must not make vssfs copy it later.
  InodeTable table(SomeFd(), StatWithIno(2, S_IFDIR));
  auto a = table.Acquire(SomeFd(), StatWithIno(100));
  REQUIRE(a);
  CHECK(a->born == Inode::kNoEpoch);
  a->born = 7;
  REQUIRE(table.Acquire(SomeFd(), StatWithIno(101)));  // never born: nothing kept
  table.Forget(100, 1);
  table.Forget(101, 1);
  a.reset();
  auto again = table.Acquire(SomeFd(), StatWithIno(100));
  REQUIRE(again);
  CHECK(again->born == 7);
  CHECK(table.Acquire(SomeFd(), StatWithIno(101))->born == Inode::kNoEpoch);
  // A snapshot cut clears what was recorded.
  table.Forget(100, 1);
  table.ClearBirths();
  CHECK(table.Acquire(SomeFd(), StatWithIno(100))->born == Inode::kNoEpoch);
}
