#include "inode_table.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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

namespace {

using vssfs::testing::RealFiles;

// A table over real files with eviction on; `files` must outlive it.
std::unique_ptr<InodeTable> EvictingTable(const RealFiles& files) {
  struct stat st;
  UniqueFd root = files.RootFd(&st);
  auto table = std::make_unique<InodeTable>(std::move(root), st);
  const int r = table->EnableEviction(files.mount_fd());
  INFO("EnableEviction: " << std::strerror(-r) << " (needs CAP_DAC_READ_SEARCH)");
  REQUIRE(r == 0);
  return table;
}

// Looks file `name` up once (made if missing); returns its entry.
std::shared_ptr<Inode> LookUpFile(InodeTable& table, const RealFiles& files,
                                  const std::string& name) {
  struct stat st;
  UniqueFd fd = files.Make(name, &st);
  REQUIRE(fd);
  return table.Acquire(std::move(fd), st);
}

// "f<i>", built without operator+(const char*, std::string&&), which GCC 12
// misreads under -Wrestrict.
std::string FileName(int i) {
  std::string name = "f";
  name += std::to_string(i);
  return name;
}

ino_t InoOf(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

}  // namespace

TEST_CASE("inode table: idle files' descriptors are closed and reopened by handle",
          "[fs][inode_table]") {
  RealFiles files;
  auto table = EvictingTable(files);
  REQUIRE(mkdir(files.Path("dir").c_str(), 0755) == 0);
  struct stat dst;
  UniqueFd dfd = files.Open("dir", &dst);
  const uint64_t dir_id = table->Acquire(std::move(dfd), dst)->nodeid;
  const uint64_t idle = LookUpFile(*table, files, "idle")->nodeid;
  std::shared_ptr<Inode> held = LookUpFile(*table, files, "held");
  LookUpFile(*table, files, "open")->open_files = 1;
  REQUIRE(table->descriptors() == 5);  // The root, the directory, three files.

  // Only the idle file qualifies: the directory is not a file, a request
  // holds one file and another is open.
  CHECK(table->EvictDescriptors(10) == 1);
  CHECK(table->evicted() == 1);
  CHECK(table->descriptors() == 4);
  CHECK(table->size() == 5);
  CHECK(table->released() == 1);
  CHECK(table->forgotten() == 0);
  CHECK(table->LeastRecentlyUsed(10).size() == 2);  // Not the evicted file, nor the open one.
  CHECK(held->fd);
  CHECK(table->Find(dir_id)->fd);

  // The next use reopens it: the same entry, the same file.
  std::shared_ptr<Inode> back = table->Find(idle);
  REQUIRE(back);
  CHECK(back->fd);
  CHECK(back->handle.empty());
  CHECK(InoOf(back->fd.get()) == idle);
  CHECK(table->evicted() == 0);
  CHECK(table->descriptors() == 5);
  // Nothing qualifies while every file is held or open.
  CHECK(table->EvictDescriptors(10) == 0);
}

TEST_CASE("inode table: a file without a link keeps its descriptor", "[fs][inode_table]") {
  RealFiles files;
  auto table = EvictingTable(files);
  const uint64_t id = LookUpFile(*table, files, "gone")->nodeid;
  REQUIRE(unlink(files.Path("gone").c_str()) == 0);
  // Closing it would free the inode, and its number could be reused while
  // the kernel still names the node.
  CHECK(table->EvictDescriptors(10) == 0);
  CHECK(table->Find(id)->fd);
}

TEST_CASE("inode table: an evicted file deleted behind the table's back is stale",
          "[fs][inode_table]") {
  RealFiles files;
  auto table = EvictingTable(files);
  const uint64_t id = LookUpFile(*table, files, "f")->nodeid;
  REQUIRE(table->EvictDescriptors(10) == 1);
  REQUIRE(unlink(files.Path("f").c_str()) == 0);
  errno = 0;
  CHECK(table->Find(id) == nullptr);
  CHECK(errno == ESTALE);
  // The entry stays until the kernel forgets it.
  CHECK(table->size() == 2);
  table->Forget(id, 1);
  CHECK(table->size() == 1);
  CHECK(table->evicted() == 0);
  CHECK(table->descriptors() == 1);
}

TEST_CASE("inode table: a lookup of an evicted file gives it the new descriptor",
          "[fs][inode_table]") {
  RealFiles files;
  auto table = EvictingTable(files);
  std::shared_ptr<Inode> first = LookUpFile(*table, files, "f");
  const uint32_t generation = first->generation;
  Inode* entry = first.get();
  first.reset();
  REQUIRE(table->EvictDescriptors(10) == 1);
  struct stat st;
  UniqueFd fd = files.Open("f", &st);
  const int raw = fd.get();
  std::shared_ptr<Inode> again = table->Acquire(std::move(fd), st);
  CHECK(again.get() == entry);
  CHECK(again->fd.get() == raw);
  CHECK(again->generation == generation);
  CHECK(again->nlookup == 2);
  CHECK(table->evicted() == 0);
}

TEST_CASE("inode table: another file under an evicted entry's number gets a new entry",
          "[fs][inode_table]") {
  // The backing filesystem reuses a number only once the old file is gone;
  // here a stat record says so for another file.
  RealFiles files;
  auto table = EvictingTable(files);
  std::shared_ptr<Inode> old = LookUpFile(*table, files, "old");
  const uint64_t id = old->nodeid;
  const uint32_t old_generation = old->generation;
  old.reset();
  REQUIRE(table->EvictDescriptors(10) == 1);
  struct stat st;
  UniqueFd fd = files.Make("new", &st);
  st.st_ino = id;
  std::shared_ptr<Inode> fresh = table->Acquire(std::move(fd), st);
  REQUIRE(fresh);
  CHECK(fresh->nodeid == id);
  CHECK(fresh->generation != old_generation);
  CHECK(fresh->fd);
  // The old node's lookup is still to be forgotten by the kernel.
  CHECK(fresh->nlookup == 2);
  CHECK(table->evicted() == 0);
  table->Forget(id, 1);
  CHECK(table->Find(id) == fresh);
}

TEST_CASE("inode table: a held file losing its last name keeps its descriptor",
          "[fs][inode_table]") {
  // What a request deleting a file's last name does (Filesystem::PinVictim):
  // it holds the entry (reopened if it was evicted) over the deletion.
  RealFiles files;
  auto table = EvictingTable(files);
  const uint64_t id = LookUpFile(*table, files, "victim")->nodeid;
  REQUIRE(table->EvictDescriptors(10) == 1);
  std::shared_ptr<Inode> pinned = table->Find(id);
  REQUIRE(pinned);
  CHECK(pinned->fd);
  CHECK(table->EvictDescriptors(10) == 0);  // Held.
  REQUIRE(unlink(files.Path("victim").c_str()) == 0);
  pinned.reset();
  // Unlinked now: its descriptor holds the inode (and its number) until the
  // kernel forgets the node.
  CHECK(table->EvictDescriptors(10) == 0);
  std::shared_ptr<Inode> still = table->Find(id);
  REQUIRE(still);
  CHECK(InoOf(still->fd.get()) == id);
}

TEST_CASE("inode table: reopened entries count against the pressure limit", "[fs][inode_table]") {
  RealFiles files;
  auto table = EvictingTable(files);
  int pressed = 0;
  table->SetPressureHook(3, [&] { ++pressed; });
  const uint64_t a = LookUpFile(*table, files, "a")->nodeid;
  LookUpFile(*table, files, "b");
  CHECK(pressed == 0);  // Three descriptors: the root and two files.
  REQUIRE(table->EvictDescriptors(1) == 1);
  LookUpFile(*table, files, "c");
  CHECK(pressed == 0);
  REQUIRE(table->Find(a));  // Reopened: four descriptors.
  CHECK(pressed == 1);
}

TEST_CASE("inode table: requests and evictions at once never see a closed descriptor",
          "[fs][inode_table]") {
  // Three threads use entries (Find, checking that each descriptor is the
  // file's own) and look files up again (Acquire) while a fourth evicts all
  // it can, over and over. A descriptor closed under a user would fail
  // fstat or, once its number is reused, name another file.
  RealFiles files;
  auto table = EvictingTable(files);
  constexpr int kFiles = 64;
  std::vector<uint64_t> ids;
  for (int i = 0; i < kFiles; ++i) {
    ids.push_back(LookUpFile(*table, files, FileName(i))->nodeid);
  }
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0};
  std::atomic<uint64_t> uses{0};
  std::atomic<uint64_t> evictions{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t n = 0; !stop.load(); ++n) {
        const int i = static_cast<int>((n * 7 + static_cast<uint64_t>(t) * 13) % kFiles);
        if (n % 5 == static_cast<uint64_t>(t)) {
          // A lookup: a new descriptor for a known file.
          struct stat st;
          UniqueFd fd = files.Open(FileName(i), &st);
          std::shared_ptr<Inode> inode = table->Acquire(std::move(fd), st);
          if (!inode || inode->nodeid != ids[i] || InoOf(inode->fd.get()) != ids[i]) ++wrong;
          table->Forget(ids[i], 1);
        } else {
          std::shared_ptr<Inode> inode = table->Find(ids[i]);
          if (!inode || InoOf(inode->fd.get()) != ids[i]) ++wrong;
        }
        ++uses;
      }
    });
  }
  threads.emplace_back([&] {
    while (!stop.load()) evictions += table->EvictDescriptors(kFiles);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  stop = true;
  for (auto& t : threads) t.join();
  INFO(uses.load() << " uses, " << evictions.load() << " evictions");
  CHECK(wrong.load() == 0);
  CHECK(evictions.load() > 100);
  CHECK(uses.load() > 1000);
  // The counts still add up: once every entry is reopened none is evicted.
  for (uint64_t id : ids) REQUIRE(table->Find(id));
  CHECK(table->evicted() == 0);
  CHECK(table->descriptors() == table->size());
  CHECK(table->size() == kFiles + 1);
}

TEST_CASE("inode table: entries to prune include older evicted files", "[fs][inode_table]") {
  // An evicted file's dentry keeps its directory in the kernel's cache: to
  // free a directory's descriptor the kernel must drop its files too.
  RealFiles files;
  auto table = EvictingTable(files);
  const uint64_t a = LookUpFile(*table, files, "a")->nodeid;
  const uint64_t b = LookUpFile(*table, files, "b")->nodeid;
  REQUIRE(mkdir(files.Path("dir").c_str(), 0755) == 0);
  struct stat st;
  UniqueFd fd = files.Open("dir", &st);
  const uint64_t dir = table->Acquire(std::move(fd), st)->nodeid;
  const uint64_t c = LookUpFile(*table, files, "c")->nodeid;
  REQUIRE(table->EvictDescriptors(2) == 2);  // a and b, the oldest files.
  // One entry holding a descriptor is wanted: the directory, with the
  // evicted files used before it.
  CHECK(table->OldestHolding(1) == std::vector<uint64_t>{a, b, dir});
  CHECK(table->OldestHolding(2) == std::vector<uint64_t>{a, b, dir, c});
  CHECK(table->LeastRecentlyUsed(1) == std::vector<uint64_t>{dir});
  CHECK(table->LeastRecentlyUsed(5, /*evicted=*/true) == std::vector<uint64_t>{a, b});
}
