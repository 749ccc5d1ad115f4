#include "vssfs/cow_store/store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <latch>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_support.h"

namespace {

using vssfs::cow_store::BlockLocation;
using vssfs::cow_store::CloneChange;
using vssfs::cow_store::CloneInode;
using vssfs::cow_store::CloneState;
using vssfs::cow_store::DefaultSnapshotName;
using vssfs::cow_store::DirEntry;
using vssfs::cow_store::FsckReport;
using vssfs::cow_store::GcResult;
using vssfs::cow_store::Guid;
using vssfs::cow_store::Ino;
using vssfs::cow_store::InodeMeta;
using vssfs::cow_store::kDefaultBlockSize;
using vssfs::cow_store::Preservation;
using vssfs::cow_store::PreservedState;
using vssfs::cow_store::ReadView;
using vssfs::cow_store::Result;
using vssfs::cow_store::SnapId;
using vssfs::cow_store::SnapshotInfo;
using vssfs::cow_store::SpaceUsage;
using vssfs::cow_store::Status;
using vssfs::cow_store::Store;
using vssfs::cow_store::StoreOptions;
using vssfs::cow_store::ValidSnapshotName;
using vssfs::testing::TempDir;

using Kind = BlockLocation::Kind;

constexpr uint64_t kBs = kDefaultBlockSize;

std::string Describe(const Status& s) { return s.ToString(); }
template <typename T>
std::string Describe(const Result<T>& r) {
  return r.status().ToString();
}

// REQUIREs that a Status or Result is OK, showing its message otherwise.
#define REQUIRE_OK(expr)                 \
  do {                                   \
    const auto& require_ok_value = expr; \
    INFO(Describe(require_ok_value));    \
    REQUIRE(require_ok_value.ok());      \
  } while (false)

// The value of an OK Result (REQUIREs OK).
template <typename T>
T Must(Result<T> r) {
  INFO(Describe(r));
  REQUIRE(r.ok());
  return std::move(r).value();
}

// Deterministic pseudo-random, non-zero content.
std::string Pattern(uint32_t seed, size_t size = kBs) {
  std::string s(size, '\0');
  uint32_t x = seed * 2654435761u + 12345u;
  for (char& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

uint64_t AlignUp4k(uint64_t v) { return (v + 4095) / 4096 * 4096; }

bool Contains(const std::vector<std::string>& lines, const std::string& word) {
  return std::any_of(lines.begin(), lines.end(),
                     [&](const std::string& l) { return l.find(word) != std::string::npos; });
}

std::string Joined(const std::vector<std::string>& lines) {
  std::string out;
  for (const std::string& l : lines) out += l + "\n";
  return out;
}

// A store in a private temporary directory, reopenable.
class TestStore {
 public:
  TestStore() : path_(tmp_.Sub("store")) {
    REQUIRE(mkdir(path_.c_str(), 0700) == 0);
    dir_fd_ = open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    REQUIRE(dir_fd_ >= 0);
    Reopen();
  }
  ~TestStore() {
    store_.reset();
    if (dir_fd_ >= 0) close(dir_fd_);
  }
  TestStore(const TestStore&) = delete;
  TestStore& operator=(const TestStore&) = delete;

  Store& operator*() { return *store_; }
  Store* operator->() { return store_.get(); }

  void Close() { store_.reset(); }
  void Reopen(const StoreOptions& options = StoreOptions{}) {
    store_.reset();
    store_ = Must(Store::Open(dir_fd_, path_, options));
  }

  const std::string& path() const { return path_; }
  std::string PackPath(uint32_t pack) const {
    char name[32];
    std::snprintf(name, sizeof name, "/packs/pack-%08u", pack);
    return path_ + name;
  }
  // Disk space allocated to the pack files (sum of st_blocks).
  uint64_t PackAllocated() const {
    uint64_t total = 0;
    const std::string dir = path_ + "/packs";
    DIR* d = opendir(dir.c_str());
    REQUIRE(d != nullptr);
    while (dirent* de = readdir(d)) {
      if (std::string(de->d_name).rfind("pack-", 0) != 0) continue;
      struct stat st;
      if (stat((dir + "/" + de->d_name).c_str(), &st) == 0) {
        total += static_cast<uint64_t>(st.st_blocks) * 512;
      }
    }
    closedir(d);
    return total;
  }

 private:
  TempDir tmp_;
  std::string path_;
  int dir_fd_ = -1;
  std::unique_ptr<Store> store_;
};

SnapId Snap(Store& store, const std::string& name) {
  return Must(store.CreateSnapshot(name, std::nullopt, 1'700'000'000'000'000'000)).id;
}

void PreserveBlock(Store& store, SnapId epoch, Ino ino, uint64_t block, const std::string& data) {
  Preservation p;
  p.AddBlock(ino, block, data);
  REQUIRE_OK(store.Preserve(epoch, p));
}

BlockLocation Locate(Store& store, Ino ino, uint64_t block, SnapId snap) {
  std::unique_ptr<ReadView> view = Must(store.BeginRead());
  return Must(view->FindBlock(ino, block, snap));
}

std::string ReadStored(Store& store, const BlockLocation& loc) {
  REQUIRE(loc.kind == Kind::kStored);
  std::string buf(loc.length, '\0');
  REQUIRE_OK(store.ReadBlock(loc, buf.data()));
  return buf;
}

// The content snapshot `snap` shows for a block that must be stored.
std::string StoredContent(Store& store, Ino ino, uint64_t block, SnapId snap) {
  return ReadStored(store, Locate(store, ino, block, snap));
}

std::vector<std::string> Names(ReadView& view, Ino dir, SnapId epoch, const std::string& after,
                               size_t limit = SIZE_MAX) {
  std::vector<std::string> names;
  REQUIRE_OK(view.ListEntries(dir, epoch, after, [&](const DirEntry& de) {
    names.push_back(de.name);
    return names.size() < limit;
  }));
  return names;
}

void CheckSameMeta(const InodeMeta& got, const InodeMeta& want) {
  CHECK(got.mode == want.mode);
  CHECK(got.uid == want.uid);
  CHECK(got.gid == want.gid);
  CHECK(got.nlink == want.nlink);
  CHECK(got.size == want.size);
  CHECK(got.blocks == want.blocks);
  CHECK(got.rdev == want.rdev);
  CHECK(got.atime.tv_sec == want.atime.tv_sec);
  CHECK(got.atime.tv_nsec == want.atime.tv_nsec);
  CHECK(got.mtime.tv_sec == want.mtime.tv_sec);
  CHECK(got.mtime.tv_nsec == want.mtime.tv_nsec);
  CHECK(got.ctime.tv_sec == want.ctime.tv_sec);
  CHECK(got.ctime.tv_nsec == want.ctime.tv_nsec);
  CHECK(got.xattrs == want.xattrs);
  CHECK(got.symlink == want.symlink);
}

FsckReport RunFsck(Store& store, bool repair) {
  std::vector<std::string> lines;
  FsckReport report =
      Must(store.Fsck(repair, [&](const std::string& line) { lines.push_back(line); }));
  CHECK_FALSE(lines.empty());  // At least the summary line.
  return report;
}

void OverwriteBytes(const std::string& path, uint64_t offset, const std::string& bytes) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)) ==
          static_cast<ssize_t>(bytes.size()));
  REQUIRE(fsync(fd) == 0);
  close(fd);
}

uint64_t FileSize(const std::string& path) {
  struct stat st;
  REQUIRE(stat(path.c_str(), &st) == 0);
  return static_cast<uint64_t>(st.st_size);
}

}  // namespace

// ---------------------------------------------------------------------------

TEST_CASE("Store opens new, persists snapshots and reopens", "[cow_store]") {
  TestStore store;
  CHECK(store->block_size() == 64 * 1024);
  CHECK(store->LatestSnapshot() == 0);
  CHECK(Must(store->ListSnapshots()).empty());
  SpaceUsage u = Must(store->Usage());
  CHECK(u.snapshots == 0);
  CHECK(u.stored_blocks == 0);
  CHECK(u.block_size == 64 * 1024);
  struct stat st;
  CHECK(stat((store.path() + "/catalog.mdb").c_str(), &st) == 0);
  CHECK(stat(store.PackPath(1).c_str(), &st) == 0);

  Guid guid = *Guid::Parse("0123abcd-4567-89ef-0123-456789abcdef");
  SnapshotInfo a = Must(store->CreateSnapshot("first", guid, 1'000'000'123));
  SnapshotInfo b = Must(store->CreateSnapshot("second", std::nullopt, 2'000'000'456));
  CHECK(a.id == 1);
  CHECK(b.id == 2);
  CHECK(a.guid == guid);
  CHECK_FALSE(b.guid == guid);
  CHECK(store->LatestSnapshot() == 2);

  // A block size in the options applies only to a new store.
  StoreOptions other;
  other.block_size = 4096;
  store.Reopen(other);
  CHECK(store->block_size() == 64 * 1024);
  CHECK(store->LatestSnapshot() == 2);
  std::vector<SnapshotInfo> all = Must(store->ListSnapshots());
  REQUIRE(all.size() == 2);
  CHECK(all[0].id == 1);
  CHECK(all[0].name == "first");
  CHECK(all[0].guid == guid);
  CHECK(all[0].created_ns == 1'000'000'123);
  CHECK(all[0].intact);
  CHECK(all[0].damage.empty());
  CHECK(all[1].id == 2);
  CHECK(all[1].name == "second");
  CHECK(all[1].guid == b.guid);
  CHECK(all[1].created_ns == 2'000'000'456);
  CHECK(Must(store->Usage()).snapshots == 2);

  // Ids are never reused, also after deleting the newest snapshot.
  REQUIRE_OK(store->DeleteSnapshot(2));
  CHECK(store->LatestSnapshot() == 1);
  CHECK(Snap(*store, "third") == 3);
  store.Reopen();
  CHECK(store->LatestSnapshot() == 3);
  CHECK(Snap(*store, "fourth") == 4);
  REQUIRE_OK(store->DeleteSnapshot(1));
  REQUIRE_OK(store->DeleteSnapshot(3));
  REQUIRE_OK(store->DeleteSnapshot(4));
  CHECK(store->LatestSnapshot() == 0);
  store.Reopen();
  CHECK(store->LatestSnapshot() == 0);
  CHECK(Snap(*store, "fifth") == 5);
}

TEST_CASE("Store honours the block size of a new store and rejects bad ones", "[cow_store]") {
  TempDir tmp;
  for (uint32_t bad : {1000u, 2048u, 3u * 4096u, 32u << 20}) {
    std::string path = tmp.Sub("bad" + std::to_string(bad));
    REQUIRE(mkdir(path.c_str(), 0700) == 0);
    int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    StoreOptions options;
    options.block_size = bad;
    auto store = Store::Open(fd, path, options);
    CHECK_FALSE(store.ok());
    CHECK(store.status().error() == EINVAL);
    close(fd);
  }
  std::string path = tmp.Sub("small");
  REQUIRE(mkdir(path.c_str(), 0700) == 0);
  int fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  StoreOptions options;
  options.block_size = 4096;
  {
    std::unique_ptr<Store> store = Must(Store::Open(fd, path, options));
    CHECK(store->block_size() == 4096);
    SnapId s = Snap(*store, "s");
    Preservation p;
    p.AddBlock(1, 0, Pattern(1, 4097));
    Status st = store->Preserve(s, p);
    CHECK(st.error() == EINVAL);
  }
  {
    std::unique_ptr<Store> store = Must(Store::Open(fd, path, StoreOptions{}));
    CHECK(store->block_size() == 4096);
  }
  close(fd);
}

TEST_CASE("Store snapshot names, lookup keys and GUIDs", "[cow_store]") {
  TestStore store;
  Guid g1 = Guid::Random();
  Guid g2 = Guid::Random();
  REQUIRE_FALSE(g1 == g2);
  SnapshotInfo daily = Must(store->CreateSnapshot("daily", g1, 10));
  SnapshotInfo weekly = Must(store->CreateSnapshot("weekly", g2, 20));
  const std::string def = DefaultSnapshotName(1'700'000'000'123'456'789);
  SnapshotInfo dflt = Must(store->CreateSnapshot(def, std::nullopt, 1'700'000'000'123'456'789));

  CHECK(Must(store->FindSnapshot("daily")).id == daily.id);
  CHECK(Must(store->FindSnapshot("weekly")).id == weekly.id);
  CHECK(Must(store->FindSnapshot(def)).id == dflt.id);
  CHECK(Must(store->FindSnapshot("#1")).name == "daily");
  CHECK(Must(store->FindSnapshot("1")).name == "daily");
  CHECK(Must(store->FindSnapshot("#2")).name == "weekly");
  CHECK(Must(store->FindSnapshot("2")).name == "weekly");
  CHECK(Must(store->FindSnapshot(g1.ToString())).id == daily.id);
  std::string upper = g2.ToString();
  std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
  CHECK(Must(store->FindSnapshot("{" + upper + "}")).id == weekly.id);
  CHECK(Must(store->GetSnapshot(2)).name == "weekly");

  for (const std::string& missing :
       {std::string("nope"), std::string("#9"), std::string("9"), std::string("#"),
        std::string("#x"), Guid::Random().ToString()}) {
    auto r = store->FindSnapshot(missing);
    INFO(missing);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().error() == ENOENT);
  }
  CHECK(store->GetSnapshot(9).status().error() == ENOENT);
  CHECK(store->DeleteSnapshot(9).status().error() == ENOENT);

  auto dup = store->CreateSnapshot("daily", std::nullopt, 30);
  REQUIRE_FALSE(dup.ok());
  CHECK(dup.status().error() == EEXIST);
  for (const std::string& bad :
       {std::string(""), std::string("a/b"), std::string("."), std::string(".."), std::string("/"),
        std::string(256, 'x'), std::string("a\0b", 3)}) {
    INFO("name '" << bad << "'");
    CHECK_FALSE(ValidSnapshotName(bad));
    auto r = store->CreateSnapshot(bad, std::nullopt, 30);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().error() == EINVAL);
  }
  CHECK(ValidSnapshotName(std::string(255, 'x')));
  CHECK(ValidSnapshotName("..."));
  CHECK(ValidSnapshotName(".hidden"));
  CHECK(Must(store->ListSnapshots()).size() == 3);
  CHECK(store->LatestSnapshot() == 3);

  // A deleted snapshot's name is free again; its id is not.
  REQUIRE_OK(store->DeleteSnapshot(daily.id));
  CHECK(store->FindSnapshot("daily").status().error() == ENOENT);
  CHECK(store->FindSnapshot(g1.ToString()).status().error() == ENOENT);
  SnapshotInfo again = Must(store->CreateSnapshot("daily", std::nullopt, 40));
  CHECK(again.id == 4);
  CHECK(Must(store->FindSnapshot("daily")).id == 4);
}

TEST_CASE("Store DefaultSnapshotName and Guid text forms", "[cow_store]") {
  CHECK(DefaultSnapshotName(0) == "@GMT-1970.01.01-00.00.00");
  CHECK(DefaultSnapshotName(1'700'000'000'999'999'999) == "@GMT-2023.11.14-22.13.20");
  CHECK(DefaultSnapshotName(951'782'400'000'000'000) == "@GMT-2000.02.29-00.00.00");
  CHECK(ValidSnapshotName(DefaultSnapshotName(0)));

  const std::string text = "01234567-89ab-cdef-0123-456789abcdef";
  std::optional<Guid> g = Guid::Parse(text);
  REQUIRE(g.has_value());
  CHECK(g->bytes[0] == 0x01);
  CHECK(g->bytes[3] == 0x67);
  CHECK(g->bytes[4] == 0x89);
  CHECK(g->bytes[15] == 0xef);
  CHECK(g->ToString() == text);
  std::optional<Guid> braced = Guid::Parse("{01234567-89AB-CDEF-0123-456789ABCDEF}");
  REQUIRE(braced.has_value());
  CHECK(*braced == *g);
  CHECK(braced->ToString() == text);

  for (int i = 0; i < 8; ++i) {
    Guid r = Guid::Random();
    CHECK((r.bytes[6] >> 4) == 4);       // Version 4.
    CHECK((r.bytes[8] & 0xc0) == 0x80);  // RFC 4122 variant.
    std::optional<Guid> back = Guid::Parse(r.ToString());
    REQUIRE(back.has_value());
    CHECK(*back == r);
  }

  for (const char* garbage :
       {"", "not-a-guid", "{}", "01234567-89ab-cdef-0123-456789abcde",
        "01234567-89ab-cdef-0123-456789abcdef0", "0123456789ab-cdef-0123-456789abcdef-",
        "01234567-89ab-cdef-0123_456789abcdef", "0123456g-89ab-cdef-0123-456789abcdef",
        "{01234567-89ab-cdef-0123-456789abcdef", "01234567-89ab-cdef-0123-456789abcdef}",
        "(01234567-89ab-cdef-0123-456789abcdef)", " 01234567-89ab-cdef-0123-456789abcdef"}) {
    INFO("'" << garbage << "'");
    CHECK_FALSE(Guid::Parse(garbage).has_value());
  }
}

TEST_CASE("Store resolves data blocks to the first record at or after the snapshot",
          "[cow_store]") {
  TestStore store;
  REQUIRE(Snap(*store, "s1") == 1);
  REQUIRE(Snap(*store, "s2") == 2);
  REQUIRE(Snap(*store, "s3") == 3);
  const std::string a = Pattern(1), b = Pattern(2), c = Pattern(3);
  PreserveBlock(*store, 1, 10, 0, a);
  PreserveBlock(*store, 3, 10, 0, b);
  PreserveBlock(*store, 2, 10, 5, c);  // Another block of the same file.
  PreserveBlock(*store, 1, 11, 0, c);  // Same block number, next inode.

  BlockLocation l1 = Locate(*store, 10, 0, 1);
  CHECK(l1.kind == Kind::kStored);
  CHECK(l1.length == kBs);
  CHECK(l1.offset % 4096 == 0);
  CHECK((ReadStored(*store, l1) == a));
  BlockLocation l2 = Locate(*store, 10, 0, 2);
  BlockLocation l3 = Locate(*store, 10, 0, 3);
  CHECK((ReadStored(*store, l2) == b));
  CHECK((ReadStored(*store, l3) == b));
  CHECK(l2.pack == l3.pack);
  CHECK(l2.offset == l3.offset);
  CHECK(l1.offset != l2.offset);
  CHECK(Locate(*store, 10, 0, 4).kind == Kind::kLive);

  // Block 5 was first preserved at epoch 2: snapshots 1 and 2 see it.
  CHECK((StoredContent(*store, 10, 5, 1) == c));
  CHECK((StoredContent(*store, 10, 5, 2) == c));
  CHECK(Locate(*store, 10, 5, 3).kind == Kind::kLive);
  // Neighbouring keys do not leak into each other.
  CHECK(Locate(*store, 10, 1, 1).kind == Kind::kLive);
  CHECK(Locate(*store, 10, 4, 1).kind == Kind::kLive);
  CHECK(Locate(*store, 10, 6, 1).kind == Kind::kLive);
  CHECK(Locate(*store, 9, 0, 1).kind == Kind::kLive);
  CHECK((StoredContent(*store, 11, 0, 1) == c));
  CHECK(Locate(*store, 11, 0, 2).kind == Kind::kLive);
  CHECK(Locate(*store, 12, 0, 1).kind == Kind::kLive);

  // A view is a consistent snapshot of the catalogue.
  std::unique_ptr<ReadView> old_view = Must(store->BeginRead());
  PreserveBlock(*store, 3, 12, 0, a);
  CHECK(Must(old_view->FindBlock(12, 0, 3)).kind == Kind::kLive);
  old_view.reset();
  CHECK((StoredContent(*store, 12, 0, 3) == a));

  // Everything survives a reopen.
  store.Reopen();
  CHECK((StoredContent(*store, 10, 0, 1) == a));
  CHECK((StoredContent(*store, 10, 0, 2) == b));
  CHECK((StoredContent(*store, 12, 0, 3) == a));
  CHECK(Locate(*store, 10, 0, 4).kind == Kind::kLive);
}

TEST_CASE("Store resolves inode records and round-trips every field", "[cow_store]") {
  TestStore store;
  for (const char* n : {"s1", "s2", "s3"}) Snap(*store, n);
  InodeMeta m1;
  m1.mode = S_IFREG | 0640;
  m1.uid = 1000;
  m1.gid = 100;
  m1.nlink = 2;
  m1.size = 70000;
  m1.blocks = 144;
  m1.rdev = 0;
  m1.atime = {1, 2};
  m1.mtime = {1'700'000'000, 999'999'999};
  m1.ctime = {-5, 7};
  m1.xattrs = {{"user.b", "1"},
               {"security.selinux", std::string("sys\0tem_u", 9)},
               {"user.a", ""},
               {"trusted.big", Pattern(7, 5000)}};
  InodeMeta m2;
  m2.mode = S_IFLNK | 0777;
  m2.uid = 0;
  m2.gid = 0;
  m2.nlink = 1;
  m2.size = 21;
  m2.atime = {3, 4};
  m2.mtime = {5, 6};
  m2.ctime = {7, 8};
  m2.symlink = "../target with spaces";
  InodeMeta dev;
  dev.mode = S_IFCHR | 0600;
  dev.rdev = (uint64_t{0x1234} << 32) | 0x5678;
  {
    Preservation p;
    p.AddInode(10, m1);
    p.AddInode(11, dev);
    REQUIRE_OK(store->Preserve(1, p));
  }
  {
    Preservation p;
    p.AddInode(10, m2);
    REQUIRE_OK(store->Preserve(3, p));
  }

  for (int round = 0; round < 2; ++round) {
    std::unique_ptr<ReadView> view = Must(store->BeginRead());
    std::optional<InodeMeta> r1 = Must(view->FindInode(10, 1));
    REQUIRE(r1.has_value());
    CheckSameMeta(*r1, m1);
    std::optional<InodeMeta> r2 = Must(view->FindInode(10, 2));
    REQUIRE(r2.has_value());
    CheckSameMeta(*r2, m2);
    std::optional<InodeMeta> r3 = Must(view->FindInode(10, 3));
    REQUIRE(r3.has_value());
    CheckSameMeta(*r3, m2);
    CHECK_FALSE(Must(view->FindInode(10, 4)).has_value());
    std::optional<InodeMeta> d = Must(view->FindInode(11, 1));
    REQUIRE(d.has_value());
    CheckSameMeta(*d, dev);
    CHECK_FALSE(Must(view->FindInode(11, 2)).has_value());
    CHECK_FALSE(Must(view->FindInode(9, 1)).has_value());
    CHECK_FALSE(Must(view->FindInode(12, 1)).has_value());
    view.reset();
    store.Reopen();
  }
}

TEST_CASE("Store resolves listings, looks up and pages through entries", "[cow_store]") {
  TestStore store;
  for (const char* n : {"s1", "s2", "s3"}) Snap(*store, n);
  const std::string handle(std::string("\x01\x02\0\x03", 4));
  {
    Preservation p;
    // Given out of order: listings are kept in name order.
    p.AddListing(20, {{"c", 103, DT_REG, "hc"},
                      {"a", 101, DT_DIR, handle},
                      {"b", 102, DT_LNK, ""},
                      {"b2", 104, DT_REG, "hb2"}});
    p.AddListing(21, {{"zz", 201, DT_REG, "h"}});
    p.AddListing(22, {});
    REQUIRE_OK(store->Preserve(1, p));
  }
  {
    Preservation p;
    p.AddListing(20, {{"y", 302, DT_REG, "hy"}, {"", 999, DT_REG, ""}, {"x", 301, DT_REG, "hx"}});
    REQUIRE_OK(store->Preserve(3, p));
  }

  std::unique_ptr<ReadView> view = Must(store->BeginRead());
  CHECK(Must(view->FindListing(20, 1)) == std::optional<SnapId>(1));
  CHECK(Must(view->FindListing(20, 2)) == std::optional<SnapId>(3));
  CHECK(Must(view->FindListing(20, 3)) == std::optional<SnapId>(3));
  CHECK_FALSE(Must(view->FindListing(20, 4)).has_value());
  CHECK(Must(view->FindListing(21, 1)) == std::optional<SnapId>(1));
  CHECK_FALSE(Must(view->FindListing(21, 2)).has_value());
  CHECK(Must(view->FindListing(22, 1)) == std::optional<SnapId>(1));
  CHECK_FALSE(Must(view->FindListing(19, 1)).has_value());
  CHECK_FALSE(Must(view->FindListing(23, 1)).has_value());

  std::optional<DirEntry> a = Must(view->LookupEntry(20, 1, "a"));
  REQUIRE(a.has_value());
  CHECK(a->name == "a");
  CHECK(a->ino == 101);
  CHECK(a->type == DT_DIR);
  CHECK(a->handle == handle);
  std::optional<DirEntry> b = Must(view->LookupEntry(20, 1, "b"));
  REQUIRE(b.has_value());
  CHECK(b->ino == 102);
  CHECK(b->type == DT_LNK);
  CHECK(b->handle.empty());
  CHECK_FALSE(Must(view->LookupEntry(20, 1, "x")).has_value());
  CHECK_FALSE(Must(view->LookupEntry(20, 1, "zz")).has_value());
  CHECK_FALSE(Must(view->LookupEntry(20, 3, "a")).has_value());
  std::optional<DirEntry> x = Must(view->LookupEntry(20, 3, "x"));
  REQUIRE(x.has_value());
  CHECK(x->ino == 301);
  CHECK(x->handle == "hx");

  using Names_ = std::vector<std::string>;
  CHECK(Names(*view, 20, 1, "") == Names_{"a", "b", "b2", "c"});
  CHECK(Names(*view, 20, 1, "a") == Names_{"b", "b2", "c"});
  CHECK(Names(*view, 20, 1, "b") == Names_{"b2", "c"});
  CHECK(Names(*view, 20, 1, "b1") == Names_{"b2", "c"});  // `after` need not exist.
  CHECK(Names(*view, 20, 1, "c").empty());
  CHECK(Names(*view, 20, 1, "zzz").empty());
  CHECK(Names(*view, 20, 3, "") == Names_{"x", "y"});  // The empty name is not an entry.
  CHECK(Names(*view, 21, 1, "") == Names_{"zz"});
  CHECK(Names(*view, 22, 1, "").empty());
  CHECK(Names(*view, 20, 2, "").empty());            // No listing at exactly epoch 2.
  CHECK(Names(*view, 20, 1, "", 1) == Names_{"a"});  // `fn` stops the walk.

  // Paging two at a time visits every entry once.
  Names_ all;
  std::string after;
  for (int pages = 0; pages < 10; ++pages) {
    Names_ page = Names(*view, 20, 1, after, 2);
    if (page.empty()) break;
    all.insert(all.end(), page.begin(), page.end());
    after = page.back();
  }
  CHECK(all == Names_{"a", "b", "b2", "c"});

  // The entries are full copies.
  std::vector<DirEntry> entries;
  REQUIRE_OK(view->ListEntries(20, 1, "", [&](const DirEntry& de) {
    entries.push_back(de);
    return true;
  }));
  REQUIRE(entries.size() == 4);
  CHECK(entries[0].handle == handle);
  CHECK(entries[3].ino == 103);
  CHECK(entries[3].type == DT_REG);
  CHECK(entries[3].handle == "hc");
}

TEST_CASE("Store does not store zero blocks and keeps short tail blocks", "[cow_store]") {
  TestStore store;
  const SnapId s = Snap(*store, "s");
  const uint64_t packs_before = Must(store->Usage()).pack_bytes;

  PreserveBlock(*store, s, 10, 0, std::string(kBs, '\0'));
  BlockLocation z = Locate(*store, 10, 0, s);
  CHECK(z.kind == Kind::kZero);
  CHECK(z.length == kBs);
  SpaceUsage u = Must(store->Usage());
  CHECK(u.stored_blocks == 0);
  CHECK(u.stored_bytes == 0);
  CHECK(u.referenced_bytes == 0);
  CHECK(u.zero_bytes == kBs);
  CHECK(u.pack_bytes == packs_before);

  PreserveBlock(*store, s, 10, 1, std::string(100, '\0'));  // A zero tail.
  BlockLocation zt = Locate(*store, 10, 1, s);
  CHECK(zt.kind == Kind::kZero);
  CHECK(zt.length == 100);
  CHECK(Must(store->Usage()).zero_bytes == kBs + 100);
  CHECK(Must(store->Usage()).stored_blocks == 0);

  // A block with a single non-zero byte at its end is not zero.
  std::string almost(kBs, '\0');
  almost.back() = 1;
  PreserveBlock(*store, s, 11, 0, almost);
  CHECK((StoredContent(*store, 11, 0, s) == almost));

  const std::string tail = Pattern(5, 1000);
  PreserveBlock(*store, s, 12, 3, tail);
  BlockLocation t = Locate(*store, 12, 3, s);
  CHECK(t.kind == Kind::kStored);
  CHECK(t.length == 1000);
  CHECK(t.offset % 4096 == 0);
  CHECK(ReadStored(*store, t) == tail);
  // A block appended after a short one starts on the next 4 KiB boundary.
  const std::string odd = Pattern(6, 4097);
  PreserveBlock(*store, s, 12, 4, odd);
  BlockLocation after = Locate(*store, 12, 4, s);
  CHECK(after.offset == t.offset + 4096);
  CHECK((ReadStored(*store, after) == odd));

  u = Must(store->Usage());
  CHECK(u.stored_blocks == 3);
  CHECK(u.stored_bytes == kBs + 1000 + 4097);
  CHECK(u.referenced_bytes == kBs + 1000 + 4097);
  CHECK(u.zero_bytes == kBs + 100);
  CHECK(u.pack_bytes > packs_before);
  CHECK(u.catalog_bytes > 0);
  store.Reopen();
  CHECK(Locate(*store, 10, 0, s).kind == Kind::kZero);
  CHECK(ReadStored(*store, Locate(*store, 12, 3, s)) == tail);
  CHECK(RunFsck(*store, false).clean());
}

TEST_CASE("Store rejects a bad batch and records nothing of it", "[cow_store]") {
  TestStore store;
  CHECK(Snap(*store, "s") == 1);
  {
    Preservation empty;
    CHECK(store->Preserve(1, empty).ok());
  }
  {
    Preservation p;
    p.AddBlock(10, 0, Pattern(1));
    CHECK(store->Preserve(0, p).error() == EINVAL);
  }
  // The first block is fine, the second too large: nothing is recorded and
  // no pack space is left behind.
  Preservation p;
  p.AddInode(10, InodeMeta{});
  p.AddBlock(10, 0, Pattern(1));
  p.AddBlock(10, 1, Pattern(2));
  p.AddBlock(10, 2, Pattern(3, kBs + 1));
  CHECK(store->Preserve(1, p).error() == EINVAL);
  PreservedState st = Must(store->GetPreservedState(10, 1));
  CHECK_FALSE(st.inode);
  CHECK(st.blocks.empty());
  CHECK(Locate(*store, 10, 0, 1).kind == Kind::kLive);
  CHECK(Must(store->Usage()).stored_blocks == 0);
  FsckReport report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());
}

TEST_CASE("Store shares identical blocks and keeps the first preservation", "[cow_store]") {
  TestStore store;
  const SnapId s1 = Snap(*store, "s1");
  const std::string a = Pattern(1), b = Pattern(2), c = Pattern(3), d = Pattern(4);

  PreserveBlock(*store, s1, 10, 0, a);
  PreserveBlock(*store, s1, 11, 7, a);
  SpaceUsage u = Must(store->Usage());
  CHECK(u.stored_blocks == 1);
  CHECK(u.stored_bytes == kBs);
  CHECK(u.referenced_bytes == 2 * kBs);
  BlockLocation x = Locate(*store, 10, 0, s1);
  BlockLocation y = Locate(*store, 11, 7, s1);
  CHECK(x.pack == y.pack);
  CHECK(x.offset == y.offset);
  CHECK((ReadStored(*store, y) == a));

  // Identical blocks in one batch and at another epoch are shared too.
  const SnapId s2 = Snap(*store, "s2");
  {
    Preservation p;
    p.AddBlock(12, 0, b);
    p.AddBlock(13, 0, b);
    p.AddBlock(14, 0, a);
    REQUIRE_OK(store->Preserve(s2, p));
  }
  u = Must(store->Usage());
  CHECK(u.stored_blocks == 2);
  CHECK(u.stored_bytes == 2 * kBs);
  CHECK(u.referenced_bytes == 5 * kBs);
  CHECK(Locate(*store, 12, 0, s2).offset == Locate(*store, 13, 0, s2).offset);
  CHECK(Locate(*store, 14, 0, s2).offset == x.offset);
  // A prefix of a stored block is different content.
  PreserveBlock(*store, s2, 15, 0, a.substr(0, 1000));
  CHECK(ReadStored(*store, Locate(*store, 15, 0, s2)) == a.substr(0, 1000));
  CHECK(Must(store->Usage()).stored_blocks == 3);

  // First preservation wins: in a later batch and within one batch.
  PreserveBlock(*store, s1, 10, 0, c);
  CHECK((StoredContent(*store, 10, 0, s1) == a));
  {
    Preservation p;
    p.AddBlock(16, 0, c);
    p.AddBlock(16, 0, d);
    REQUIRE_OK(store->Preserve(s2, p));
  }
  CHECK((StoredContent(*store, 16, 0, s2) == c));
  PreserveBlock(*store, s2, 16, 0, std::string(kBs, '\0'));
  CHECK(Locate(*store, 16, 0, s2).kind == Kind::kStored);
  u = Must(store->Usage());
  CHECK(u.stored_blocks == 4);
  CHECK(u.referenced_bytes == 6 * kBs + 1000);
  CHECK(u.zero_bytes == 0);

  InodeMeta first, second;
  first.size = 1;
  second.size = 2;
  {
    Preservation p;
    p.AddInode(20, first);
    p.AddListing(21, {{"one", 1, DT_REG, ""}});
    p.AddKept(22, "first-handle");
    REQUIRE_OK(store->Preserve(s2, p));
  }
  {
    Preservation p;
    p.AddInode(20, second);
    p.AddListing(21, {{"two", 2, DT_REG, ""}});
    p.AddKept(22, "second-handle");
    REQUIRE_OK(store->Preserve(s2, p));
  }
  std::unique_ptr<ReadView> view = Must(store->BeginRead());
  CHECK(Must(view->FindInode(20, s2))->size == 1);
  CHECK(Must(view->LookupEntry(21, s2, "one")).has_value());
  CHECK_FALSE(Must(view->LookupEntry(21, s2, "two")).has_value());
  view.reset();
  auto kept = Must(store->ListKept());
  REQUIRE(kept.size() == 1);
  CHECK(kept[0] == std::pair<Ino, std::string>(22, "first-handle"));

  // The losing copies left no pack space behind.
  FsckReport report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());
  CHECK(report.blocks_checked == 4);
}

TEST_CASE("Store DeleteSnapshot keeps records an older snapshot resolves to", "[cow_store]") {
  TestStore store;
  REQUIRE(Snap(*store, "s1") == 1);
  REQUIRE(Snap(*store, "s2") == 2);
  const std::string a = Pattern(1);
  InodeMeta meta;
  meta.size = 4242;
  {
    Preservation p;
    p.AddBlock(10, 0, a);
    p.AddInode(10, meta);
    p.AddListing(20, {{"f", 10, DT_REG, "h"}});
    REQUIRE_OK(store->Preserve(2, p));
  }
  CHECK(Must(store->Usage()).stored_blocks == 1);
  const uint64_t allocated = store.PackAllocated();
  CHECK(allocated >= kBs);

  // Snapshot 1 resolves to the epoch-2 records: they stay.
  GcResult gc = Must(store->DeleteSnapshot(2));
  CHECK(gc.records_dropped == 0);
  CHECK(gc.blocks_freed == 0);
  CHECK(gc.bytes_freed == 0);
  CHECK(gc.released.empty());
  CHECK(store->LatestSnapshot() == 1);
  CHECK(store->GetSnapshot(2).status().error() == ENOENT);
  CHECK((StoredContent(*store, 10, 0, 1) == a));
  {
    std::unique_ptr<ReadView> view = Must(store->BeginRead());
    CHECK(Must(view->FindInode(10, 1))->size == 4242);
    CHECK(Must(view->FindListing(20, 1)) == std::optional<SnapId>(2));
  }
  SpaceUsage u = Must(store->Usage());
  CHECK(u.stored_blocks == 1);
  CHECK(u.referenced_bytes == kBs);
  CHECK(u.snapshots == 1);
  CHECK(RunFsck(*store, false).clean());

  // Nothing needs them any more.
  gc = Must(store->DeleteSnapshot(1));
  CHECK(gc.records_dropped == 3);
  CHECK(gc.blocks_freed == 1);
  CHECK(gc.bytes_freed == kBs);
  CHECK(store->LatestSnapshot() == 0);
  u = Must(store->Usage());
  CHECK(u.snapshots == 0);
  CHECK(u.stored_blocks == 0);
  CHECK(u.stored_bytes == 0);
  CHECK(u.referenced_bytes == 0);
  CHECK(store.PackAllocated() + kBs <= allocated);  // The hole was punched.
  CHECK(Locate(*store, 10, 0, 1).kind == Kind::kLive);
  {
    std::unique_ptr<ReadView> view = Must(store->BeginRead());
    CHECK_FALSE(Must(view->FindInode(10, 1)).has_value());
    CHECK_FALSE(Must(view->FindListing(20, 1)).has_value());
  }
  PreservedState st = Must(store->GetPreservedState(10, 2));
  CHECK_FALSE(st.inode);
  CHECK(st.blocks.empty());
  CHECK_FALSE(Must(store->GetPreservedState(20, 2)).listing);
  FsckReport report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());
}

TEST_CASE("Store DeleteSnapshot drops records no remaining snapshot resolves to", "[cow_store]") {
  TestStore store;
  REQUIRE(Snap(*store, "s1") == 1);
  const std::string a = Pattern(1), b = Pattern(2);
  {
    Preservation p;
    p.AddBlock(10, 0, a);
    p.AddBlock(10, 1, std::string(kBs, '\0'));
    p.AddBlock(11, 0, b);  // Shared below: freed only with its last record.
    REQUIRE_OK(store->Preserve(1, p));
  }
  REQUIRE(Snap(*store, "s2") == 2);
  PreserveBlock(*store, 2, 12, 0, b);
  SpaceUsage u = Must(store->Usage());
  CHECK(u.stored_blocks == 2);
  CHECK(u.referenced_bytes == 3 * kBs);
  CHECK(u.zero_bytes == kBs);

  // Snapshot 2 resolves to records with epoch >= 2 only.
  GcResult gc = Must(store->DeleteSnapshot(1));
  CHECK(gc.records_dropped == 3);
  CHECK(gc.blocks_freed == 1);
  CHECK(gc.bytes_freed == kBs);
  CHECK(Locate(*store, 10, 0, 2).kind == Kind::kLive);
  CHECK(Locate(*store, 10, 0, 1).kind == Kind::kLive);
  CHECK((StoredContent(*store, 12, 0, 2) == b));
  u = Must(store->Usage());
  CHECK(u.stored_blocks == 1);
  CHECK(u.stored_bytes == kBs);
  CHECK(u.referenced_bytes == kBs);
  CHECK(u.zero_bytes == 0);
  FsckReport report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());
}

TEST_CASE("Store DeleteSnapshot follows record chains across several snapshots", "[cow_store]") {
  TestStore store;
  for (const char* n : {"s1", "s2", "s3", "s4"}) Snap(*store, n);
  const std::string a = Pattern(1), b = Pattern(2), c = Pattern(3);
  // Object X: records at 1 (a) and 3 (b). Object Y: one record at 3 (c).
  PreserveBlock(*store, 1, 10, 0, a);
  PreserveBlock(*store, 3, 10, 0, b);
  PreserveBlock(*store, 3, 11, 0, c);
  CHECK((StoredContent(*store, 10, 0, 2) == b));

  // Deleting 3 (prev 2): X@3 stays for snapshot 2, Y@3 for 1 and 2.
  GcResult gc = Must(store->DeleteSnapshot(3));
  CHECK(gc.records_dropped == 0);
  CHECK((StoredContent(*store, 10, 0, 1) == a));
  CHECK((StoredContent(*store, 10, 0, 2) == b));
  CHECK((StoredContent(*store, 11, 0, 1) == c));
  CHECK(Locate(*store, 10, 0, 4).kind == Kind::kLive);

  // Deleting 2 (prev 1): X@3 was only for 2 (X@1 serves 1); Y@3 serves 1.
  gc = Must(store->DeleteSnapshot(2));
  CHECK(gc.records_dropped == 1);
  CHECK(gc.blocks_freed == 1);
  CHECK((StoredContent(*store, 10, 0, 1) == a));
  CHECK((StoredContent(*store, 11, 0, 1) == c));

  // Deleting 4 (prev 1, nothing recorded at 4) changes nothing.
  gc = Must(store->DeleteSnapshot(4));
  CHECK(gc.records_dropped == 0);
  CHECK(store->LatestSnapshot() == 1);
  CHECK(Must(store->Usage()).stored_blocks == 2);

  gc = Must(store->DeleteSnapshot(1));
  CHECK(gc.records_dropped == 2);
  CHECK(gc.blocks_freed == 2);
  CHECK(gc.bytes_freed == 2 * kBs);
  CHECK(Must(store->Usage()).stored_blocks == 0);
  FsckReport report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());
}

TEST_CASE("Store DeleteSnapshot releases kept files no snapshot needs", "[cow_store]") {
  TestStore store;
  REQUIRE(Snap(*store, "s1") == 1);
  {
    Preservation p;
    p.AddKept(43, "h43");
    REQUIRE_OK(store->Preserve(1, p));
  }
  REQUIRE(Snap(*store, "s2") == 2);
  {
    Preservation p;
    p.AddKept(42, "h42");
    REQUIRE_OK(store->Preserve(2, p));
  }
  REQUIRE(Snap(*store, "s3") == 3);
  using KeptList = std::vector<std::pair<Ino, std::string>>;
  CHECK(Must(store->ListKept()) == KeptList{{42, "h42"}, {43, "h43"}});
  CHECK(Must(store->Usage()).kept_files == 2);
  CHECK(Must(store->GetPreservedState(42, 2)).kept);
  CHECK(Must(store->GetPreservedState(43, 1)).kept);

  // Snapshot 3 came after both files lost their names.
  GcResult gc = Must(store->DeleteSnapshot(3));
  CHECK(gc.released.empty());
  // Snapshot 1 still shows file 42 (it lost its name at epoch 2).
  gc = Must(store->DeleteSnapshot(2));
  CHECK(gc.released.empty());
  CHECK(Must(store->ListKept()).size() == 2);

  gc = Must(store->DeleteSnapshot(1));
  std::sort(gc.released.begin(), gc.released.end());
  CHECK(gc.released == std::vector<Ino>{42, 43});
  CHECK(gc.records_dropped == 2);
  CHECK(Must(store->ListKept()).empty());
  CHECK(Must(store->Usage()).kept_files == 0);
  CHECK_FALSE(Must(store->GetPreservedState(42, 2)).kept);

  // Kept at epoch 1 with snapshot 2 remaining: deleting 1 releases it.
  const SnapId s4 = Snap(*store, "s4");
  {
    Preservation p;
    p.AddKept(44, "h44");
    REQUIRE_OK(store->Preserve(s4, p));
  }
  Snap(*store, "s5");
  gc = Must(store->DeleteSnapshot(s4));
  CHECK(gc.released == std::vector<Ino>{44});
  CHECK(Must(store->ListKept()).empty());
  FsckReport report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());
}

TEST_CASE("Store concurrent Preserve calls all commit", "[cow_store]") {
  TestStore store;
  const SnapId s = Snap(*store, "s");
  constexpr int kThreads = 4;
  constexpr int kCalls = 6;
  constexpr int kPerCall = 2;
  const std::string shared = Pattern(999);
  std::vector<Status> results(kThreads * kCalls);
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int call = 0; call < kCalls; ++call) {
        Preservation p;
        for (int i = 0; i < kPerCall; ++i) {
          const uint64_t block = static_cast<uint64_t>(call * kPerCall + i);
          p.AddBlock(100 + t, block, Pattern(static_cast<uint32_t>(t * 1000 + block)));
        }
        // Every thread also preserves the same content once.
        if (call == kCalls / 2) p.AddBlock(200 + t, 0, shared);
        InodeMeta meta;
        meta.size = static_cast<uint64_t>(t * 100 + call);
        p.AddInode(300 + t * 100 + call, meta);
        results[t * kCalls + call] = store->Preserve(s, p);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (const Status& r : results) {
    INFO(r.ToString());
    CHECK(r.ok());
  }

  std::unique_ptr<ReadView> view = Must(store->BeginRead());
  for (int t = 0; t < kThreads; ++t) {
    for (uint64_t block = 0; block < kCalls * kPerCall; ++block) {
      BlockLocation loc = Must(view->FindBlock(100 + t, block, s));
      INFO("thread " << t << " block " << block);
      REQUIRE(loc.kind == Kind::kStored);
      CHECK((ReadStored(*store, loc) == Pattern(static_cast<uint32_t>(t * 1000 + block))));
    }
    CHECK((ReadStored(*store, Must(view->FindBlock(200 + t, 0, s))) == shared));
    for (int call = 0; call < kCalls; ++call) {
      std::optional<InodeMeta> m = Must(view->FindInode(300 + t * 100 + call, s));
      REQUIRE(m.has_value());
      CHECK(m->size == static_cast<uint64_t>(t * 100 + call));
    }
  }
  view.reset();
  SpaceUsage u = Must(store->Usage());
  CHECK(u.stored_blocks == kThreads * kCalls * kPerCall + 1);
  CHECK(u.referenced_bytes == (kThreads * kCalls * kPerCall + kThreads) * kBs);
  FsckReport report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());
}

TEST_CASE("Store Fsck passes a clean store", "[cow_store]") {
  TestStore store;
  CHECK(RunFsck(*store, false).clean());  // Empty.
  const SnapId s = Snap(*store, "s");
  Preservation p;
  p.AddBlock(10, 0, Pattern(1));
  p.AddBlock(10, 1, Pattern(2, 777));
  p.AddBlock(11, 0, Pattern(1));
  p.AddBlock(11, 1, std::string(kBs, '\0'));
  p.AddInode(10, InodeMeta{});
  p.AddListing(20, {{"a", 10, DT_REG, "h"}, {"b", 11, DT_REG, "h"}});
  p.AddKept(30, "h30");
  REQUIRE_OK(store->Preserve(s, p));
  FsckReport report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());
  CHECK(report.blocks_checked == 2);
  CHECK(report.records_checked >= 4);
  report = RunFsck(*store, true);
  CHECK(report.clean());
  CHECK(report.repairs.empty());
}

TEST_CASE("Store Fsck finds a corrupt block and marks the snapshots using it damaged",
          "[cow_store]") {
  TestStore store;
  REQUIRE(Snap(*store, "s1") == 1);
  REQUIRE(Snap(*store, "s2") == 2);
  const std::string a = Pattern(1), b = Pattern(2);
  PreserveBlock(*store, 2, 10, 0, a);  // Snapshots 1 and 2 resolve to it.
  REQUIRE(Snap(*store, "s3") == 3);
  PreserveBlock(*store, 3, 11, 0, b);  // Snapshots 1 to 3 resolve to it.
  REQUIRE(RunFsck(*store, false).clean());

  BlockLocation loc = Locate(*store, 10, 0, 2);
  REQUIRE(loc.kind == Kind::kStored);
  std::string byte = ReadStored(*store, loc).substr(100, 1);
  byte[0] = static_cast<char>(byte[0] ^ 0x5a);
  OverwriteBytes(store.PackPath(loc.pack), loc.offset + 100, byte);

  {
    FsckReport report = RunFsck(*store, false);
    INFO(Joined(report.problems));
    CHECK_FALSE(report.clean());
    CHECK((Contains(report.problems, "corrupt") || Contains(report.problems, "hash")));
    CHECK(Contains(report.problems, "'s1'"));
    CHECK(Contains(report.problems, "'s2'"));
    CHECK_FALSE(Contains(report.problems, "'s3'"));
    // The corrupt block is still named by its record: no bogus count problem.
    CHECK_FALSE(Contains(report.problems, "reference count"));
    CHECK(report.repairs.empty());
    CHECK(Must(store->GetSnapshot(1)).intact);  // Not without repair.
  }
  {
    FsckReport report = RunFsck(*store, true);
    INFO(Joined(report.repairs));
    CHECK(Contains(report.repairs, "marked snapshot 's1' damaged"));
    CHECK(Contains(report.repairs, "marked snapshot 's2' damaged"));
    CHECK_FALSE(Contains(report.repairs, "'s3'"));
    CHECK_FALSE(Contains(report.repairs, "freed"));
  }
  SnapshotInfo s1 = Must(store->GetSnapshot(1));
  CHECK_FALSE(s1.intact);
  CHECK_FALSE(s1.damage.empty());
  CHECK_FALSE(Must(store->GetSnapshot(2)).intact);
  CHECK(Must(store->GetSnapshot(3)).intact);
  CHECK(Must(store->Usage()).stored_blocks == 2);  // Repair keeps the named block.
  CHECK((StoredContent(*store, 11, 0, 3) == b));
  store.Reopen();
  CHECK_FALSE(Must(store->GetSnapshot(1)).intact);
  CHECK_FALSE(Must(store->FindSnapshot("s2")).intact);
  {
    // The damage stays reported; marking it again is not a repair.
    FsckReport report = RunFsck(*store, true);
    INFO(Joined(report.problems));
    CHECK(Contains(report.problems, "corrupt"));
    CHECK_FALSE(Contains(report.problems, "reference count"));
    CHECK(report.repairs.empty());
  }

  // The same content preserved again is stored anew, never shared with the
  // corrupt copy, and survives deleting the damaged snapshots.
  PreserveBlock(*store, 3, 12, 0, a);
  BlockLocation fresh = Locate(*store, 12, 0, 3);
  CHECK(fresh.offset != loc.offset);
  CHECK((ReadStored(*store, fresh) == a));
  REQUIRE_OK(store->DeleteSnapshot(1));
  REQUIRE_OK(store->DeleteSnapshot(2));
  CHECK(Locate(*store, 10, 0, 3).kind == Kind::kLive);
  CHECK((StoredContent(*store, 12, 0, 3) == a));
  CHECK((StoredContent(*store, 11, 0, 3) == b));
  CHECK(Must(store->Usage()).stored_blocks == 2);
  FsckReport report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());
}

TEST_CASE("Store Fsck finds and frees orphan pack space", "[cow_store]") {
  TestStore store;
  const SnapId s = Snap(*store, "s");
  const std::string a = Pattern(1), tail = Pattern(2, 1000);
  PreserveBlock(*store, s, 10, 0, a);
  PreserveBlock(*store, s, 10, 1, tail);
  store.Close();

  // Non-zero bytes past every block, on a 4 KiB boundary, after a gap.
  const std::string pack = store.PackPath(1);
  const uint64_t orphan_at = AlignUp4k(FileSize(pack)) + 8192;
  OverwriteBytes(pack, orphan_at, std::string(4096, '\x5a'));
  store.Reopen();
  const uint64_t allocated = store.PackAllocated();

  FsckReport report = RunFsck(*store, false);
  {
    INFO(Joined(report.problems));
    CHECK_FALSE(report.clean());
    CHECK(Contains(report.problems, "orphan"));
    CHECK(Contains(report.problems, "4096 bytes"));
  }
  report = RunFsck(*store, true);
  CHECK(Contains(report.repairs, "orphan"));
  report = RunFsck(*store, false);
  {
    INFO(Joined(report.problems));
    CHECK(report.clean());
  }
  CHECK(store.PackAllocated() + 4096 <= allocated);
  CHECK((StoredContent(*store, 10, 0, s) == a));
  CHECK(StoredContent(*store, 10, 1, s) == tail);
  // New blocks still go past the old end of the pack.
  const std::string b = Pattern(3);
  PreserveBlock(*store, s, 11, 0, b);
  CHECK(Locate(*store, 11, 0, s).offset > orphan_at);
  CHECK((StoredContent(*store, 11, 0, s) == b));
  CHECK(RunFsck(*store, false).clean());
}

TEST_CASE("Store GetPreservedState reports records at an epoch or later", "[cow_store]") {
  TestStore store;
  REQUIRE(Snap(*store, "s1") == 1);
  REQUIRE(Snap(*store, "s2") == 2);
  InodeMeta meta;
  meta.size = 12345;
  {
    Preservation p;
    p.AddInode(10, meta);
    p.AddBlock(10, 7, Pattern(1));
    p.AddBlock(10, 2, Pattern(2));
    p.AddBlock(10, 100, std::string(kBs, '\0'));  // Zero records count too.
    p.AddBlock(10, 1ull << 40, Pattern(3, 10));
    p.AddListing(10, {{"e", 11, DT_REG, ""}});
    p.AddKept(10, "h10");
    p.AddBlock(9, 0, Pattern(4));
    p.AddBlock(11, 0, Pattern(5));
    REQUIRE_OK(store->Preserve(2, p));
  }
  {
    Preservation p;
    p.AddBlock(10, 3, Pattern(6));
    p.AddBlock(10, 7, Pattern(7));  // Also at epoch 2: listed once.
    p.AddInode(10, InodeMeta{});
    REQUIRE_OK(store->Preserve(1, p));
  }

  PreservedState st = Must(store->GetPreservedState(10, 2));
  CHECK(st.inode);
  CHECK(st.size == 12345);
  CHECK(st.listing);
  CHECK(st.kept);
  CHECK(st.blocks == std::vector<uint64_t>{2, 7, 100, 1ull << 40});

  // Epoch 1 has its own inode record and sees the later records too.
  st = Must(store->GetPreservedState(10, 1));
  CHECK(st.inode);
  CHECK(st.size == 0);
  CHECK(st.listing);
  CHECK(st.blocks == std::vector<uint64_t>{2, 3, 7, 100, 1ull << 40});

  st = Must(store->GetPreservedState(11, 2));
  CHECK_FALSE(st.inode);
  CHECK_FALSE(st.listing);
  CHECK_FALSE(st.kept);
  CHECK(st.blocks == std::vector<uint64_t>{0});

  st = Must(store->GetPreservedState(12, 1));
  CHECK_FALSE(st.inode);
  CHECK_FALSE(st.listing);
  CHECK_FALSE(st.kept);
  CHECK(st.blocks.empty());
  st = Must(store->GetPreservedState(10, 3));
  CHECK_FALSE(st.inode);
  CHECK_FALSE(st.listing);
  CHECK(st.blocks.empty());

  // After the newest snapshot goes, what it recorded still counts for the
  // new newest one (snapshot 1 resolves to it): nothing is preserved twice.
  REQUIRE_OK(store->DeleteSnapshot(2));
  REQUIRE(store->LatestSnapshot() == 1);
  st = Must(store->GetPreservedState(11, store->LatestSnapshot()));
  CHECK(st.blocks == std::vector<uint64_t>{0});
  st = Must(store->GetPreservedState(10, store->LatestSnapshot()));
  CHECK(st.inode);
  CHECK(st.listing);
  CHECK(st.blocks == std::vector<uint64_t>{2, 3, 7, 100, 1ull << 40});
}

TEST_CASE("Store clone overlays its snapshot and leaves the snapshot's records alone",
          "[cow_store]") {
  TestStore store;
  const SnapId s = Snap(*store, "s");
  PreserveBlock(*store, s, 10, 0, Pattern(1));
  // No clone yet: changes are refused.
  CloneChange refused;
  refused.PutBlock(10, 0, Pattern(2));
  CHECK(store->ApplyClone(s, refused).error() == EROFS);
  REQUIRE_OK(store->CreateClone(s));
  CHECK(store->CreateClone(s).error() == EEXIST);
  CHECK(Must(store->GetSnapshot(s)).clone == CloneState::kWritable);

  const Ino born = Must(store->AllocCloneIno(s));
  CHECK(born > (uint64_t{1} << 32));
  CHECK(Must(store->AllocCloneIno(s)) == born - 1);

  CloneChange c;
  InodeMeta meta;
  meta.mode = S_IFREG | 0640;
  meta.size = 2 * kBs;
  c.PutInode(10, CloneInode{meta, kBs});
  c.PutBlock(10, 0, Pattern(2));                // Overrides the snapshot's block 0.
  c.PutBlock(10, 1, Pattern(2));                // Shared with block 0 (dedup).
  c.PutBlock(born, 0, std::string(100, '\0'));  // Zero: not stored.
  c.PutListing(20, {{"a", 10, DT_REG, "h10"}, {"b", 11, DT_REG, "h11"}});
  c.PutEntry(20, DirEntry{"c", born, DT_REG, ""});
  c.DeleteEntry(20, "b");
  REQUIRE_OK(store->ApplyClone(s, c));
  {
    std::unique_ptr<ReadView> view = Must(store->BeginRead());
    std::optional<CloneInode> ci = Must(view->FindCloneInode(s, 10));
    REQUIRE(ci);
    CHECK(ci->base_limit == kBs);
    CheckSameMeta(ci->meta, meta);
    CHECK_FALSE(Must(view->FindCloneInode(s, 11)));
    std::optional<BlockLocation> b0 = Must(view->FindCloneBlock(s, 10, 0));
    std::optional<BlockLocation> b1 = Must(view->FindCloneBlock(s, 10, 1));
    REQUIRE(b0);
    REQUIRE(b1);
    CHECK(ReadStored(*store, *b0) == Pattern(2));
    CHECK(b1->offset == b0->offset);  // One stored copy.
    std::optional<BlockLocation> z = Must(view->FindCloneBlock(s, born, 0));
    REQUIRE(z);
    CHECK(z->kind == Kind::kZero);
    CHECK(Must(view->HasCloneListing(s, 20)));
    CHECK_FALSE(Must(view->HasCloneListing(s, 21)));
    std::vector<std::string> names;
    REQUIRE_OK(view->ListCloneEntries(s, 20, "", [&](const DirEntry& de) {
      names.push_back(de.name);
      return true;
    }));
    CHECK(names == std::vector<std::string>{"a", "c"});
    std::optional<DirEntry> c_entry = Must(view->LookupCloneEntry(s, 20, "c"));
    REQUIRE(c_entry);
    CHECK(c_entry->ino == born);
  }
  // The snapshot's own record is untouched.
  CHECK(StoredContent(*store, 10, 0, s) == Pattern(1));
  FsckReport report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());

  // Rewriting and dropping blocks moves references; survives a reopen.
  CloneChange c2;
  c2.PutBlock(10, 0, Pattern(3));
  c2.DropBlocks(10, 1);
  REQUIRE_OK(store->ApplyClone(s, c2));
  store.Reopen();
  {
    std::unique_ptr<ReadView> view = Must(store->BeginRead());
    CHECK(ReadStored(*store, *Must(view->FindCloneBlock(s, 10, 0))) == Pattern(3));
    CHECK_FALSE(Must(view->FindCloneBlock(s, 10, 1)));
  }
  report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());

  // Frozen: read-only for good.
  REQUIRE_OK(store->FreezeClone(s, 42));
  REQUIRE_OK(store->FreezeClone(s, 43));  // Idempotent.
  SnapshotInfo info = Must(store->GetSnapshot(s));
  CHECK(info.clone == CloneState::kFrozen);
  CHECK(info.frozen_ns == 42);
  CloneChange late;
  late.DeleteInode(10);
  CHECK(store->ApplyClone(s, late).error() == EROFS);
  CHECK(store->AllocCloneIno(s).status().error() == EROFS);

  // Deleting the snapshot frees the clone's blocks too.
  GcResult gc = Must(store->DeleteSnapshot(s));
  CHECK(gc.blocks_freed == 2);  // Pattern(1) of the snapshot, Pattern(3) of the clone.
  SpaceUsage u = Must(store->Usage());
  CHECK(u.stored_blocks == 0);
  CHECK(u.referenced_bytes == 0);
  report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());
}

TEST_CASE("Store clone DeleteInode drops the object's blocks", "[cow_store]") {
  TestStore store;
  const SnapId s = Snap(*store, "s");
  REQUIRE_OK(store->CreateClone(s));
  CloneChange c;
  c.PutInode(5, CloneInode{InodeMeta{}, 0});
  for (uint64_t b = 0; b < 4; ++b) c.PutBlock(5, b, Pattern(static_cast<uint32_t>(b + 1)));
  REQUIRE_OK(store->ApplyClone(s, c));
  CHECK(Must(store->Usage()).stored_blocks == 4);
  CloneChange d;
  d.DeleteInode(5);
  REQUIRE_OK(store->ApplyClone(s, d));
  CHECK(Must(store->Usage()).stored_blocks == 0);
  std::unique_ptr<ReadView> view = Must(store->BeginRead());
  CHECK_FALSE(Must(view->FindCloneInode(s, 5)));
  CHECK_FALSE(Must(view->FindCloneBlock(s, 5, 0)));
  FsckReport report = RunFsck(*store, false);
  INFO(Joined(report.problems));
  CHECK(report.clean());
}

TEST_CASE("Store keeps a partial snapshot's covered objects, sorted, across a reopen",
          "[cow_store]") {
  TestStore store;
  const std::vector<Ino> covered = {30, 2, 17, 2};
  SnapshotInfo made = Must(store->CreateSnapshot("part", std::nullopt, 5, &covered));
  CHECK(made.partial);
  CHECK(made.covered == std::vector<Ino>{2, 17, 30});
  Snap(*store, "whole");
  store.Reopen();
  SnapshotInfo part = Must(store->FindSnapshot("part"));
  CHECK(part.partial);
  CHECK(part.covered == std::vector<Ino>{2, 17, 30});
  SnapshotInfo whole = Must(store->FindSnapshot("whole"));
  CHECK_FALSE(whole.partial);
  CHECK(whole.covered.empty());
}
