// Integration tests of flush-behind (fs/src/flush_behind.h): real mounts in
// private temp dirs.
#include "flush_behind.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

using vssfs::testing::ScopedMount;

namespace {

using Volume = vssfs::testing::VolumeDirs;

constexpr size_t kMiB = 1 << 20;
constexpr const char* kOff = "flush-behind off";

// The dirty-page level at which the kernel starts background writeback on
// its own (vm.dirty_background_bytes, else the ratio of available memory).
uint64_t BackgroundThreshold() {
  auto read_number = [](const char* path) {
    std::ifstream in(path);
    uint64_t v = 0;
    in >> v;
    return v;
  };
  if (uint64_t bytes = read_number("/proc/sys/vm/dirty_background_bytes"); bytes > 0) return bytes;
  const uint64_t ratio = read_number("/proc/sys/vm/dirty_background_ratio");
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024 / 100 * ratio;
  }
  return 0;
}

// Bytes of `path` allocated on the backing filesystem.
uint64_t Allocated(const std::string& path) {
  struct stat st;
  REQUIRE(stat(path.c_str(), &st) == 0);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

// 1 MiB block number `i` of a stream: its own byte value.
std::string StreamBlock(size_t i) { return std::string(kMiB, static_cast<char>('a' + i % 26)); }

// Writes `mib` MiB to `path` as a stream; returns the open descriptor.
int WriteStream(const std::string& path, size_t mib) {
  const int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  for (size_t i = 0; i < mib; ++i) {
    const std::string block = StreamBlock(i);
    REQUIRE(write(fd, block.data(), block.size()) == static_cast<ssize_t>(block.size()));
  }
  return fd;
}

// Waits up to `limit` for `path` to have at least `bytes` allocated;
// returns what it has at the end.
uint64_t WaitAllocated(const std::string& path, uint64_t bytes, std::chrono::milliseconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  uint64_t have = Allocated(path);
  while (have < bytes && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    have = Allocated(path);
  }
  return have;
}

bool Off(const ScopedMount& m, const std::string& mnt) {
  // Answered once the daemon serves requests, after it decided.
  struct stat st;
  REQUIRE(stat(mnt.c_str(), &st) == 0);
  if (m.Log().find(kOff) == std::string::npos) return false;
  WARN("flush-behind is not available here:\n" << m.Log());
  return true;
}

// What the helper logs (at debug level) when it starts writeback of `ino`.
std::string WritingBack(ino_t ino) {
  return "flush-behind: writing back node " + std::to_string(ino) + ",";
}

ino_t Ino(int fd) {
  struct stat st;
  REQUIRE(fstat(fd, &st) == 0);
  return st.st_ino;
}

}  // namespace

// Writes a 256 MiB stream to `name` in `v`'s mount `m` and checks that it
// reaches the backing file before it is closed, and lands intact.
void CheckStreamFlushedBehind(const Volume& v, ScopedMount& m, const std::string& name) {
  constexpr size_t kStream = 256;
  const std::string backing = v.backing + "/" + name;
  const int fd = WriteStream(v.mnt + "/" + name, kStream);
  // No fsync, no close: flush-behind sends the data on its way.
  const uint64_t have = WaitAllocated(backing, kStream * kMiB * 3 / 4, std::chrono::seconds(3));
  INFO("allocated in the backing file before close: " << (have >> 20) << " MiB");
  CHECK(have >= kStream * kMiB * 3 / 4);
  CHECK(m.Log().find(WritingBack(Ino(fd))) != std::string::npos);
  REQUIRE(close(fd) == 0);
  // Every block landed where it belongs (closing wrote back the rest).
  std::ifstream in(backing, std::ios::binary);
  std::string block(kMiB, '\0');
  for (size_t i = 0; i < kStream; ++i) {
    REQUIRE(in.read(block.data(), static_cast<std::streamsize>(block.size())));
    REQUIRE(block == StreamBlock(i));
  }
}

// Whether background writeback would start on its own before 1 GiB is
// dirty, which would hide what flush-behind does.
bool ThresholdTooLow() {
  const uint64_t threshold = BackgroundThreshold();
  if (threshold >= 1024 * kMiB) return false;
  WARN("the background writeback threshold (" << (threshold >> 20)
                                              << " MiB) is too low here to tell");
  return true;
}

TEST_CASE("flush-behind: a stream reaches the backing file while it is written", "[fs][flush]") {
  if (ThresholdTooLow()) return;
  Volume v;
  ScopedMount m(v.backing, v.mnt, {"--log-level=debug"});
  if (Off(m, v.mnt)) return;
  CheckStreamFlushedBehind(v, m, "stream");
  REQUIRE(m.Unmount() == 0);
}

TEST_CASE("flush-behind: still works after many short-lived files", "[fs][flush]") {
  // Files opened for writing and closed at once (a create storm) cancel
  // out before the helper hears of them; this must not leave the thread
  // that forwards messages asleep for good.
  if (ThresholdTooLow()) return;
  Volume v;
  ScopedMount m(v.backing, v.mnt, {"--log-level=debug"});
  if (Off(m, v.mnt)) return;
  REQUIRE(mkdir((v.mnt + "/many").c_str(), 0755) == 0);
  for (int i = 0; i < 3000; ++i) {
    const std::string path = v.mnt + "/many/f" + std::to_string(i);
    const int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(close(fd) == 0);
  }
  CheckStreamFlushedBehind(v, m, "stream");
  REQUIRE(m.Unmount() == 0);
}

// Lays out a `file`-byte file as a stream and waits for it to be written
// back, then writes `times` the file's size in `block`-byte writes at random
// places and checks that flush-behind started no writeback of the file
// meanwhile (the kernel may still write some back on its own: that is not
// what this checks). The seed is printed; VSSFS_FLUSH_SEED replays one.
void CheckRandomWritesStayCached(size_t file, size_t block, size_t times) {
  Volume v;
  ScopedMount m(v.backing, v.mnt, {"--log-level=debug"});
  if (Off(m, v.mnt)) return;
  const int fd = WriteStream(v.mnt + "/random", file / kMiB);
  REQUIRE(fsync(fd) == 0);
  // Flush-behind took that for a stream; let it finish its look.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const std::string::size_type streamed = m.Log().size();
  const char* env = std::getenv("VSSFS_FLUSH_SEED");
  const uint64_t seed =
      env != nullptr && *env != '\0' ? std::strtoull(env, nullptr, 10) : std::random_device{}();
  INFO("seed " << seed << " (VSSFS_FLUSH_SEED replays it)");
  std::mt19937_64 rng(seed);
  const std::string data(block, 'r');
  for (size_t i = 0; i < times * file / block; ++i) {
    const off_t off = static_cast<off_t>(rng() % (file / block) * block);
    REQUIRE(pwrite(fd, data.data(), data.size(), off) == static_cast<ssize_t>(data.size()));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const std::string log = m.Log();
  INFO("daemon log since the random writes:\n" << log.substr(streamed));
  CHECK(log.find(WritingBack(Ino(fd)), streamed) == std::string::npos);
  REQUIRE(close(fd) == 0);
  REQUIRE(m.Unmount() == 0);
}

TEST_CASE("flush-behind: pages written at random stay in the page cache", "[fs][flush]") {
  // Twice the file's size in 4 KiB writes: every 4 MiB chunk gets dirty,
  // none entirely (that takes about seven times its size).
  CheckRandomWritesStayCached(128 * kMiB, 4096, 2);
}

TEST_CASE("flush-behind: fast random writes are not taken for a stream", "[fs][flush]") {
  // 64 KiB writes as fast as the page cache takes them, eight times the
  // file's size, fill whole 4 MiB chunks within a second (a database, fio's
  // random-write jobs); they are seen partly dirty all over the file at
  // once, which a stream never is.
  CheckRandomWritesStayCached(256 * kMiB, 64 << 10, 8);
}

TEST_CASE("flush-behind: the mount can be unmounted as soon as the writer is done", "[fs][flush]") {
  Volume v;
  for (int round = 0; round < 5; ++round) {
    ScopedMount m(v.backing, v.mnt);
    if (Off(m, v.mnt)) return;
    const int fd = WriteStream(v.mnt + "/stream", 64);
    // Give the helper time to open the file and start writeback.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    REQUIRE(close(fd) == 0);
    // Not lazily: a descriptor held on the mount would make this EBUSY.
    INFO("round " << round);
    REQUIRE(umount2(v.mnt.c_str(), 0) == 0);
    // The daemon ends by itself once the helper lets go of its clone.
    const auto start = std::chrono::steady_clock::now();
    const int status = m.Unmount();
    const auto took = std::chrono::steady_clock::now() - start;
    INFO("daemon log:\n" << m.Log());
    CHECK(took < std::chrono::seconds(3));
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  SECTION("and the daemon stops on SIGTERM while a writer holds a file") {
    ScopedMount m(v.backing, v.mnt);
    const int fd = WriteStream(v.mnt + "/held", 64);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    REQUIRE(kill(m.pid(), SIGTERM) == 0);
    const auto start = std::chrono::steady_clock::now();
    const int status = m.Unmount();
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
    CHECK(WIFEXITED(status));
    close(fd);
  }
}

namespace {

// The FUSE file handle of `path`: node id and generation.
struct NodeHandle {
  uint64_t nodeid = 0;
  uint32_t generation = 0;
};

NodeHandle HandleOf(const std::string& path) {
  struct {
    file_handle h;
    uint32_t words[8];
  } fh{};
  fh.h.handle_bytes = sizeof fh.words;
  int mount_id = 0;
  REQUIRE(name_to_handle_at(AT_FDCWD, path.c_str(), &fh.h, &mount_id, 0) == 0);
  REQUIRE(fh.h.handle_type == 0x81);  // FILEID_INO64_GEN
  REQUIRE(fh.h.handle_bytes == 12);
  return NodeHandle{(uint64_t{fh.words[0]} << 32) | fh.words[1], fh.words[2]};
}

}  // namespace

TEST_CASE("flush-behind: a file handle opens its own regular file and nothing else",
          "[fs][flush]") {
  using vssfs::cow_store::UniqueFd;
  using vssfs::fs::OpenRegularByHandle;
  Volume v;
  ScopedMount m(v.backing, v.mnt);
  const std::string file = v.mnt + "/file";
  const std::string fifo = v.mnt + "/fifo";
  const std::string dir = v.mnt + "/dir";
  {
    UniqueFd fd(open(file.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
    REQUIRE(fd);
  }
  REQUIRE(mkfifo(fifo.c_str(), 0644) == 0);
  REQUIRE(mkdir(dir.c_str(), 0755) == 0);
  UniqueFd tree(open(v.mnt.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(tree);
  const NodeHandle f = HandleOf(file), p = HandleOf(fifo), d = HandleOf(dir);
  // vssfs gives every node its own generation.
  CHECK(f.generation != 0);
  CHECK(f.generation != p.generation);
  CHECK(p.generation != d.generation);

  UniqueFd opened;
  REQUIRE(OpenRegularByHandle(tree.get(), f.nodeid, f.generation, &opened) == 0);
  struct stat st;
  REQUIRE(fstat(opened.get(), &st) == 0);
  CHECK(S_ISREG(st.st_mode));
  CHECK(st.st_ino == f.nodeid);
  CHECK((fcntl(opened.get(), F_GETFL) & O_ACCMODE) == O_RDONLY);

  // The same node id with another generation: a newer file under a reused
  // inode number, which the watch was not for.
  UniqueFd other;
  CHECK(OpenRegularByHandle(tree.get(), f.nodeid, f.generation + 1, &other) == -ESTALE);
  CHECK(!other);
  CHECK(OpenRegularByHandle(tree.get(), d.nodeid, d.generation, &other) == -ESTALE);
  CHECK(!other);

  // A FIFO is refused without being opened: a reader opening it would block
  // until some writer came, and meanwhile let a writer's non-blocking open
  // succeed (the helper used to do that when a node id it was told to watch
  // had become a FIFO's).
  auto refused = std::async(std::launch::async, [&] {
    UniqueFd fd;
    return OpenRegularByHandle(tree.get(), p.nodeid, p.generation, &fd);
  });
  if (refused.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
    UniqueFd writer(open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));  // Unblock it.
    FAIL("opening the FIFO's handle blocked");
  }
  CHECK(refused.get() == -ESTALE);
  errno = 0;
  UniqueFd writer(open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
  CHECK(!writer);
  CHECK(errno == ENXIO);  // No reader was left behind.
}

namespace {

struct DirCloser {
  void operator()(DIR* d) const { closedir(d); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;

// Whether a child process of `daemon` (the flush-behind helper) holds a
// descriptor of the inode numbered `ino` (other than an O_PATH one).
bool HelperHolds(pid_t daemon, ino_t ino) {
  std::ifstream children("/proc/" + std::to_string(daemon) + "/task/" + std::to_string(daemon) +
                         "/children");
  pid_t child = 0;
  while (children >> child) {
    const std::string fds = "/proc/" + std::to_string(child) + "/fdinfo";
    DirPtr dir(opendir(fds.c_str()));
    if (!dir) continue;
    while (dirent* d = readdir(dir.get())) {
      std::ifstream info(fds + "/" + d->d_name);
      std::string key, value;
      bool path_only = false, match = false;
      while (info >> key >> value) {
        if (key == "flags:") path_only = (std::stoul(value, nullptr, 8) & O_PATH) != 0;
        if (key == "ino:") match = value == std::to_string(ino);
      }
      if (match && !path_only) return true;
    }
  }
  return false;
}

}  // namespace

TEST_CASE("flush-behind: the helper's looks leave a file's access time alone", "[fs][flush]") {
  Volume v;
  ScopedMount m(v.backing, v.mnt);
  if (Off(m, v.mnt)) return;
  const int fd = WriteStream(v.mnt + "/watched", 16);
  struct stat before;
  REQUIRE(stat((v.backing + "/watched").c_str(), &before) == 0);
  // Created now: its access time is not after its modification time, so
  // under relatime any read-open would count as an access.
  const ino_t ino = Ino(fd);
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  while (!HelperHolds(m.pid(), ino) && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(HelperHolds(m.pid(), ino));
  REQUIRE(close(fd) == 0);
  struct stat after;
  REQUIRE(stat((v.backing + "/watched").c_str(), &after) == 0);
  CHECK(after.st_atim.tv_sec == before.st_atim.tv_sec);
  CHECK(after.st_atim.tv_nsec == before.st_atim.tv_nsec);
}
