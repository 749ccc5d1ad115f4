// vssfs-difftest engine: see difftest.h for what the tester is.
//
// Process layout. The invoking process (the "checker", normally root) creates
// the workspaces and a small fixture in both trees, then forks the "runner".
// The runner optionally drops privileges, and runs the operations in rounds:
// in each round every worker thread does its share of ops in its own subtree
// `t<i>`; then the runner stops and asks the checker, over a pipe, for a full
// tree comparison, which the checker does with its own credentials (so it can
// read everything even when the ops run as an unprivileged user).
//
// Determinism. Every thread has its own RNG, derived from the seed and the
// thread index, and touches only its own subtree, so its op sequence and all
// results depend only on the seed. Op generation may look at A's state (A is
// the deterministic reference), never at B's.
#include "difftest.h"

#include <acl/libacl.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/acl.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::difftest {
namespace {

// ---------------------------------------------------------------------------
// Constants.

constexpr int kSlots = 4;            // open-file slots per thread
constexpr size_t kMaxIo = 2u << 20;  // largest single read or write
constexpr size_t kAlign = 4096;      // O_DIRECT buffer/offset alignment
constexpr size_t kHistory = 12;      // ops remembered per thread
constexpr int kRescueEvery = 64;     // see Worker::RescueRoot
// Times before this (2017-07-14) can only come from an explicit utimensat:
// everything the file systems stamp themselves is "now". So an explicit time
// is compared exactly and any other time only as "recent".
constexpr int64_t kExplicitTimeLimit = 1'500'000'000;
constexpr int64_t kExplicitTimeMin = 946'684'800;    // 2000-01-01
constexpr int64_t kExplicitTimeMax = 1'400'000'000;  // 2014-05-13

// Names used in every directory: few, so that ops collide often.
constexpr const char* kPool[] = {"a", "b", "c", "d"};
// Fixture directories at the top of each thread's subtree (see MakeFixture).
constexpr const char* kFixtureNames[] = {"S", "G", "R", "L"};

// Linux ACL xattr encoding (include/uapi/linux/posix_acl_xattr.h).
constexpr uint16_t kAclUserObj = 0x01, kAclUser = 0x02, kAclGroupObj = 0x04, kAclGroup = 0x08,
                   kAclMask = 0x10, kAclOther = 0x20;
constexpr uint32_t kAclUndefinedId = 0xffffffffu;

// ---------------------------------------------------------------------------
// Small utilities.

std::string StrPrintf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string StrPrintf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  va_list ap2;
  va_copy(ap2, ap);
  const int n = vsnprintf(nullptr, 0, fmt, ap);
  va_end(ap);
  std::string s(n > 0 ? static_cast<size_t>(n) : 0, '\0');
  vsnprintf(s.data(), s.size() + 1, fmt, ap2);
  va_end(ap2);
  return s;
}

// Writes to stdout atomically with respect to other threads, and flushes.
void Print(const std::string& s) {
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  fwrite(s.data(), 1, s.size(), stdout);
  fflush(stdout);
}

std::string ErrName(int e) {
  const char* name = strerrorname_np(e);
  return name ? name : StrPrintf("errno %d", e);
}

using Fd = cow_store::UniqueFd;

// Owns a closedir()-managed directory stream.
struct DirCloser {
  void operator()(DIR* d) const { closedir(d); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;

// Page-aligned buffer (for O_DIRECT).
struct FreeDeleter {
  void operator()(char* p) const { free(p); }
};
using AlignedBuffer = std::unique_ptr<char, FreeDeleter>;

// The entry names of directory `rel` under `dir` in readdir order, without
// "." and ".."; empty if it cannot be listed.
std::vector<std::string> ListNames(int dir, const std::string& rel) {
  std::vector<std::string> names;
  const int fd = openat(dir, rel.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return names;
  DirPtr d{fdopendir(fd)};
  if (!d) {
    close(fd);
    return names;
  }
  while (dirent* e = readdir(d.get())) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
  }
  return names;
}
AlignedBuffer AllocAligned(size_t n) {
  void* p = aligned_alloc(kAlign, (n + kAlign - 1) / kAlign * kAlign);
  if (p == nullptr) abort();
  return AlignedBuffer(static_cast<char*>(p));
}

uint64_t SplitMix(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() { return SplitMix(&state_); }
  // Uniform in [0, n); 0 when n == 0.
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : Next() % n; }
  int64_t Range(int64_t lo, int64_t hi) {  // inclusive
    return lo + static_cast<int64_t>(Below(static_cast<uint64_t>(hi - lo) + 1));
  }
  bool Percent(int p) { return Below(100) < static_cast<uint64_t>(p); }
  template <typename T, size_t N>
  const T& Pick(const T (&items)[N]) {
    return items[Below(N)];
  }
  template <typename T>
  const T& Pick(const std::vector<T>& items) {
    return items[Below(items.size())];
  }

 private:
  uint64_t state_;
};

uint32_t Fnv1a(const std::string& s) {
  uint32_t h = 2166136261u;
  for (unsigned char c : s) h = (h ^ c) * 16777619u;
  return h;
}

std::string Hex(const std::string& s, size_t from, size_t n) {
  std::string out;
  for (size_t i = from; i < s.size() && i < from + n; ++i) {
    out += StrPrintf("%02x", static_cast<unsigned char>(s[i]));
  }
  return out.empty() ? "(none)" : out;
}

bool Printable(const std::string& s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

// Readable rendering of a path or name: quoted, non-ASCII escaped, long runs
// shortened.
std::string Quote(const std::string& s) {
  std::string body;
  for (unsigned char c : s) {
    if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') {
      body += StrPrintf("\\x%02x", c);
    } else {
      body += static_cast<char>(c);
    }
  }
  if (body.size() > 72) {
    body = body.substr(0, 32) + StrPrintf("...(%zu chars)...", s.size()) +
           body.substr(body.size() - 24);
  }
  return "\"" + body + "\"";
}

std::string DataSummary(const std::string& d) {
  if (d.size() <= 48 && Printable(d)) return Quote(d);
  return StrPrintf("<%zu bytes fnv=%08x head=%s>", d.size(), Fnv1a(d), Hex(d, 0, 12).c_str());
}

std::string DataDiff(const std::string& a, const std::string& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  const size_t from = i >= 8 ? i - 8 : 0;
  return StrPrintf(
      "first difference at byte %zu (A has %zu bytes, B %zu); "
      "from byte %zu A=%s B=%s",
      i, a.size(), b.size(), from, Hex(a, from, 24).c_str(), Hex(b, from, 24).c_str());
}

void AppendLe16(std::string* s, uint16_t v) {
  s->push_back(static_cast<char>(v & 0xff));
  s->push_back(static_cast<char>(v >> 8));
}
void AppendLe32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

struct AclEntry {
  uint16_t tag;
  uint16_t perm;
  uint32_t id;
};
// The raw value of system.posix_acl_{access,default}.
std::string EncodeAcl(const std::vector<AclEntry>& entries) {
  std::string v;
  AppendLe32(&v, 2);  // POSIX_ACL_XATTR_VERSION
  for (const AclEntry& e : entries) {
    AppendLe16(&v, e.tag);
    AppendLe16(&v, e.perm);
    AppendLe32(&v, e.id);
  }
  return v;
}

// Splits a listxattr() buffer and returns the names sorted, comma-joined:
// the order in which a file system lists names carries no meaning.
std::string SortedNames(const char* buf, size_t n) {
  std::vector<std::string> names;
  for (size_t i = 0; i < n;) {
    const size_t len = strnlen(buf + i, n - i);
    names.emplace_back(buf + i, len);
    i += len + 1;
  }
  std::sort(names.begin(), names.end());
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ",") + name;
  return out;
}

// Reads until `n` bytes or EOF; returns bytes read or -1.
ssize_t PreadFull(int fd, char* buf, size_t n, off_t off) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = pread(fd, buf + got, n - got, off + static_cast<off_t>(got));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    got += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(got);
}

bool WriteAll(int fd, const void* buf, size_t n) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    const ssize_t r = write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool ReadAll(int fd, void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Removes a tree without following symlinks; makes directories searchable on
// the way so that a non-root caller can remove its own 0000 directories.
void RemoveTree(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    chmod(path.c_str(), 0700);
    std::vector<std::string> names;
    if (DirPtr d{opendir(path.c_str())}) {
      while (dirent* e = readdir(d.get())) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
          names.emplace_back(e->d_name);
        }
      }
    }
    for (const auto& name : names) RemoveTree(path + "/" + name);
    rmdir(path.c_str());
  } else {
    unlink(path.c_str());
  }
}

// ---------------------------------------------------------------------------
// Naming of flags and modes, for op descriptions.

std::string FlagNames(int value, const std::vector<std::pair<int, const char*>>& names) {
  std::string s;
  for (const auto& [bit, name] : names) {
    if ((value & bit) == bit && bit != 0) {
      s += (s.empty() ? "" : "|") + std::string(name);
      value &= ~bit;
    }
  }
  if (value != 0) s += (s.empty() ? "" : "|") + StrPrintf("0x%x", value);
  return s.empty() ? "0" : s;
}

std::string OpenFlagsName(int flags) {
  std::string s = (flags & O_ACCMODE) == O_RDONLY   ? "O_RDONLY"
                  : (flags & O_ACCMODE) == O_WRONLY ? "O_WRONLY"
                                                    : "O_RDWR";
  const int rest = flags & ~O_ACCMODE;
  if (rest != 0) {
    s += "|" + FlagNames(rest, {{O_CREAT, "O_CREAT"},
                                {O_EXCL, "O_EXCL"},
                                {O_TRUNC, "O_TRUNC"},
                                {O_APPEND, "O_APPEND"},
                                {O_DIRECTORY, "O_DIRECTORY"},
                                {O_NOFOLLOW, "O_NOFOLLOW"},
                                {O_DIRECT, "O_DIRECT"},
                                {O_NONBLOCK, "O_NONBLOCK"}});
  }
  return s;
}

std::string AtFlagsName(int flags) {
  return FlagNames(flags, {{AT_SYMLINK_NOFOLLOW, "AT_SYMLINK_NOFOLLOW"},
                           {AT_SYMLINK_FOLLOW, "AT_SYMLINK_FOLLOW"},
                           {AT_EACCESS, "AT_EACCESS"},
                           {AT_REMOVEDIR, "AT_REMOVEDIR"}});
}

std::string Octal(unsigned mode) { return StrPrintf("0%o", mode); }

std::string Id(int64_t id) {
  return id == -1 ? "-1" : StrPrintf("%lld", static_cast<long long>(id));
}

std::string TimeName(const timespec& t) {
  if (t.tv_nsec == UTIME_NOW) return "UTIME_NOW";
  if (t.tv_nsec == UTIME_OMIT) return "UTIME_OMIT";
  return StrPrintf("%lld.%09ld", static_cast<long long>(t.tv_sec), t.tv_nsec);
}

// ---------------------------------------------------------------------------
// Attributes that must agree between A and B.

struct Attr {
  uint32_t mode = 0;
  uint64_t nlink = 0;
  uint32_t uid = 0;
  uint32_t gid = 0;
  int64_t size = 0;
  uint32_t rdev_major = 0;
  uint32_t rdev_minor = 0;
  int64_t mtime_sec = 0;
  uint32_t mtime_nsec = 0;
  int64_t atime_sec = 0;
  uint32_t atime_nsec = 0;
};

Attr FromStat(const struct stat& st) {
  Attr a;
  a.mode = st.st_mode;
  a.nlink = st.st_nlink;
  a.uid = st.st_uid;
  a.gid = st.st_gid;
  a.size = st.st_size;
  a.rdev_major = major(st.st_rdev);
  a.rdev_minor = minor(st.st_rdev);
  a.mtime_sec = st.st_mtim.tv_sec;
  a.mtime_nsec = static_cast<uint32_t>(st.st_mtim.tv_nsec);
  a.atime_sec = st.st_atim.tv_sec;
  a.atime_nsec = static_cast<uint32_t>(st.st_atim.tv_nsec);
  return a;
}

Attr FromStatx(const struct statx& sx) {
  Attr a;
  a.mode = sx.stx_mode;
  a.nlink = sx.stx_nlink;
  a.uid = sx.stx_uid;
  a.gid = sx.stx_gid;
  a.size = static_cast<int64_t>(sx.stx_size);
  a.rdev_major = sx.stx_rdev_major;
  a.rdev_minor = sx.stx_rdev_minor;
  a.mtime_sec = sx.stx_mtime.tv_sec;
  a.mtime_nsec = sx.stx_mtime.tv_nsec;
  a.atime_sec = sx.stx_atime.tv_sec;
  a.atime_nsec = sx.stx_atime.tv_nsec;
  return a;
}

std::string TimeClass(int64_t sec, uint32_t nsec) {
  if (sec >= kExplicitTimeLimit) return "recent";
  return StrPrintf("%lld.%09u", static_cast<long long>(sec), nsec);
}

char TypeChar(uint32_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return '-';
    case S_IFDIR:
      return 'd';
    case S_IFLNK:
      return 'l';
    case S_IFIFO:
      return 'p';
    case S_IFSOCK:
      return 's';
    case S_IFCHR:
      return 'c';
    case S_IFBLK:
      return 'b';
    default:
      return '?';
  }
}

// The comparable attributes: type, permission bits, nlink, owner, size (not
// for directories: it is file-system specific), device numbers and the mtime
// class. Never st_dev, st_ino, st_blocks, ctime; atime only on request (right
// after utimensat), because reads move it under relatime.
// FIFOs: reading and writing the pipe updates the FIFO's times on a local
// file system, but on FUSE the pipe lives in the kernel and its I/O never
// reaches the daemon (nor does the kernel stamp FUSE inodes itself), so
// their times are compared only right after utimensat set them.
// `atime_set`/`mtime_set`: the caller just set that time explicitly.
std::string FormatAttr(const Attr& a, bool atime_set = false, bool mtime_set = false) {
  std::string s = StrPrintf("%c%04o nlink=%llu uid=%u gid=%u", TypeChar(a.mode), a.mode & 07777,
                            static_cast<unsigned long long>(a.nlink), a.uid, a.gid);
  if (!S_ISDIR(a.mode)) s += StrPrintf(" size=%lld", static_cast<long long>(a.size));
  if (S_ISCHR(a.mode) || S_ISBLK(a.mode)) s += StrPrintf(" rdev=%u:%u", a.rdev_major, a.rdev_minor);
  if (!S_ISFIFO(a.mode) || mtime_set) s += " mtime=" + TimeClass(a.mtime_sec, a.mtime_nsec);
  if (atime_set) s += " atime=" + TimeClass(a.atime_sec, a.atime_nsec);
  return s;
}

// ---------------------------------------------------------------------------
// Outcomes of one operation on one side.

struct Outcome {
  int64_t ret = 0;
  int err = 0;
  std::string data;     // bytes read back, or a summary of the state after
  bool binary = false;  // data holds raw bytes
  bool operator==(const Outcome& o) const { return ret == o.ret && err == o.err && data == o.data; }
};

// Captures a syscall's result and errno. Call directly on the syscall.
Outcome Result(int64_t r) {
  Outcome o;
  o.err = r < 0 ? errno : 0;
  o.ret = r;
  return o;
}

std::string FormatOutcome(const Outcome& o) {
  std::string s = o.ret < 0 ? StrPrintf("-1 %s", ErrName(o.err).c_str())
                            : StrPrintf("%lld", static_cast<long long>(o.ret));
  if (o.ret >= 0 && o.err != 0) s += " then " + ErrName(o.err);
  if (!o.data.empty()) s += o.binary ? " " + DataSummary(o.data) : " [" + o.data + "]";
  return s;
}

// ---------------------------------------------------------------------------
// The two trees.

struct Side {
  std::string root;  // absolute path of the workspace
  Fd dir;            // the workspace, for *at() calls
  std::string Full(const std::string& rel) const { return rel.empty() ? root : root + "/" + rel; }
};

std::string StatSummaryAt(const Side& side, const std::string& rel, int flags,
                          bool atime_set = false, bool mtime_set = false) {
  struct stat st;
  if (fstatat(side.dir.get(), rel.c_str(), &st, flags) != 0) return "stat:" + ErrName(errno);
  return FormatAttr(FromStat(st), atime_set, mtime_set);
}

std::string StatSummaryFd(int fd, bool atime_set = false, bool mtime_set = false) {
  struct stat st;
  if (fstat(fd, &st) != 0) return "fstat:" + ErrName(errno);
  return FormatAttr(FromStat(st), atime_set, mtime_set);
}

// Credentials the ops run with, and ids to chown to.
struct Ids {
  uid_t self_uid = 0;
  gid_t self_gid = 0;
  std::vector<gid_t> groups;
  uid_t foreign_uid = 4242;  // owner of fixture entries that are not ours
  gid_t foreign_gid = 4242;
  uid_t other_uid = 4243;  // owner of S/b
};

Ids MakeIds(const Options& o) {
  Ids ids;
  if (o.drop_privileges) {
    ids.self_uid = o.uid;
    ids.self_gid = o.gid;
    ids.groups = o.groups;
    ids.foreign_uid = 0;
    ids.foreign_gid = 0;
    ids.other_uid = o.uid;
  } else {
    ids.self_uid = geteuid();
    ids.self_gid = getegid();
  }
  return ids;
}

std::string RerunHint(const Options& o) {
  std::string s =
      StrPrintf("--seed %llu --ops %llu --threads %d", static_cast<unsigned long long>(o.seed),
                static_cast<unsigned long long>(o.ops), o.threads);
  if (o.check_every != 200) {
    s += StrPrintf(" --check-every %llu", static_cast<unsigned long long>(o.check_every));
  }
  if (!o.exclude_ops.empty()) {
    s += " --exclude-ops ";
    for (size_t i = 0; i < o.exclude_ops.size(); ++i) s += (i ? "," : "") + o.exclude_ops[i];
  }
  if (o.drop_privileges) {
    s += StrPrintf(" --uid %u --gid %u", o.uid, o.gid);
    if (!o.groups.empty()) {
      s += " --groups ";
      for (size_t i = 0; i < o.groups.size(); ++i)
        s += StrPrintf("%s%u", i ? "," : "", o.groups[i]);
    }
  }
  return s;
}

// ---------------------------------------------------------------------------
// The runner: worker threads doing random ops on both sides.

// Operation kinds (names for --exclude-ops) and their relative weights.
constexpr std::pair<const char*, int> kOpTable[] = {
    {"open", 10},    {"write", 12},
    {"read", 7},     {"truncate", 3},
    {"sync", 1},     {"close", 4},
    {"chmod", 3},    {"chown", 3},
    {"utimens", 3},  {"mkdir", 6},
    {"rmdir", 2},    {"unlink", 4},
    {"rename", 6},   {"symlink", 2},
    {"readlink", 1}, {"link", 2},
    {"mknod", 1},    {"access", 2},
    {"statfs", 1},   {"fallocate", 2},
    {"lseek", 2},    {"copy_file_range", 2},
    {"xattr", 8},    {"acl", 2},
    {"flock", 2},    {"lock", 3},
    {"stat", 4},     {"readdir", 2},
    {"rmtree", 1},
};

struct Context {
  const Options* options = nullptr;
  std::vector<int> weights;  // kOpTable's, 0 for excluded kinds
  Ids ids;
  std::array<Side, 2> side;
  std::atomic<bool> failed{false};
};

struct Slot {
  std::array<Fd, 2> fd;
  std::string path;
  int flags = 0;
  mode_t type = 0;  // S_IFMT bits, from A's fstat after open
  bool open() const { return fd[0].valid() || fd[1].valid(); }
  bool readable() const { return (flags & O_ACCMODE) != O_WRONLY; }
  bool direct() const { return (flags & O_DIRECT) != 0; }
};

class Worker {
 public:
  Worker(Context* ctx, int index)
      : ctx_(ctx),
        index_(index),
        rng_(SeedFor(ctx->options->seed, index)),
        root_(StrPrintf("t%d", index)),
        wbuf_(AllocAligned(kMaxIo)),
        rbuf_{AllocAligned(kMaxIo), AllocAligned(kMaxIo)} {}

  // Runs `n` more ops; false after a mismatch (here or in another thread).
  bool Run(uint64_t n);
  // Closes all open slots on both sides, comparing close() results.
  bool CloseAll();

 private:
  static uint64_t SeedFor(uint64_t seed, int index) {
    uint64_t s = seed ^ (0xd1b54a32d192ed03ull * static_cast<uint64_t>(index + 1));
    return SplitMix(&s);
  }

  // Execution and comparison.
  int Dir(int s) const { return ctx_->side[s].dir.get(); }
  std::string Full(int s, const std::string& rel) const { return ctx_->side[s].Full(rel); }
  template <typename F>
  bool Both(const std::string& desc, F&& f) {
    const Outcome a = f(0);
    const Outcome b = f(1);
    return Judge(desc, a, b, a == b, "");
  }
  bool Judge(const std::string& desc, const Outcome& a, const Outcome& b, bool same,
             const std::string& note);

  // Generation.
  std::string RandName(int level);
  std::string RandPath(bool allow_special = true);
  std::string RandTarget();
  mode_t RandCreateMode();
  mode_t RandChmodMode();
  off_t RandOffset();
  size_t RandLength();
  timespec RandTime();
  void FillData(char* p, size_t n);
  int PickOpenSlot(const std::function<bool(const Slot&)>& pred = nullptr);
  std::string SlotName(int i) const {
    return StrPrintf("slot%d%s", i, Quote(slots_[i].path).c_str());
  }

  bool CloseSlot(int i, const char* why);
  bool RescueRoot();
  void CollectTree(const std::string& rel, int depth,
                   std::vector<std::pair<std::string, bool>>* out);
  bool ValidSeekAnswer(int slot, int whence, off_t off, const Outcome& b, std::string* why);

  // Operations.
  bool Dispatch(size_t kind);
  bool OpOpen();
  bool OpWrite();
  bool OpRead();
  bool OpTruncate();
  // Picks the range of a read or write on `sl` (and whether it is positional).
  void RandIoRange(const Slot& sl, bool allow_large, bool* positional, off_t* off, size_t* len);
  bool OpSync();
  bool OpClose();
  bool OpChmod();
  bool OpChown();
  bool OpUtimens();
  bool OpMkdir();
  bool OpRmdir();
  bool OpUnlink();
  bool OpRename();
  bool OpSymlink();
  bool OpReadlink();
  bool OpLink();
  bool OpMknod();
  bool OpAccess();
  bool OpStatfs();
  bool OpFallocate();
  bool OpLseek();
  bool OpCopyFileRange();
  bool OpXattr();
  bool OpAcl();
  bool OpFlock();
  bool OpLock();
  bool OpStat();
  bool OpReaddir();
  bool OpRemoveTree();

  Context* ctx_;
  int index_;
  Rng rng_;
  std::string root_;  // "t<index>", relative to the workspace
  AlignedBuffer wbuf_;
  std::array<AlignedBuffer, 2> rbuf_;
  std::array<Slot, kSlots> slots_;
  uint64_t done_ = 0;  // ops started by this thread
  std::deque<std::string> history_;
};

bool Worker::Judge(const std::string& desc, const Outcome& a, const Outcome& b, bool same,
                   const std::string& note) {
  std::string line = StrPrintf("#%llu %s => %s", static_cast<unsigned long long>(done_),
                               desc.c_str(), FormatOutcome(a).c_str());
  if (!(a == b)) line += " | B: " + FormatOutcome(b);
  if (!note.empty()) line += " (" + note + ")";
  if (ctx_->options->verbose) Print(StrPrintf("[t%d] %s\n", index_, line.c_str()));
  history_.push_back(line);
  if (history_.size() > kHistory) history_.pop_front();
  if (same) return true;
  if (ctx_->failed.exchange(true)) return false;  // someone else reports
  std::string r = StrPrintf("difftest: MISMATCH at op %llu of thread %d\n",
                            static_cast<unsigned long long>(done_), index_);
  r += "  op: " + desc + "\n";
  r += "  A (reference):  " + FormatOutcome(a) + "\n";
  r += "  B (under test): " + FormatOutcome(b) + "\n";
  if (a.data != b.data && (a.binary || b.binary)) r += "  data: " + DataDiff(a.data, b.data) + "\n";
  if (!note.empty()) r += "  note: " + note + "\n";
  r += StrPrintf("  paths are relative to A=%s and B=%s\n", ctx_->side[0].root.c_str(),
                 ctx_->side[1].root.c_str());
  r += StrPrintf("  last ops of thread %d (A's outcome):\n", index_);
  for (const auto& h : history_) r += "    " + h + "\n";
  Print(r);
  return false;
}

// --- generation -------------------------------------------------------------

std::string Worker::RandName(int level) {
  if (level == 0 && rng_.Percent(25)) return rng_.Pick(kFixtureNames);
  return rng_.Pick(kPool);
}

// A path below this thread's root, depth 1-3. Never contains "..": together
// with symlinks pointing only downwards this keeps every op inside the
// thread's subtree (results then cannot depend on other threads).
std::string Worker::RandPath(bool allow_special) {
  std::string p = root_;
  if (rng_.Percent(50)) {
    // Walk down entries that exist on A, so that most ops hit something.
    const int depth = 1 + static_cast<int>(rng_.Below(4));
    for (int i = 0; i < depth; ++i) {
      std::vector<std::string> names = ListNames(Dir(0), p);
      if (names.empty()) {
        p += "/" + RandName(i);
        break;
      }
      std::sort(names.begin(), names.end());  // readdir order is not reproducible
      p += "/" + rng_.Pick(names);
      if (rng_.Percent(30)) break;
    }
  } else {
    const uint64_t r = rng_.Below(100);
    const int depth = r < 45 ? 1 : r < 80 ? 2 : 3;
    for (int i = 0; i < depth; ++i) p += "/" + RandName(i);
  }
  if (!allow_special) return p;
  const uint64_t special = rng_.Below(100);
  if (special < 2) {
    p += "/";  // trailing slash: ENOTDIR on non-directories
  } else if (special < 3) {
    p += "/.";
  } else if (special < 4) {
    p = p.substr(0, p.rfind('/') + 1) + std::string(256, 'n');  // ENAMETOOLONG
  } else if (special < 6) {
    p = p.substr(0, p.rfind('/') + 1) + "sp \xc3\xa9 x";  // space and UTF-8
  }
  return p;
}

// Symlink targets point only downwards (no "..", not absolute), so following
// one never leaves the directory holding the link.
std::string Worker::RandTarget() {
  const uint64_t r = rng_.Below(100);
  if (r < 4) return "";  // ENOENT
  if (r < 10) return ".";
  if (r < 13) return std::string(1000, 'x');  // dangling, long
  if (r < 15) return std::string(5000, 'y');  // ENAMETOOLONG
  const int depth = 1 + static_cast<int>(rng_.Below(3));
  std::string t = rng_.Percent(10) ? "./" : "";
  for (int i = 0; i < depth; ++i)
    t += (i ? "/" : "") + RandName(i == 0 && rng_.Percent(50) ? 0 : 1);
  return t;
}

mode_t Worker::RandCreateMode() {
  static constexpr mode_t kModes[] = {0644, 0644, 0644,  0600,  0666,  0755,  0700, 0777,
                                      0444, 0,    04755, 02755, 06777, 01777, 02644};
  return rng_.Pick(kModes);
}

mode_t Worker::RandChmodMode() {
  static constexpr mode_t kModes[] = {0644,  0755,  0600,  0777,  0000,  0444,  0555, 0700,
                                      04755, 02755, 06755, 01777, 02775, 07777, 02644};
  if (rng_.Percent(10)) return static_cast<mode_t>(rng_.Below(07777 + 1));
  return rng_.Pick(kModes);
}

off_t Worker::RandOffset() {
  const uint64_t r = rng_.Below(100);
  if (r < 50) return static_cast<off_t>(rng_.Below(8192));
  if (r < 80) return static_cast<off_t>(rng_.Below(65536));
  if (r < 95) return static_cast<off_t>(rng_.Below(262144));
  return static_cast<off_t>(rng_.Below(1 << 20));
}

size_t Worker::RandLength() {
  const uint64_t r = rng_.Below(1000);
  if (r < 400) return 1 + rng_.Below(512);
  if (r < 800) return 1 + rng_.Below(8192);
  if (r < 990) return 1 + rng_.Below(65536);
  return 1 + rng_.Below(kMaxIo);  // large: up to 2 MiB
}

timespec Worker::RandTime() {
  const uint64_t r = rng_.Below(100);
  timespec t{};
  if (r < 15) {
    t.tv_nsec = UTIME_NOW;
  } else if (r < 30) {
    t.tv_nsec = UTIME_OMIT;
  } else if (r < 95) {
    t.tv_sec = rng_.Range(kExplicitTimeMin, kExplicitTimeMax);
    t.tv_nsec = static_cast<long>(rng_.Below(1000000000));
  } else if (r < 98) {
    t.tv_sec = -rng_.Range(0, 100000000);  // before 1970
    t.tv_nsec = static_cast<long>(rng_.Below(1000000000));
  } else {
    t.tv_sec = 1000000000;
    t.tv_nsec = 1000000005;  // EINVAL
  }
  return t;
}

void Worker::FillData(char* p, size_t n) {
  const uint64_t kind = rng_.Below(10);
  if (kind < 2) {
    memset(p, 0, n);  // zero blocks are special to a block store
    return;
  }
  if (kind < 4) {
    memset(p, static_cast<int>('A' + rng_.Below(26)), n);
    return;
  }
  uint64_t x = rng_.Next();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t v = SplitMix(&x);
    memcpy(p + i, &v, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<char>(SplitMix(&x));
}

int Worker::PickOpenSlot(const std::function<bool(const Slot&)>& pred) {
  int candidates[kSlots];
  int n = 0;
  for (int i = 0; i < kSlots; ++i) {
    if (slots_[i].open() && (!pred || pred(slots_[i]))) candidates[n++] = i;
  }
  if (n == 0) return -1;
  return candidates[rng_.Below(static_cast<uint64_t>(n))];
}

// --- run loop -----------------------------------------------------------------

// Runs operation kind `kind` (an index into kOpTable).
bool Worker::Dispatch(size_t kind) {
  switch (kind) {
    case 0:
      return OpOpen();
    case 1:
      return OpWrite();
    case 2:
      return OpRead();
    case 3:
      return OpTruncate();
    case 4:
      return OpSync();
    case 5:
      return OpClose();
    case 6:
      return OpChmod();
    case 7:
      return OpChown();
    case 8:
      return OpUtimens();
    case 9:
      return OpMkdir();
    case 10:
      return OpRmdir();
    case 11:
      return OpUnlink();
    case 12:
      return OpRename();
    case 13:
      return OpSymlink();
    case 14:
      return OpReadlink();
    case 15:
      return OpLink();
    case 16:
      return OpMknod();
    case 17:
      return OpAccess();
    case 18:
      return OpStatfs();
    case 19:
      return OpFallocate();
    case 20:
      return OpLseek();
    case 21:
      return OpCopyFileRange();
    case 22:
      return OpXattr();
    case 23:
      return OpAcl();
    case 24:
      return OpFlock();
    case 25:
      return OpLock();
    case 26:
      return OpStat();
    case 27:
      return OpReaddir();
    case 28:
      return OpRemoveTree();
    default:
      abort();
  }
}
static_assert(std::size(kOpTable) == 29, "Worker::Dispatch must match kOpTable");

bool Worker::Run(uint64_t n) {
  const std::vector<int>& weights = ctx_->weights;
  int total = 0;
  for (int w : weights) total += w;
  for (uint64_t k = 0; k < n; ++k) {
    if (ctx_->failed.load(std::memory_order_relaxed)) return false;
    ++done_;
    if (ctx_->options->drop_privileges && done_ % kRescueEvery == 0 && !RescueRoot()) return false;
    int pick = static_cast<int>(rng_.Below(static_cast<uint64_t>(total)));
    for (size_t j = 0; j < weights.size(); ++j) {
      if (pick < weights[j]) {
        if (!Dispatch(j)) return false;
        break;
      }
      pick -= weights[j];
    }
  }
  return !ctx_->failed.load();
}

bool Worker::CloseAll() {
  for (int i = 0; i < kSlots; ++i) {
    if (!CloseSlot(i, "at end")) return false;
  }
  return true;
}

bool Worker::CloseSlot(int i, const char* why) {
  Slot& sl = slots_[i];
  if (!sl.open()) return true;
  const bool ok = Both(StrPrintf("close(%s) %s", SlotName(i).c_str(), why),
                       [&](int s) { return Result(sl.fd[s].Close()); });
  sl.path.clear();
  sl.flags = 0;
  sl.type = 0;
  return ok;
}

// An unprivileged thread can chmod its own root to 0 through a symlink to "."
// and then lock itself out for the rest of the run. Put u+rwx back now and
// then (compared like any op), so the run keeps exercising things.
bool Worker::RescueRoot() {
  struct stat st;
  if (fstatat(Dir(0), root_.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return true;
  if ((st.st_mode & 0700) == 0700) return true;
  const mode_t mode = (st.st_mode & 07777) | 0700;
  return Both(StrPrintf("chmod(%s, %s) [keep the thread root usable]", Quote(root_).c_str(),
                        Octal(mode).c_str()),
              [&](int s) { return Result(fchmodat(Dir(s), root_.c_str(), mode, 0)); });
}

// --- operations ------------------------------------------------------------------

bool Worker::OpOpen() {
  const int slot = static_cast<int>(rng_.Below(kSlots));
  const int other = rng_.Percent(30) ? PickOpenSlot() : -1;
  const std::string path = other >= 0 ? slots_[other].path : RandPath();
  const uint64_t acc = rng_.Below(10);
  int flags = acc < 3 ? O_RDONLY : acc < 5 ? O_WRONLY : O_RDWR;
  if (rng_.Percent(50)) flags |= O_CREAT;
  if (rng_.Percent((flags & O_CREAT) ? 25 : 2)) flags |= O_EXCL;
  if (rng_.Percent(12)) flags |= O_TRUNC;
  if (rng_.Percent(15)) flags |= O_APPEND;
  if (rng_.Percent(5)) flags |= O_DIRECTORY;
  if (rng_.Percent(10)) flags |= O_NOFOLLOW;
  const mode_t mode = RandCreateMode();
  struct stat st;
  const bool exists = fstatat(Dir(0), path.c_str(), &st, 0) == 0;
  // Device nodes are never opened: B is a FUSE mount, which is nodev.
  if (exists && (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))) return OpStat();
  // A FIFO would block in open() without O_NONBLOCK.
  if (exists && S_ISFIFO(st.st_mode)) flags |= O_NONBLOCK;
  // O_DIRECT: regular files only, and never with O_APPEND, whose unaligned
  // positions are file-system specific.
  if ((!exists || S_ISREG(st.st_mode)) && rng_.Percent(6)) {
    flags |= O_DIRECT;
    flags &= ~O_APPEND;
  }
  if (!CloseSlot(slot, "(reused)")) return false;
  std::array<int, 2> fds = {-1, -1};
  const bool ok = Both(StrPrintf("open(%s, %s, %s) -> slot%d", Quote(path).c_str(),
                                 OpenFlagsName(flags).c_str(), Octal(mode).c_str(), slot),
                       [&](int s) {
                         const int fd = openat(Dir(s), path.c_str(), flags | O_CLOEXEC, mode);
                         Outcome o = Result(fd);
                         if (fd >= 0) {
                           fds[s] = fd;
                           o.ret = 0;  // descriptor numbers differ
                           o.data = StatSummaryFd(fd);
                         }
                         return o;
                       });
  Slot& sl = slots_[slot];
  for (int s = 0; s < 2; ++s) {
    if (fds[s] >= 0) sl.fd[s].reset(fds[s]);
  }
  if (sl.open()) {
    sl.path = path;
    sl.flags = flags;
    struct stat fst;
    sl.type = (sl.fd[0].valid() && fstat(sl.fd[0].get(), &fst) == 0) ? (fst.st_mode & S_IFMT) : 0;
  }
  return ok;
}

void Worker::RandIoRange(const Slot& sl, bool allow_large, bool* positional, off_t* off,
                         size_t* len) {
  *positional = true;
  if (sl.direct()) {
    // O_DIRECT needs aligned offsets and lengths; large ones only for writes.
    *off = static_cast<off_t>(kAlign * rng_.Below(96));
    *len = kAlign * (1 + rng_.Below(allow_large && rng_.Percent(3) ? 256 : 16));
  } else {
    *positional = rng_.Percent(60);
    *off = RandOffset();
    *len = RandLength();
  }
}

bool Worker::OpWrite() {
  const int i = PickOpenSlot();
  if (i < 0) return OpOpen();
  Slot& sl = slots_[i];
  bool positional = true;
  off_t off = 0;
  size_t len = 0;
  RandIoRange(sl, /*allow_large=*/true, &positional, &off, &len);
  FillData(wbuf_.get(), len);
  const std::string desc =
      positional ? StrPrintf("pwrite(%s, %zu bytes fnv=%08x, off=%lld)", SlotName(i).c_str(), len,
                             Fnv1a(std::string(wbuf_.get(), len)), static_cast<long long>(off))
                 : StrPrintf("write(%s, %zu bytes fnv=%08x)", SlotName(i).c_str(), len,
                             Fnv1a(std::string(wbuf_.get(), len)));
  return Both(desc, [&](int s) {
    const int fd = sl.fd[s].get();
    Outcome o =
        Result(positional ? pwrite(fd, wbuf_.get(), len, off) : write(fd, wbuf_.get(), len));
    o.data = StatSummaryFd(fd);  // size, and set-id bits cleared by the write
    return o;
  });
}

bool Worker::OpRead() {
  const int i = PickOpenSlot();
  if (i < 0) return OpOpen();
  Slot& sl = slots_[i];
  bool positional = true;
  off_t off = 0;
  size_t len = 0;
  RandIoRange(sl, /*allow_large=*/false, &positional, &off, &len);
  const std::string desc = positional ? StrPrintf("pread(%s, %zu, off=%lld)", SlotName(i).c_str(),
                                                  len, static_cast<long long>(off))
                                      : StrPrintf("read(%s, %zu)", SlotName(i).c_str(), len);
  return Both(desc, [&](int s) {
    const int fd = sl.fd[s].get();
    char* buf = rbuf_[s].get();
    Outcome o = Result(positional ? pread(fd, buf, len, off) : read(fd, buf, len));
    if (o.ret > 0) {
      o.data.assign(buf, static_cast<size_t>(o.ret));
      o.binary = true;
    }
    return o;
  });
}

bool Worker::OpTruncate() {
  const uint64_t r = rng_.Below(100);
  const off_t len = r < 25   ? 0
                    : r < 60 ? static_cast<off_t>(rng_.Below(8192))
                    : r < 90 ? static_cast<off_t>(rng_.Below(262144))
                    : r < 98 ? static_cast<off_t>(rng_.Below(3 << 20))
                             : -1;
  // POSIX updates mtime on truncate only when the size changes; Linux local
  // filesystems always do, vssfs under its writeback cache only when it
  // changes (the kernel owns mtime then). A same-size truncate's mtime is
  // therefore not compared, and B's mtime is copied to A afterwards so that
  // later comparisons start from equal times.
  auto same_size_mtime = [len](int64_t old_size, Outcome* o) {
    if (o->ret != 0 || old_size != len) return false;
    size_t at = o->data.find(" mtime=");
    if (at != std::string::npos) {
      size_t end = o->data.find(' ', at + 1);
      o->data.erase(at, end == std::string::npos ? std::string::npos : end - at);
    }
    return true;
  };
  // Sets A's mtime to B's (fd or path of each side).
  auto align_mtime = [](int fd_a, int fd_b, const std::string& path_a, const std::string& path_b) {
    struct stat b;
    int r = fd_b >= 0 ? fstat(fd_b, &b) : stat(path_b.c_str(), &b);
    if (r != 0) return;
    struct timespec t[2] = {{0, UTIME_OMIT}, b.st_mtim};
    if (fd_a >= 0) {
      futimens(fd_a, t);
    } else {
      utimensat(AT_FDCWD, path_a.c_str(), t, 0);
    }
  };
  const int i = rng_.Percent(50) ? PickOpenSlot() : -1;
  if (i >= 0) {
    Slot& sl = slots_[i];
    return Both(StrPrintf("ftruncate(%s, %lld)", SlotName(i).c_str(), static_cast<long long>(len)),
                [&](int s) {
                  struct stat before;
                  int64_t old_size = fstat(sl.fd[s].get(), &before) == 0 ? before.st_size : -2;
                  Outcome o = Result(ftruncate(sl.fd[s].get(), len));
                  o.data = StatSummaryFd(sl.fd[s].get());
                  if (same_size_mtime(old_size, &o) && s == 1) {
                    align_mtime(sl.fd[0].get(), sl.fd[1].get(), "", "");
                  }
                  return o;
                });
  }
  const std::string path = RandPath();
  return Both(StrPrintf("truncate(%s, %lld)", Quote(path).c_str(), static_cast<long long>(len)),
              [&](int s) {
                struct stat before;
                int64_t old_size = stat(Full(s, path).c_str(), &before) == 0 ? before.st_size : -2;
                Outcome o = Result(truncate(Full(s, path).c_str(), len));
                o.data = StatSummaryAt(ctx_->side[s], path, 0);
                if (same_size_mtime(old_size, &o) && s == 1) {
                  align_mtime(-1, -1, Full(0, path), Full(1, path));
                }
                return o;
              });
}

bool Worker::OpSync() {
  const int i = PickOpenSlot();
  if (i < 0) return OpOpen();
  const bool data_only = rng_.Percent(50);
  return Both(StrPrintf("%s(%s)", data_only ? "fdatasync" : "fsync", SlotName(i).c_str()),
              [&](int s) {
                const int fd = slots_[i].fd[s].get();
                return Result(data_only ? fdatasync(fd) : fsync(fd));
              });
}

bool Worker::OpClose() {
  const int i = PickOpenSlot();
  if (i < 0) return OpOpen();
  return CloseSlot(i, "");
}

bool Worker::OpChmod() {
  const mode_t mode = RandChmodMode();
  const uint64_t v = rng_.Below(100);
  const int i = v >= 60 && v < 85 ? PickOpenSlot() : -1;
  if (i >= 0) {
    return Both(StrPrintf("fchmod(%s, %s)", SlotName(i).c_str(), Octal(mode).c_str()), [&](int s) {
      const int fd = slots_[i].fd[s].get();
      Outcome o = Result(fchmod(fd, mode));
      o.data = StatSummaryFd(fd);
      return o;
    });
  }
  const std::string path = RandPath();
  const int flags = v >= 85 ? AT_SYMLINK_NOFOLLOW : 0;
  return Both(StrPrintf("fchmodat(%s, %s, %s)", Quote(path).c_str(), Octal(mode).c_str(),
                        AtFlagsName(flags).c_str()),
              [&](int s) {
                Outcome o = Result(fchmodat(Dir(s), path.c_str(), mode, flags));
                o.data = StatSummaryAt(ctx_->side[s], path, AT_SYMLINK_NOFOLLOW);
                return o;
              });
}

bool Worker::OpChown() {
  const Ids& ids = ctx_->ids;
  std::vector<int64_t> uids = {-1, -1, ids.self_uid, 0, ids.foreign_uid, 1000, 65534};
  std::vector<int64_t> gids = {-1, -1, ids.self_gid, 0, ids.foreign_gid, 100, 1000, 65533};
  for (gid_t g : ids.groups) gids.push_back(g);
  const int64_t uid = rng_.Pick(uids);
  const int64_t gid = rng_.Pick(gids);
  const uint64_t v = rng_.Below(100);
  const int i = v >= 75 ? PickOpenSlot() : -1;
  if (i >= 0) {
    return Both(
        StrPrintf("fchown(%s, %s, %s)", SlotName(i).c_str(), Id(uid).c_str(), Id(gid).c_str()),
        [&](int s) {
          const int fd = slots_[i].fd[s].get();
          Outcome o = Result(fchown(fd, static_cast<uid_t>(uid), static_cast<gid_t>(gid)));
          o.data = StatSummaryFd(fd);
          return o;
        });
  }
  const std::string path = RandPath();
  const int flags = v < 45 ? 0 : AT_SYMLINK_NOFOLLOW;  // chown / lchown
  return Both(StrPrintf("fchownat(%s, %s, %s, %s)", Quote(path).c_str(), Id(uid).c_str(),
                        Id(gid).c_str(), AtFlagsName(flags).c_str()),
              [&](int s) {
                Outcome o = Result(fchownat(Dir(s), path.c_str(), static_cast<uid_t>(uid),
                                            static_cast<gid_t>(gid), flags));
                o.data = StatSummaryAt(ctx_->side[s], path, AT_SYMLINK_NOFOLLOW);
                return o;
              });
}

// atime is compared only right after this call set it: reads move it (the
// op generator itself reads A's directories), so an older atime is not
// comparable.
bool Worker::OpUtimens() {
  timespec times[2] = {RandTime(), RandTime()};
  auto set = [&times](const Outcome& o, bool null_times, int which) {
    return o.ret == 0 && (null_times || times[which].tv_nsec != UTIME_OMIT);
  };
  const uint64_t v = rng_.Below(100);
  const int i = v >= 70 && v < 90 ? PickOpenSlot() : -1;
  if (i >= 0) {
    return Both(StrPrintf("futimens(%s, {%s, %s})", SlotName(i).c_str(), TimeName(times[0]).c_str(),
                          TimeName(times[1]).c_str()),
                [&](int s) {
                  const int fd = slots_[i].fd[s].get();
                  Outcome o = Result(futimens(fd, times));
                  o.data = StatSummaryFd(fd, set(o, false, 0), set(o, false, 1));
                  return o;
                });
  }
  const std::string path = RandPath();
  const bool null_times = v >= 90;
  const int flags = v >= 55 && v < 70 ? AT_SYMLINK_NOFOLLOW : 0;
  const std::string times_name =
      null_times ? "NULL" : "{" + TimeName(times[0]) + ", " + TimeName(times[1]) + "}";
  return Both(
      StrPrintf("utimensat(%s, %s, %s)", Quote(path).c_str(), times_name.c_str(),
                AtFlagsName(flags).c_str()),
      [&](int s) {
        // The result is read through a descriptor taken before the
        // call: resolving the path again could traverse a symlink
        // whose atime was just set, and the traversal itself updates
        // atime natively (relatime) but not through the mount's
        // cached symlink.
        Fd target(openat(Dir(s), path.c_str(),
                         O_PATH | O_CLOEXEC | ((flags & AT_SYMLINK_NOFOLLOW) ? O_NOFOLLOW : 0)));
        Outcome o = Result(utimensat(Dir(s), path.c_str(), null_times ? nullptr : times, flags));
        if (target.valid()) {
          struct stat st;
          if (fstatat(target.get(), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0) {
            o.data = FormatAttr(FromStat(st), set(o, null_times, 0), set(o, null_times, 1));
          }
        } else {
          o.data = StatSummaryAt(ctx_->side[s], path, flags, set(o, null_times, 0),
                                 set(o, null_times, 1));
        }
        return o;
      });
}

bool Worker::OpMkdir() {
  static constexpr mode_t kModes[] = {0755, 0755, 0755, 0700, 0777, 02775, 01777, 0555, 0, 03777};
  const mode_t mode = rng_.Pick(kModes);
  const std::string path = RandPath();
  return Both(StrPrintf("mkdir(%s, %s)", Quote(path).c_str(), Octal(mode).c_str()), [&](int s) {
    Outcome o = Result(mkdirat(Dir(s), path.c_str(), mode));
    if (o.ret == 0) o.data = StatSummaryAt(ctx_->side[s], path, AT_SYMLINK_NOFOLLOW);
    return o;
  });
}

bool Worker::OpRmdir() {
  const std::string path = RandPath();
  return Both(StrPrintf("rmdir(%s)", Quote(path).c_str()),
              [&](int s) { return Result(unlinkat(Dir(s), path.c_str(), AT_REMOVEDIR)); });
}

bool Worker::OpUnlink() {
  const std::string path = RandPath();
  return Both(StrPrintf("unlink(%s)", Quote(path).c_str()),
              [&](int s) { return Result(unlinkat(Dir(s), path.c_str(), 0)); });
}

bool Worker::OpRename() {
  const std::string from = RandPath();
  std::string to;
  const uint64_t r = rng_.Below(100);
  if (r < 70) {
    to = RandPath();
  } else if (r < 80) {
    to = from + "/" + RandName(1);  // into its own subtree: EINVAL for a directory
  } else if (r < 95) {
    to = from.substr(0, from.rfind('/') + 1) + RandName(1);  // sibling
  } else {
    to = from;
  }
  const uint64_t f = rng_.Below(100);
  const unsigned flags = f < 60 ? 0u : f < 80 ? RENAME_NOREPLACE : RENAME_EXCHANGE;
  const char* flags_name = flags == 0                  ? "0"
                           : flags == RENAME_NOREPLACE ? "RENAME_NOREPLACE"
                                                       : "RENAME_EXCHANGE";
  return Both(
      StrPrintf("renameat2(%s, %s, %s)", Quote(from).c_str(), Quote(to).c_str(), flags_name),
      [&](int s) {
        Outcome o = Result(renameat2(Dir(s), from.c_str(), Dir(s), to.c_str(), flags));
        if (o.ret == 0) {
          o.data = StatSummaryAt(ctx_->side[s], from, AT_SYMLINK_NOFOLLOW) + " | " +
                   StatSummaryAt(ctx_->side[s], to, AT_SYMLINK_NOFOLLOW);
        }
        return o;
      });
}

bool Worker::OpSymlink() {
  const std::string target = RandTarget();
  const std::string path = RandPath();
  return Both(StrPrintf("symlink(%s, %s)", Quote(target).c_str(), Quote(path).c_str()), [&](int s) {
    Outcome o = Result(symlinkat(target.c_str(), Dir(s), path.c_str()));
    if (o.ret == 0) o.data = StatSummaryAt(ctx_->side[s], path, AT_SYMLINK_NOFOLLOW);
    return o;
  });
}

bool Worker::OpReadlink() {
  static constexpr size_t kSizes[] = {1, 3, 64, 4096, 4096};
  const size_t size = rng_.Pick(kSizes);
  const std::string path = RandPath();
  return Both(StrPrintf("readlink(%s, bufsize=%zu)", Quote(path).c_str(), size), [&](int s) {
    char* buf = rbuf_[s].get();
    Outcome o = Result(readlinkat(Dir(s), path.c_str(), buf, size));
    if (o.ret > 0) o.data.assign(buf, static_cast<size_t>(o.ret));
    o.binary = true;
    return o;
  });
}

bool Worker::OpLink() {
  const int slot = rng_.Percent(30) ? PickOpenSlot() : -1;  // often: a file we hold open
  const std::string from = slot >= 0 ? slots_[slot].path : RandPath();
  const std::string to = RandPath();
  const int flags = rng_.Percent(20) ? AT_SYMLINK_FOLLOW : 0;
  return Both(StrPrintf("linkat(%s, %s, %s)", Quote(from).c_str(), Quote(to).c_str(),
                        AtFlagsName(flags).c_str()),
              [&](int s) {
                Outcome o = Result(linkat(Dir(s), from.c_str(), Dir(s), to.c_str(), flags));
                if (o.ret == 0) o.data = StatSummaryAt(ctx_->side[s], to, AT_SYMLINK_NOFOLLOW);
                return o;
              });
}

bool Worker::OpMknod() {
  const std::string path = RandPath();
  const mode_t perm = RandCreateMode();
  const uint64_t r = rng_.Below(100);
  if (r < 35) {
    return Both(StrPrintf("mkfifo(%s, %s)", Quote(path).c_str(), Octal(perm).c_str()), [&](int s) {
      Outcome o = Result(mkfifoat(Dir(s), path.c_str(), perm));
      if (o.ret == 0) o.data = StatSummaryAt(ctx_->side[s], path, AT_SYMLINK_NOFOLLOW);
      return o;
    });
  }
  mode_t type = S_IFIFO;
  dev_t dev = 0;
  const char* type_name = "S_IFIFO";
  if (r >= 50 && r < 65) {
    type = S_IFREG;
    type_name = "S_IFREG";
  } else if (r >= 65 && r < 75) {
    type = S_IFSOCK;
    type_name = "S_IFSOCK";
  } else if (r >= 75 && r < 92) {
    type = S_IFCHR;  // root only: EPERM otherwise
    dev = makedev(1, 3);
    type_name = "S_IFCHR 1:3";
  } else if (r >= 92) {
    type = S_IFBLK;
    dev = makedev(7, 200);
    type_name = "S_IFBLK 7:200";
  }
  return Both(StrPrintf("mknod(%s, %s|%s)", Quote(path).c_str(), type_name, Octal(perm).c_str()),
              [&](int s) {
                Outcome o = Result(mknodat(Dir(s), path.c_str(), type | perm, dev));
                if (o.ret == 0) o.data = StatSummaryAt(ctx_->side[s], path, AT_SYMLINK_NOFOLLOW);
                return o;
              });
}

bool Worker::OpAccess() {
  static constexpr int kModes[] = {
      F_OK, R_OK, W_OK, X_OK, R_OK | W_OK, R_OK | X_OK, R_OK | W_OK | X_OK};
  static constexpr int kFlags[] = {0, 0, AT_EACCESS, AT_SYMLINK_NOFOLLOW};
  const int mode = rng_.Pick(kModes);
  const int flags = rng_.Pick(kFlags);
  const std::string path = RandPath();
  const std::string mode_name =
      mode == F_OK ? "F_OK" : FlagNames(mode, {{R_OK, "R_OK"}, {W_OK, "W_OK"}, {X_OK, "X_OK"}});
  return Both(StrPrintf("faccessat(%s, %s, %s)", Quote(path).c_str(), mode_name.c_str(),
                        AtFlagsName(flags).c_str()),
              [&](int s) { return Result(faccessat(Dir(s), path.c_str(), mode, flags)); });
}

// The numbers describe two different file systems; only success is compared.
bool Worker::OpStatfs() {
  const int i = rng_.Percent(30) ? PickOpenSlot() : -1;
  if (i >= 0) {
    return Both(StrPrintf("fstatvfs(%s)", SlotName(i).c_str()), [&](int s) {
      struct statvfs sv;
      return Result(fstatvfs(slots_[i].fd[s].get(), &sv));
    });
  }
  const std::string path = RandPath();
  return Both(StrPrintf("statvfs(%s)", Quote(path).c_str()), [&](int s) {
    struct statvfs sv;
    return Result(statvfs(Full(s, path).c_str(), &sv));
  });
}

bool Worker::OpFallocate() {
  const int i = PickOpenSlot();
  if (i < 0) return OpOpen();
  const uint64_t m = rng_.Below(100);
  const int mode = m < 40   ? 0
                   : m < 70 ? FALLOC_FL_KEEP_SIZE
                            : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
  const char* mode_name = m < 40 ? "0" : m < 70 ? "KEEP_SIZE" : "PUNCH_HOLE|KEEP_SIZE";
  const off_t off = RandOffset();
  const off_t len = rng_.Percent(2) ? 0 : static_cast<off_t>(1 + rng_.Below(262144));
  return Both(StrPrintf("fallocate(%s, %s, off=%lld, len=%lld)", SlotName(i).c_str(), mode_name,
                        static_cast<long long>(off), static_cast<long long>(len)),
              [&](int s) {
                const int fd = slots_[i].fd[s].get();
                Outcome o = Result(fallocate(fd, mode, off, len));
                o.data = StatSummaryFd(fd);
                return o;
              });
}

// SEEK_DATA and SEEK_HOLE report how the file system allocated the file, not
// its bytes: the same writes arrive at B's backing file split differently by
// FUSE, a daemon without FUSE_LSEEK gets the kernel's generic answer (all of
// the file is data, the only hole is at EOF), and ext4 reports unwritten
// (fallocated) extents as data or hole depending on what is in the page
// cache. What lseek(2) promises is only that a hole reads as zeros and that
// SEEK_DATA does not skip non-zero bytes. So when B's answer differs from A's
// it is accepted if it is such a valid boundary for the file's contents (and
// B's file offset is then set to A's, so later ops stay identical).
bool Worker::ValidSeekAnswer(int slot, int whence, off_t off, const Outcome& b, std::string* why) {
  const int fd = slots_[slot].fd[0].get();
  struct stat st;
  if (fstat(fd, &st) != 0) return false;
  const off_t size = st.st_size;
  if (off < 0 || off >= size) return false;  // EINVAL / ENXIO: exact
  auto zeros = [&](off_t from, off_t to) {
    std::string buf(static_cast<size_t>(to - from), '\0');
    const ssize_t n = PreadFull(fd, buf.data(), buf.size(), from);
    return n == static_cast<ssize_t>(buf.size()) &&
           std::all_of(buf.begin(), buf.end(), [](char c) { return c == 0; });
  };
  if (whence == SEEK_DATA) {
    if (b.ret < 0) {
      *why = "B says no data after the offset; the bytes there are all zero";
      return b.err == ENXIO && zeros(off, size);
    }
    *why = "B reports data earlier; the bytes it skipped are zero";
    return b.ret >= off && b.ret < size && zeros(off, b.ret);
  }
  if (b.ret < 0) return false;
  *why = b.ret == size ? "B reports the hole at EOF" : "B reports another zero-filled hole";
  return b.ret >= off && b.ret <= size &&
         (b.ret == size || zeros(b.ret, std::min<off_t>(b.ret + 512, size)));
}

bool Worker::OpLseek() {
  const int i = PickOpenSlot([](const Slot& s) { return S_ISREG(s.type) || S_ISFIFO(s.type); });
  if (i < 0) return OpOpen();
  Slot& sl = slots_[i];
  struct stat st;
  const off_t size = fstat(sl.fd[0].get(), &st) == 0 ? st.st_size : 0;
  const uint64_t w = rng_.Below(100);
  int whence = w < 25   ? SEEK_SET
               : w < 40 ? SEEK_CUR
               : w < 60 ? SEEK_END
               : w < 80 ? SEEK_DATA
                        : SEEK_HOLE;
  if ((whence == SEEK_DATA || whence == SEEK_HOLE) && !sl.readable()) whence = SEEK_END;
  off_t off = 0;
  switch (whence) {
    case SEEK_SET:
      off = rng_.Percent(3) ? -1 : RandOffset();
      break;
    case SEEK_CUR:
      off = rng_.Range(-4096, 4096);
      break;
    case SEEK_END:
      off = rng_.Range(-4096, 65536);
      break;
    default:
      off =
          rng_.Percent(5) ? -1 : static_cast<off_t>(rng_.Below(static_cast<uint64_t>(size) + 8192));
      break;
  }
  static constexpr const char* kWhence[] = {"SEEK_SET", "SEEK_CUR", "SEEK_END", "SEEK_DATA",
                                            "SEEK_HOLE"};
  const std::string desc = StrPrintf("lseek(%s, %lld, %s)", SlotName(i).c_str(),
                                     static_cast<long long>(off), kWhence[whence]);
  const Outcome a = Result(lseek(sl.fd[0].get(), off, whence));
  const Outcome b = Result(lseek(sl.fd[1].get(), off, whence));
  if (a == b) return Judge(desc, a, b, true, "");
  std::string why;
  if ((whence == SEEK_DATA || whence == SEEK_HOLE) && ValidSeekAnswer(i, whence, off, b, &why)) {
    const off_t pos = lseek(sl.fd[0].get(), 0, SEEK_CUR);
    lseek(sl.fd[1].get(), pos, SEEK_SET);
    return Judge(desc, a, b, true, "accepted: " + why);
  }
  return Judge(desc, a, b, false, "");
}

bool Worker::OpCopyFileRange() {
  auto not_direct = [](const Slot& s) { return !s.direct(); };
  const int in = PickOpenSlot(not_direct);
  const int out = PickOpenSlot(not_direct);
  if (in < 0 || out < 0) return OpOpen();
  const bool explicit_offsets = rng_.Percent(75);
  const loff_t off_in = RandOffset();
  const loff_t off_out = RandOffset();
  const size_t len = rng_.Percent(2) ? 1 + rng_.Below(kMaxIo) : rng_.Below(131072);
  const std::string desc =
      explicit_offsets ? StrPrintf("copy_file_range(%s off=%lld -> %s off=%lld, %zu)",
                                   SlotName(in).c_str(), static_cast<long long>(off_in),
                                   SlotName(out).c_str(), static_cast<long long>(off_out), len)
                       : StrPrintf("copy_file_range(%s -> %s, %zu) at file positions",
                                   SlotName(in).c_str(), SlotName(out).c_str(), len);
  return Both(desc, [&](int s) {
    const int fd_in = slots_[in].fd[s].get();
    const int fd_out = slots_[out].fd[s].get();
    loff_t pin = off_in;
    loff_t pout = off_out;
    size_t left = len;
    int64_t total = 0;
    int err = 0;
    // copy_file_range may copy less than asked; loop like cp does.
    for (int k = 0; k < 64 && left > 0; ++k) {
      const ssize_t n = copy_file_range(fd_in, explicit_offsets ? &pin : nullptr, fd_out,
                                        explicit_offsets ? &pout : nullptr, left, 0);
      if (n < 0) {
        err = errno;
        break;
      }
      if (n == 0) break;
      total += n;
      left -= static_cast<size_t>(n);
    }
    Outcome o;
    o.ret = err != 0 && total == 0 ? -1 : total;
    o.err = err;
    o.data = StatSummaryFd(fd_out);
    return o;
  });
}

bool Worker::OpXattr() {
  enum Kind {
    kDos,
    kStream,
    kBigStream,
    kUser,
    kNtAcl,
    kTrusted,
    kAclAccess,
    kAclDefault,
    kCap,
    kBadName
  };
  static constexpr std::pair<Kind, int> kKinds[] = {
      {kDos, 22},    {kStream, 12},    {kBigStream, 5},  {kUser, 10}, {kNtAcl, 10},
      {kTrusted, 8}, {kAclAccess, 10}, {kAclDefault, 8}, {kCap, 7},   {kBadName, 4}};
  int pick = static_cast<int>(rng_.Below(96));
  Kind kind = kDos;
  for (const auto& [k, w] : kKinds) {
    if (pick < w) {
      kind = k;
      break;
    }
    pick -= w;
  }
  std::string name;
  std::string value;
  switch (kind) {
    case kDos: {
      name = "user.DOSATTRIB";
      value = std::string("\x00\x00\x04\x00\x04\x00\x00\x00", 8);
      const size_t n = 20 + rng_.Below(60);
      for (size_t i = 0; i < n; ++i) value.push_back(static_cast<char>(rng_.Below(256)));
      break;
    }
    case kStream: {
      name = rng_.Percent(50) ? "user.DosStream.Zone.Identifier:$DATA" : "user.DosStream.s1:$DATA";
      value = "[ZoneTransfer]\r\nZoneId=3\r\n";
      value.push_back('\0');
      const size_t n = rng_.Below(3000);
      for (size_t i = 0; i < n; ++i) value.push_back(static_cast<char>(rng_.Below(256)));
      break;
    }
    case kBigStream: {
      name = "user.DosStream.big:$DATA";
      const size_t n = rng_.Percent(50) ? rng_.Below(4096) : rng_.Below(61440);
      value.resize(n);
      FillData(value.data(), n);
      break;
    }
    case kUser:
      name = rng_.Percent(50) ? "user.a" : "user.b";
      value = rng_.Percent(10)
                  ? ""
                  : StrPrintf("v%llu", static_cast<unsigned long long>(rng_.Below(1000)));
      break;
    case kNtAcl: {
      name = "security.NTACL";  // root only (CAP_SYS_ADMIN) to set
      const size_t n = 60 + rng_.Below(300);
      value = std::string("\x04\x00\x04\x00", 4);
      for (size_t i = 0; i < n; ++i) value.push_back(static_cast<char>(rng_.Below(256)));
      break;
    }
    case kTrusted:
      name = rng_.Percent(50) ? "trusted.difftest" : "trusted.x";  // root only
      value = StrPrintf("t%llu", static_cast<unsigned long long>(rng_.Below(100000)));
      break;
    case kAclAccess:
    case kAclDefault: {
      name = kind == kAclAccess ? "system.posix_acl_access" : "system.posix_acl_default";
      const uint64_t r = rng_.Below(100);
      const uint32_t u = kAclUndefinedId;
      if (r < 25) {
        value = EncodeAcl({{kAclUserObj, 6, u}, {kAclGroupObj, 4, u}, {kAclOther, 4, u}});
      } else if (r < 55) {
        value = EncodeAcl({{kAclUserObj, 7, u},
                           {kAclUser, 7, 65534},
                           {kAclGroupObj, 5, u},
                           {kAclGroup, 7, 100},
                           {kAclMask, 7, u},
                           {kAclOther, 0, u}});
      } else if (r < 75) {
        value = EncodeAcl({{kAclUserObj, 6, u},
                           {kAclUser, 4, 1000},
                           {kAclGroupObj, 0, u},
                           {kAclGroup, 6, 65533},
                           {kAclMask, 6, u},
                           {kAclOther, 0, u}});
      } else if (r < 87) {  // named entry without a mask: EINVAL
        value = EncodeAcl(
            {{kAclUserObj, 7, u}, {kAclUser, 7, 65534}, {kAclGroupObj, 5, u}, {kAclOther, 0, u}});
      } else if (r < 94) {
        value = "garbage!";
      }  // else empty
      break;
    }
    case kCap: {
      name = "security.capability";  // needs CAP_SETFCAP; killed by writes and chown
      if (rng_.Percent(90)) {
        AppendLe32(&value, 0x02000001);  // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
        AppendLe32(&value, 1u << 10);    // CAP_NET_BIND_SERVICE
        AppendLe32(&value, 0);
        AppendLe32(&value, 0);
        AppendLe32(&value, 0);
      } else {
        value = "bogus";
      }
      break;
    }
    case kBadName: {
      static constexpr const char* kNames[] = {"", "nonamespace", "user.", "bogus.x"};
      name = rng_.Percent(80) ? rng_.Pick(kNames) : "user." + std::string(300, 'z');
      value = "x";
      break;
    }
  }

  // Target: path (following or not) or an open descriptor.
  const uint64_t t = rng_.Below(10);
  const int slot = t >= 7 ? PickOpenSlot() : -1;
  const bool nofollow = slot < 0 && t >= 4;
  const std::string path = slot < 0 ? RandPath() : "";
  const std::string target = slot >= 0 ? SlotName(slot) : Quote(path);
  const char* prefix = slot >= 0 ? "f" : nofollow ? "l" : "";

  const uint64_t action = rng_.Below(100);
  if (action < 40) {
    static constexpr int kFlags[] = {0, 0, 0, XATTR_CREATE, XATTR_REPLACE};
    const int flags = rng_.Pick(kFlags);
    const char* flags_name = flags == 0              ? "0"
                             : flags == XATTR_CREATE ? "XATTR_CREATE"
                                                     : "XATTR_REPLACE";
    return Both(
        StrPrintf("%ssetxattr(%s, %s, %s, %s)", prefix, target.c_str(), Quote(name).c_str(),
                  DataSummary(value).c_str(), flags_name),
        [&](int s) {
          if (slot >= 0)
            return Result(fsetxattr(slots_[slot].fd[s].get(), name.c_str(), value.data(),
                                    value.size(), flags));
          const std::string full = Full(s, path);
          return Result(
              nofollow ? lsetxattr(full.c_str(), name.c_str(), value.data(), value.size(), flags)
                       : setxattr(full.c_str(), name.c_str(), value.data(), value.size(), flags));
        });
  }
  static constexpr size_t kSizes[] = {0, 1, 16, 65536, 65536, 65536};
  const size_t size = rng_.Pick(kSizes);
  if (action < 65) {
    return Both(StrPrintf("%sgetxattr(%s, %s, bufsize=%zu)", prefix, target.c_str(),
                          Quote(name).c_str(), size),
                [&](int s) {
                  char* buf = rbuf_[s].get();
                  Outcome o;
                  if (slot >= 0) {
                    o = Result(fgetxattr(slots_[slot].fd[s].get(), name.c_str(), buf, size));
                  } else {
                    const std::string full = Full(s, path);
                    o = Result(nofollow ? lgetxattr(full.c_str(), name.c_str(), buf, size)
                                        : getxattr(full.c_str(), name.c_str(), buf, size));
                  }
                  if (o.ret > 0 && size > 0) o.data.assign(buf, static_cast<size_t>(o.ret));
                  o.binary = true;
                  return o;
                });
  }
  if (action < 80) {
    return Both(StrPrintf("%slistxattr(%s, bufsize=%zu)", prefix, target.c_str(), size),
                [&](int s) {
                  char* buf = rbuf_[s].get();
                  Outcome o;
                  if (slot >= 0) {
                    o = Result(flistxattr(slots_[slot].fd[s].get(), buf, size));
                  } else {
                    const std::string full = Full(s, path);
                    o = Result(nofollow ? llistxattr(full.c_str(), buf, size)
                                        : listxattr(full.c_str(), buf, size));
                  }
                  if (o.ret > 0 && size > 0) o.data = SortedNames(buf, static_cast<size_t>(o.ret));
                  return o;
                });
  }
  return Both(StrPrintf("%sremovexattr(%s, %s)", prefix, target.c_str(), Quote(name).c_str()),
              [&](int s) {
                if (slot >= 0) return Result(fremovexattr(slots_[slot].fd[s].get(), name.c_str()));
                const std::string full = Full(s, path);
                return Result(nofollow ? lremovexattr(full.c_str(), name.c_str())
                                       : removexattr(full.c_str(), name.c_str()));
              });
}

// POSIX ACLs through libacl (the raw xattr route is in OpXattr).
bool Worker::OpAcl() {
  static constexpr const char* kTexts[] = {
      "u::rw-,g::r--,o::r--",
      "u::rwx,u:65534:rwx,g::r-x,g:100:r-x,m::rwx,o::---",
      "u::rw-,u:1000:r--,g::---,g:65533:rw-,m::r--,o::---",
      "u::rwx,g::rwx,g:65534:rwx,m::r-x,o::r-x",
      "u::---,u:65534:rw-,g::---,m::rw-,o::---",
  };
  const std::string path = RandPath();
  const char* text = rng_.Pick(kTexts);
  const uint64_t action = rng_.Below(100);
  std::string desc;
  if (action < 40) {
    desc = StrPrintf("acl_set_file(%s, ACCESS, \"%s\")", Quote(path).c_str(), text);
  } else if (action < 65) {
    desc = StrPrintf("acl_set_file(%s, DEFAULT, \"%s\")", Quote(path).c_str(), text);
  } else if (action < 80) {
    desc = StrPrintf("acl_get_file(%s, ACCESS)", Quote(path).c_str());
  } else if (action < 90) {
    desc = StrPrintf("acl_get_file(%s, DEFAULT)", Quote(path).c_str());
  } else {
    desc = StrPrintf("acl_delete_def_file(%s)", Quote(path).c_str());
  }
  return Both(desc, [&](int s) {
    const std::string full = Full(s, path);
    Outcome o;
    if (action < 65) {
      acl_t acl = acl_from_text(text);
      o = Result(acl_set_file(full.c_str(), action < 40 ? ACL_TYPE_ACCESS : ACL_TYPE_DEFAULT, acl));
      acl_free(acl);
    } else if (action < 90) {
      acl_t acl = acl_get_file(full.c_str(), action < 80 ? ACL_TYPE_ACCESS : ACL_TYPE_DEFAULT);
      if (acl == nullptr) {
        o = Result(-1);
      } else {
        char* t = acl_to_any_text(acl, nullptr, ',', 0);
        o.data = t ? t : "(acl_to_any_text failed)";
        acl_free(t);
        acl_free(acl);
      }
    } else {
      o = Result(acl_delete_def_file(full.c_str()));
    }
    o.data += " " + StatSummaryAt(ctx_->side[s], path, 0);
    return o;
  });
}

// flock() conflicts arise between slots open on the same file; LOCK_NB always
// (one thread must never wait for itself).
bool Worker::OpFlock() {
  const int i = PickOpenSlot();
  if (i < 0) return OpOpen();
  static constexpr int kOpsList[] = {LOCK_SH | LOCK_NB, LOCK_EX | LOCK_NB, LOCK_EX | LOCK_NB,
                                     LOCK_UN};
  const int op = rng_.Pick(kOpsList);
  const char* name = op == (LOCK_SH | LOCK_NB) ? "LOCK_SH|LOCK_NB"
                     : op == LOCK_UN           ? "LOCK_UN"
                                               : "LOCK_EX|LOCK_NB";
  return Both(StrPrintf("flock(%s, %s)", SlotName(i).c_str(), name),
              [&](int s) { return Result(flock(slots_[i].fd[s].get(), op)); });
}

// Byte-range locks: open-file-description locks conflict between two slots
// of the same file; classic POSIX locks belong to the process and never
// conflict with each other here, but do with OFD locks.
bool Worker::OpLock() {
  const int i = PickOpenSlot();
  if (i < 0) return OpOpen();
  // Classic locks are dropped when the process closes *any* descriptor of the
  // inode, and the op generator opens A's directories (only A's) to pick
  // paths; so no classic locks on directories.
  const uint64_t c = rng_.Below(S_ISDIR(slots_[i].type) ? 75 : 100);
  const int cmd = c < 45 ? F_OFD_SETLK : c < 75 ? F_OFD_GETLK : c < 90 ? F_SETLK : F_GETLK;
  const char* cmd_name = c < 45   ? "F_OFD_SETLK"
                         : c < 75 ? "F_OFD_GETLK"
                         : c < 90 ? "F_SETLK"
                                  : "F_GETLK";
  const bool get = cmd == F_OFD_GETLK || cmd == F_GETLK;
  const uint64_t t = rng_.Below(100);
  const short type = t < 40 ? F_RDLCK : t < 80 || get ? F_WRLCK : F_UNLCK;
  const off_t start = static_cast<off_t>(rng_.Below(4) * 100 + rng_.Below(50));
  const off_t len = rng_.Percent(15) ? 0 : static_cast<off_t>(1 + rng_.Below(300));
  const char* type_name = type == F_RDLCK ? "F_RDLCK" : type == F_WRLCK ? "F_WRLCK" : "F_UNLCK";
  return Both(StrPrintf("fcntl(%s, %s, {%s, start=%lld, len=%lld})", SlotName(i).c_str(), cmd_name,
                        type_name, static_cast<long long>(start), static_cast<long long>(len)),
              [&](int s) {
                struct flock fl {};
                fl.l_type = type;
                fl.l_whence = SEEK_SET;
                fl.l_start = start;
                fl.l_len = len;
                Outcome o = Result(fcntl(slots_[i].fd[s].get(), cmd, &fl));
                if (o.ret == 0 && get) {
                  o.data = fl.l_type == F_UNLCK
                               ? "no conflict"
                               : StrPrintf("conflict %s start=%lld len=%lld pid=%d",
                                           fl.l_type == F_RDLCK ? "F_RDLCK" : "F_WRLCK",
                                           static_cast<long long>(fl.l_start),
                                           static_cast<long long>(fl.l_len), fl.l_pid);
                }
                return o;
              });
}

bool Worker::OpStat() {
  const uint64_t v = rng_.Below(100);
  const int i = v >= 70 ? PickOpenSlot() : -1;
  if (i >= 0) {
    return Both(StrPrintf("fstat(%s)", SlotName(i).c_str()), [&](int s) {
      struct stat st;
      Outcome o = Result(fstat(slots_[i].fd[s].get(), &st));
      if (o.ret == 0) o.data = FormatAttr(FromStat(st));
      return o;
    });
  }
  const std::string path = RandPath();
  const int flags = v < 35 ? 0 : AT_SYMLINK_NOFOLLOW;
  return Both(StrPrintf("fstatat(%s, %s)", Quote(path).c_str(), AtFlagsName(flags).c_str()),
              [&](int s) {
                struct stat st;
                Outcome o = Result(fstatat(Dir(s), path.c_str(), &st, flags));
                if (o.ret == 0) o.data = FormatAttr(FromStat(st));
                return o;
              });
}

bool Worker::OpReaddir() {
  const std::string path = rng_.Percent(20) ? root_ : RandPath();
  return Both(StrPrintf("readdir(%s)", Quote(path).c_str()), [&](int s) {
    const int fd = openat(Dir(s), path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Result(-1);
    DirPtr d{fdopendir(fd)};
    if (!d) {
      Outcome o = Result(-1);
      close(fd);
      return o;
    }
    std::vector<std::string> entries;
    errno = 0;
    while (dirent* e = readdir(d.get())) {
      entries.push_back(StrPrintf("%s/%d", e->d_name, e->d_type));
    }
    Outcome o = Result(errno != 0 ? -1 : 0);
    std::sort(entries.begin(), entries.end());
    for (const auto& e : entries) o.data += (o.data.empty() ? "" : " ") + e;
    return o;
  });
}

void Worker::CollectTree(const std::string& rel, int depth,
                         std::vector<std::pair<std::string, bool>>* out) {
  if (out->size() > 400 || depth > 24) return;
  struct stat st;
  if (fstatat(Dir(0), rel.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return;
  if (S_ISDIR(st.st_mode)) {
    std::vector<std::string> names = ListNames(Dir(0), rel);
    std::sort(names.begin(), names.end());
    for (const auto& name : names) CollectTree(rel + "/" + name, depth + 1, out);
  }
  out->emplace_back(rel, S_ISDIR(st.st_mode));
}

// Removes a whole subtree, entry by entry as seen on A, comparing each step.
// Keeps the trees from growing without bound (renames can push entries
// deeper than RandPath reaches).
bool Worker::OpRemoveTree() {
  std::string top = root_ + "/" + RandName(0);
  if (rng_.Percent(40)) top += "/" + RandName(1);
  std::vector<std::pair<std::string, bool>> entries;
  CollectTree(top, 0, &entries);
  if (entries.empty()) entries.emplace_back(top, true);
  for (const auto& [path, is_dir] : entries) {
    const int flags = is_dir ? AT_REMOVEDIR : 0;
    if (!Both(StrPrintf("%s(%s) [remove tree %s]", is_dir ? "rmdir" : "unlink", Quote(path).c_str(),
                        Quote(top).c_str()),
              [&](int s) { return Result(unlinkat(Dir(s), path.c_str(), flags)); })) {
      return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// Fixture: per-thread starting state, made by the checker (normally root) in
// both trees before the runner starts. It gives an unprivileged run things it
// cannot make itself: entries of other owners, a sticky world-writable
// directory, a setgid directory of a group the user is not in, a read-only
// directory, root-only xattrs, ACLs.

class FixtureMaker {
 public:
  FixtureMaker(std::array<Side, 2>* side, const Ids& ids) : side_(side), ids_(ids) {}

  bool Make(const std::string& root);

 private:
  template <typename F>
  bool Step(const std::string& desc, F&& f) {
    const Outcome a = f((*side_)[0]);
    const Outcome b = f((*side_)[1]);
    if (a == b) return true;
    Print("difftest: MISMATCH while creating the fixture\n  op: " + desc + "\n  A (reference):  " +
          FormatOutcome(a) + "\n  B (under test): " + FormatOutcome(b) + "\n");
    return false;
  }
  bool Mkdir(const std::string& rel, uid_t uid, gid_t gid, mode_t mode);
  bool File(const std::string& rel, uid_t uid, gid_t gid, mode_t mode);
  bool Xattr(const std::string& rel, const std::string& name, const std::string& value);
  bool Acl(const std::string& rel, acl_type_t type, const char* text);
  bool Chmod(const std::string& rel, mode_t mode);

  std::array<Side, 2>* side_;
  Ids ids_;
};

bool FixtureMaker::Chmod(const std::string& rel, mode_t mode) {
  return Step(StrPrintf("chmod(%s, %s)", Quote(rel).c_str(), Octal(mode).c_str()),
              [&](const Side& s) { return Result(fchmodat(s.dir.get(), rel.c_str(), mode, 0)); });
}

bool FixtureMaker::Mkdir(const std::string& rel, uid_t uid, gid_t gid, mode_t mode) {
  return Step(StrPrintf("mkdir(%s)", Quote(rel).c_str()),
              [&](const Side& s) { return Result(mkdirat(s.dir.get(), rel.c_str(), 0700)); }) &&
         Step(StrPrintf("chown(%s, %u, %u)", Quote(rel).c_str(), uid, gid),
              [&](const Side& s) {
                return Result(fchownat(s.dir.get(), rel.c_str(), uid, gid, 0));
              }) &&
         Chmod(rel, mode);
}

bool FixtureMaker::File(const std::string& rel, uid_t uid, gid_t gid, mode_t mode) {
  const std::string content = "fixture " + rel + "\n";
  return Step(StrPrintf("create(%s)", Quote(rel).c_str()),
              [&](const Side& s) {
                Fd fd(openat(s.dir.get(), rel.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                             0600));
                if (!fd.valid()) return Result(-1);
                if (!WriteAll(fd.get(), content.data(), content.size())) return Result(-1);
                return Result(fd.Close());
              }) &&
         Step(StrPrintf("chown(%s, %u, %u)", Quote(rel).c_str(), uid, gid),
              [&](const Side& s) {
                return Result(fchownat(s.dir.get(), rel.c_str(), uid, gid, 0));
              }) &&
         Chmod(rel, mode);
}

bool FixtureMaker::Xattr(const std::string& rel, const std::string& name,
                         const std::string& value) {
  return Step(StrPrintf("setxattr(%s, %s)", Quote(rel).c_str(), name.c_str()), [&](const Side& s) {
    return Result(lsetxattr(s.Full(rel).c_str(), name.c_str(), value.data(), value.size(), 0));
  });
}

bool FixtureMaker::Acl(const std::string& rel, acl_type_t type, const char* text) {
  return Step(StrPrintf("acl_set_file(%s, %s)", Quote(rel).c_str(), text), [&](const Side& s) {
    acl_t acl = acl_from_text(text);
    Outcome o = Result(acl_set_file(s.Full(rel).c_str(), type, acl));
    acl_free(acl);
    return o;
  });
}

bool FixtureMaker::Make(const std::string& r) {
  const uid_t me = ids_.self_uid;
  const gid_t my_group = ids_.self_gid;
  const uid_t fu = ids_.foreign_uid;
  const gid_t fg = ids_.foreign_gid;
  const std::string acl_access = StrPrintf("u::rwx,u:%u:rwx,g::r-x,g:100:rwx,m::rwx,o::r-x", fu);
  return Mkdir(r, me, my_group, 0755) &&
         // Sticky, world-writable, not ours; one entry of another owner, one ours.
         Mkdir(r + "/S", fu, fg, 01777) && File(r + "/S/a", fu, fg, 0666) &&
         File(r + "/S/b", ids_.other_uid, 0, 0644) &&
         // Setgid directory of group 0 (not ours when unprivileged).
         Mkdir(r + "/G", fu, 0, 02777) && File(r + "/G/a", fu, 0, 0664) &&
         // Read-only directory with a file carrying root-only xattrs.
         Mkdir(r + "/R", fu, fg, 0755) && File(r + "/R/a", fu, fg, 0644) &&
         Xattr(r + "/R/a", "user.DOSATTRIB",
               std::string("\x00\x00\x04\x00\x04\x00\x00\x00\x11\x22", 10)) &&
         Xattr(r + "/R/a", "security.NTACL", std::string("\x04\x00\x04\x00\x01\x02\x03", 7)) &&
         Xattr(r + "/R/a", "trusted.difftest", "fixture") && Chmod(r + "/R", 0555) &&
         // Ours, with access and default ACLs.
         Mkdir(r + "/L", me, my_group, 0770) &&
         Acl(r + "/L", ACL_TYPE_ACCESS, acl_access.c_str()) &&
         Acl(r + "/L", ACL_TYPE_DEFAULT, "u::rwx,u:65534:rw-,g::r-x,g:65533:rwx,m::rwx,o::---");
}

// ---------------------------------------------------------------------------
// The checker's full tree comparison.

class TreeChecker {
 public:
  TreeChecker(const Side* a, const Side* b) : a_(a), b_(b) {}

  // Compares both workspaces. Returns "" when they agree, else a report.
  std::string Check();
  size_t entries() const { return entries_; }
  bool have_btime() const { return have_btime_; }

 private:
  // An inode on A: number and birth time (the number alone can be reused).
  using Identity = std::tuple<uint64_t, int64_t, uint32_t>;
  struct Seen {
    uint64_t b_ino;
    std::string path;
  };

  bool Entry(const std::string& rel, int depth);
  bool Dir(const std::string& rel, int depth);
  bool Contents(const std::string& rel);
  bool Xattrs(const std::string& rel);
  bool Fail(const std::string& rel, const std::string& what, const std::string& a,
            const std::string& b) {
    report_ = StrPrintf("%s at %s\n    A: %s\n    B: %s\n", what.c_str(),
                        Quote(rel.empty() ? "." : rel).c_str(), a.c_str(), b.c_str());
    return false;
  }

  const Side* a_;
  const Side* b_;
  std::string report_;
  size_t entries_ = 0;
  bool have_btime_ = true;
  std::map<Identity, Seen> prev_;  // from the previous check
  std::map<Identity, Seen> cur_;
  std::map<uint64_t, std::pair<Identity, std::string>> b_inodes_;
  std::vector<char> buf_a_ = std::vector<char>(kMaxIo);  // reused read buffers
  std::vector<char> buf_b_ = std::vector<char>(kMaxIo);
};

std::string TreeChecker::Check() {
  report_.clear();
  entries_ = 0;
  cur_.clear();
  b_inodes_.clear();
  if (!Entry("", 0)) return report_;
  prev_ = std::move(cur_);
  return "";
}

int ListDir(const std::string& full, std::vector<std::pair<std::string, int>>* out) {
  DirPtr d{opendir(full.c_str())};
  if (!d) return errno;
  errno = 0;
  while (dirent* e = readdir(d.get())) {
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
      out->emplace_back(e->d_name, e->d_type);
    errno = 0;
  }
  const int err = errno;
  std::sort(out->begin(), out->end());
  return err;
}

std::string FormatListing(const std::vector<std::pair<std::string, int>>& list) {
  std::string s;
  for (const auto& [name, type] : list)
    s += StrPrintf("%s%s/%d", s.empty() ? "" : " ", Quote(name).c_str(), type);
  return s.empty() ? "(empty)" : s;
}

bool TreeChecker::Entry(const std::string& rel, int depth) {
  ++entries_;
  struct statx xa {
  }, xb{};
  const unsigned mask = STATX_BASIC_STATS | STATX_BTIME;
  const int ra =
      statx(AT_FDCWD, a_->Full(rel).c_str(), AT_SYMLINK_NOFOLLOW, mask, &xa) == 0 ? 0 : errno;
  const int rb =
      statx(AT_FDCWD, b_->Full(rel).c_str(), AT_SYMLINK_NOFOLLOW, mask, &xb) == 0 ? 0 : errno;
  if (ra != 0 || rb != 0) {
    if (ra == rb) return true;  // e.g. EACCES for a non-root checker, on both
    return Fail(rel, "lstat differs", ra ? ErrName(ra) : "ok", rb ? ErrName(rb) : "ok");
  }
  const std::string sa = FormatAttr(FromStatx(xa));
  const std::string sb = FormatAttr(FromStatx(xb));
  if (sa != sb) return Fail(rel, "attributes differ", sa, sb);

  // Inode numbers: hard links on A are hard links on B and nothing else
  // shares a number on B; and an inode keeps its number on B from one check
  // to the next (Samba's durable handles rely on it).
  if (!(xa.stx_mask & STATX_BTIME)) have_btime_ = false;
  const Identity id = have_btime_ ? Identity{xa.stx_ino, xa.stx_btime.tv_sec, xa.stx_btime.tv_nsec}
                                  : Identity{xa.stx_ino, 0, 0};
  auto [it, inserted] = cur_.try_emplace(id, Seen{xb.stx_ino, rel});
  if (!inserted && it->second.b_ino != xb.stx_ino) {
    return Fail(rel, "hard links split on B: same inode on A as " + Quote(it->second.path),
                StrPrintf("ino %llu for both", static_cast<unsigned long long>(xa.stx_ino)),
                StrPrintf("ino %llu vs %llu", static_cast<unsigned long long>(xb.stx_ino),
                          static_cast<unsigned long long>(it->second.b_ino)));
  }
  auto [bit, b_inserted] = b_inodes_.try_emplace(xb.stx_ino, id, rel);
  if (!b_inserted && bit->second.first != id) {
    return Fail(rel, "inode number collision on B with " + Quote(bit->second.second),
                "different inodes on A",
                StrPrintf("both ino %llu", static_cast<unsigned long long>(xb.stx_ino)));
  }
  if (have_btime_) {
    auto prev = prev_.find(id);
    if (prev != prev_.end() && prev->second.b_ino != xb.stx_ino) {
      return Fail(rel,
                  "st_ino changed on B since the last tree check (same inode on A, was at " +
                      Quote(prev->second.path) + ")",
                  StrPrintf("ino %llu unchanged", static_cast<unsigned long long>(xa.stx_ino)),
                  StrPrintf("ino %llu, was %llu", static_cast<unsigned long long>(xb.stx_ino),
                            static_cast<unsigned long long>(prev->second.b_ino)));
    }
  }

  if (!Xattrs(rel)) return false;
  switch (xa.stx_mode & S_IFMT) {
    case S_IFREG:
      return Contents(rel);
    case S_IFLNK: {
      std::string ta(8192, '\0'), tb(8192, '\0');
      const ssize_t na = readlink(a_->Full(rel).c_str(), ta.data(), ta.size());
      const ssize_t nb = readlink(b_->Full(rel).c_str(), tb.data(), tb.size());
      ta.resize(na > 0 ? static_cast<size_t>(na) : 0);
      tb.resize(nb > 0 ? static_cast<size_t>(nb) : 0);
      if (na != nb || ta != tb) return Fail(rel, "symlink targets differ", Quote(ta), Quote(tb));
      return true;
    }
    case S_IFDIR:
      return Dir(rel, depth);
    default:
      return true;
  }
}

bool TreeChecker::Dir(const std::string& rel, int depth) {
  std::vector<std::pair<std::string, int>> la, lb;
  const int ea = ListDir(a_->Full(rel), &la);
  const int eb = ListDir(b_->Full(rel), &lb);
  if (ea != eb)
    return Fail(rel, "readdir differs", ea ? ErrName(ea) : "ok", eb ? ErrName(eb) : "ok");
  if (la != lb) {
    // Show only the entries that differ.
    std::vector<std::pair<std::string, int>> only_a, only_b;
    std::set_difference(la.begin(), la.end(), lb.begin(), lb.end(), std::back_inserter(only_a));
    std::set_difference(lb.begin(), lb.end(), la.begin(), la.end(), std::back_inserter(only_b));
    return Fail(rel, "directory listings differ (name/d_type, only the differing entries)",
                FormatListing(only_a), FormatListing(only_b));
  }
  for (const auto& [name, type] : la) {
    if (depth == 0 && (name == ".snapshot" || name == ".vssfs")) {
      return Fail(rel, "reserved name inside the workspace", name, name);
    }
    if (!Entry(rel.empty() ? name : rel + "/" + name, depth + 1)) return false;
  }
  return true;
}

bool TreeChecker::Contents(const std::string& rel) {
  Fd fa(open(a_->Full(rel).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  const int ea = fa.valid() ? 0 : errno;
  Fd fb(open(b_->Full(rel).c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  const int eb = fb.valid() ? 0 : errno;
  if (ea != 0 || eb != 0) {
    if (ea == eb) return true;
    return Fail(rel, "open for reading differs", ea ? ErrName(ea) : "ok", eb ? ErrName(eb) : "ok");
  }
  const size_t kChunk = buf_a_.size();
  char* ba = buf_a_.data();
  char* bb = buf_b_.data();
  for (off_t off = 0;; off += static_cast<off_t>(kChunk)) {
    const ssize_t na = PreadFull(fa.get(), ba, kChunk, off);
    const ssize_t nb = PreadFull(fb.get(), bb, kChunk, off);
    if (na < 0 || nb < 0) {
      return Fail(rel, StrPrintf("read error at offset %lld", static_cast<long long>(off)),
                  na < 0 ? ErrName(errno) : "ok", nb < 0 ? ErrName(errno) : "ok");
    }
    if (na != nb || memcmp(ba, bb, static_cast<size_t>(na)) != 0) {
      const std::string ca(ba, static_cast<size_t>(na)), cb(bb, static_cast<size_t>(nb));
      return Fail(rel,
                  StrPrintf("contents differ (in the chunk at offset %lld): %s",
                            static_cast<long long>(off), DataDiff(ca, cb).c_str()),
                  DataSummary(ca), DataSummary(cb));
    }
    if (na < static_cast<ssize_t>(kChunk)) return true;
  }
}

// All xattr names and values (including system.posix_acl_* and, for a root
// checker, trusted.* and security.*).
bool TreeChecker::Xattrs(const std::string& rel) {
  auto list = [this](const std::string& full, std::string* names) -> int {
    const ssize_t n = llistxattr(full.c_str(), buf_a_.data(), buf_a_.size());
    if (n < 0) return errno;
    *names = SortedNames(buf_a_.data(), static_cast<size_t>(n));
    return 0;
  };
  std::string na, nb;
  const int ea = list(a_->Full(rel), &na);
  const int eb = list(b_->Full(rel), &nb);
  if (ea != eb || na != nb) {
    return Fail(rel, "xattr names differ", ea ? ErrName(ea) : "[" + na + "]",
                eb ? ErrName(eb) : "[" + nb + "]");
  }
  if (na.empty()) return true;
  size_t pos = 0;
  while (pos <= na.size()) {
    const size_t comma = na.find(',', pos);
    const std::string name =
        na.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? na.size() + 1 : comma + 1;
    const ssize_t la = lgetxattr(a_->Full(rel).c_str(), name.c_str(), buf_a_.data(), buf_a_.size());
    const int ga = la < 0 ? errno : 0;
    const ssize_t lb = lgetxattr(b_->Full(rel).c_str(), name.c_str(), buf_b_.data(), buf_b_.size());
    const int gb = lb < 0 ? errno : 0;
    const std::string va(buf_a_.data(), la > 0 ? static_cast<size_t>(la) : 0);
    const std::string vb(buf_b_.data(), lb > 0 ? static_cast<size_t>(lb) : 0);
    if (ga != gb || va != vb) {
      return Fail(
          rel,
          "xattr " + Quote(name) + " differs" + (ga == 0 && gb == 0 ? ": " + DataDiff(va, vb) : ""),
          ga ? ErrName(ga) : DataSummary(va), gb ? ErrName(gb) : DataSummary(vb));
    }
  }
  return true;
}

// ---------------------------------------------------------------------------
// Snapshot model.

// Runs argv, collecting stdout and stderr in *output. Returns the exit
// status, or -1 when it could not run.
int RunProgram(const std::vector<std::string>& argv, std::string* output) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return -1;
  fflush(stdout);
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(out[1], 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(out[1]);
  output->clear();
  char buf[4096];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) output->append(buf, static_cast<size_t>(n));
  }
  close(out[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

class Snapper {
 public:
  Snapper(const Options& o, const Side& a, const Side& b)
      : o_(o), a_root_(a.root), rng_(o.seed ^ 0x5eed) {
    char* mount = realpath(o.mount.c_str(), nullptr);
    mount_ = mount ? mount : o.mount;
    free(mount);
    rel_ = b.root.rfind(mount_ + "/", 0) == 0 ? b.root.substr(mount_.size() + 1) : "";
    models_ = o.models.empty() ? a.root + "-models" : o.models;
  }

  // Setup problems (DIR_B not inside MNT, no models directory).
  std::string Prepare() {
    if (rel_.empty()) return "DIR_B is not inside the mount " + mount_ + "\n";
    if (mkdir(models_.c_str(), 0700) != 0 && errno != EEXIST) {
      return "cannot create " + models_ + ": " + strerror(errno) + "\n";
    }
    return "";
  }

  // One step at a tree check: maybe snapshot, maybe delete, then compare all.
  std::string Step() {
    if (SplitMix(&rng_) % 100 < o_.snapshot_percent) {
      if (std::string r = Take(); !r.empty()) return r;
    }
    if (live_.size() > 3 && SplitMix(&rng_) % 100 < 40) {
      const size_t i = SplitMix(&rng_) % live_.size();
      if (std::string r = Delete(i); !r.empty()) return r;
    }
    return CompareAll();
  }

  std::string CompareAll() {
    for (auto& m : live_) {
      const std::string report = m->checker->Check();
      if (!report.empty()) return "snapshot " + m->name + " differs from its model: " + report;
    }
    return "";
  }

  // Deletes every snapshot and model unless they are to be kept.
  std::string Finish() {
    if (o_.keep_snapshots) {
      Print(StrPrintf("difftest: %zu snapshots kept with their models in %s\n", live_.size(),
                      models_.c_str()));
      return "";
    }
    while (!live_.empty()) {
      if (std::string r = Delete(live_.size() - 1); !r.empty()) return r;
    }
    rmdir(models_.c_str());
    return "";
  }

  size_t taken() const { return taken_; }
  // Snapshots taken but not modeled (see Take).
  size_t unmodeled() const { return unmodeled_; }
  size_t deleted() const { return deleted_; }

 private:
  struct Model {
    std::string name;
    Side model;
    Side snap;
    std::unique_ptr<TreeChecker> checker;
  };

  std::string Take() {
    const std::string name = a_root_.substr(a_root_.rfind('/') + 1) + StrPrintf("-s%zu", ++taken_);
    std::string out;
    int rc = RunProgram({o_.vssctl, "-m", mount_, "snapshot", "create", "--name", name}, &out);
    if (rc != 0) return "vssctl snapshot create failed (" + std::to_string(rc) + "): " + out;
    const std::string model = models_ + "/" + name;
    rc = RunProgram({"cp", "-a", "--", a_root_, model}, &out);
    if (rc != 0 && out.find("No space left on device") != std::string::npos) {
      // The copy of the native tree, not vssfs, ran out of room: ext4 could
      // not fit an inode's extended attributes in the order cp sets them
      // (user xattrs, then the ACL) though the original holds them. Nothing
      // to model this snapshot with: it goes, and the run goes on.
      RemoveTree(model);
      ++unmodeled_;
      Print("difftest: snapshot " + name + " not modeled (cp -a: no room for xattrs)\n");
      rc = RunProgram({o_.vssctl, "-m", mount_, "snapshot", "delete", name}, &out);
      if (rc != 0) return "vssctl snapshot delete failed (" + std::to_string(rc) + "): " + out;
      return "";
    }
    if (rc != 0) return "cp -a of the model failed: " + out;
    {
      std::ofstream f(models_ + "/" + name + ".path");
      f << rel_ << "\n";
    }
    Add(name, model, mount_ + "/.snapshot/" + name + "/" + rel_);
    if (o_.verbose) Print("difftest: took snapshot " + name + "\n");
    return "";
  }

  std::string Delete(size_t i) {
    std::string out;
    const std::string name = live_[i]->name;
    int rc = RunProgram({o_.vssctl, "-m", mount_, "snapshot", "delete", name}, &out);
    if (rc != 0) return "vssctl snapshot delete failed (" + std::to_string(rc) + "): " + out;
    struct stat st;
    if (lstat(live_[i]->snap.root.c_str(), &st) == 0) {
      return "snapshot " + name + " is still visible after delete\n";
    }
    RemoveTree(live_[i]->model.root);
    unlink((models_ + "/" + name + ".path").c_str());
    live_.erase(live_.begin() + static_cast<ptrdiff_t>(i));
    ++deleted_;
    if (o_.verbose) Print("difftest: deleted snapshot " + name + "\n");
    return "";
  }

 public:
  void Add(const std::string& name, const std::string& model, const std::string& snap) {
    auto m = std::make_unique<Model>();
    m->name = name;
    m->model.root = model;
    m->snap.root = snap;
    m->checker = std::make_unique<TreeChecker>(&m->model, &m->snap);
    live_.push_back(std::move(m));
  }

 private:
  const Options& o_;
  std::string a_root_;
  uint64_t rng_;
  std::string mount_;
  std::string rel_;
  std::string models_;
  size_t taken_ = 0;
  size_t deleted_ = 0;
  size_t unmodeled_ = 0;
  std::vector<std::unique_ptr<Model>> live_;
};

// ---------------------------------------------------------------------------
// Runner process.

constexpr char kMsgCheck = 'C';  // runner -> checker: quiescent, please check
constexpr char kMsgEnd = 'E';    // runner -> checker: all ops done, fds closed
constexpr char kMsgGo = 'G';     // checker -> runner: continue
constexpr char kMsgStop = 'S';   // checker -> runner: stop (mismatch)

bool SendMsg(int fd, char type, uint64_t ops) {
  char msg[9];
  msg[0] = type;
  memcpy(msg + 1, &ops, 8);
  return WriteAll(fd, msg, sizeof msg);
}

int RunnerMain(const Options& options, const std::string& root_a, const std::string& root_b,
               int to_checker, int from_checker) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  signal(SIGPIPE, SIG_IGN);  // writes to FIFOs without readers must give EPIPE
  if (options.drop_privileges) {
    if (setgroups(options.groups.size(), options.groups.data()) != 0 ||
        setresgid(options.gid, options.gid, options.gid) != 0 ||
        setresuid(options.uid, options.uid, options.uid) != 0) {
      Print(StrPrintf("difftest: cannot drop privileges to uid %u gid %u: %s\n", options.uid,
                      options.gid, strerror(errno)));
      return kExitUsage;
    }
  }
  // The umask is per process; one per run, chosen by the seed.
  static constexpr mode_t kUmasks[] = {022, 002, 077, 0};
  uint64_t useed = options.seed;
  umask(kUmasks[SplitMix(&useed) % 4]);

  Context ctx;
  ctx.options = &options;
  for (const auto& [name, weight] : kOpTable) {
    const bool excluded = std::find(options.exclude_ops.begin(), options.exclude_ops.end(), name) !=
                          options.exclude_ops.end();
    ctx.weights.push_back(excluded ? 0 : weight);
  }
  ctx.ids = MakeIds(options);
  ctx.side[0].root = root_a;
  ctx.side[1].root = root_b;
  for (Side& s : ctx.side) {
    s.dir.reset(open(s.root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!s.dir.valid()) {
      Print(StrPrintf("difftest: cannot open workspace %s as uid %u: %s\n", s.root.c_str(),
                      geteuid(), strerror(errno)));
      return kExitUsage;
    }
  }
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<uint64_t> remaining;
  for (int i = 0; i < options.threads; ++i) {
    workers.push_back(std::make_unique<Worker>(&ctx, i));
    remaining.push_back(options.ops / options.threads +
                        (static_cast<uint64_t>(i) < options.ops % options.threads ? 1 : 0));
  }
  const uint64_t quota = std::max<uint64_t>(1, options.check_every / options.threads);
  uint64_t done = 0;
  for (;;) {
    std::vector<std::thread> threads;
    uint64_t round = 0;
    for (int i = 0; i < options.threads; ++i) {
      const uint64_t n = std::min(quota, remaining[i]);
      remaining[i] -= n;
      round += n;
      if (n > 0) threads.emplace_back([&workers, i, n] { workers[i]->Run(n); });
    }
    for (auto& t : threads) t.join();
    done += round;
    if (ctx.failed.load()) return kExitMismatch;
    const bool last =
        std::all_of(remaining.begin(), remaining.end(), [](uint64_t r) { return r == 0; });
    if (last) {
      for (auto& w : workers) {
        if (!w->CloseAll()) return kExitMismatch;
      }
      SendMsg(to_checker, kMsgEnd, done);
      return kExitPass;
    }
    char reply = 0;
    if (!SendMsg(to_checker, kMsgCheck, done) || !ReadAll(from_checker, &reply, 1) ||
        reply != kMsgGo) {
      return kExitMismatch;
    }
  }
}

// ---------------------------------------------------------------------------
// Checker (the invoking process).

int MakeWorkspaces(const Options& o, std::array<Side, 2>* side) {
  std::array<std::string, 2> dirs;
  for (int s = 0; s < 2; ++s) {
    char* real = realpath(s == 0 ? o.dir_a.c_str() : o.dir_b.c_str(), nullptr);
    if (real == nullptr) {
      Print(StrPrintf("difftest: %s: %s\n", (s == 0 ? o.dir_a : o.dir_b).c_str(), strerror(errno)));
      return kExitUsage;
    }
    dirs[s] = real;
    free(real);
  }
  if (dirs[0] == dirs[1]) {
    Print("difftest: DIR_A and DIR_B are the same directory\n");
    return kExitUsage;
  }
  if (!o.reuse.empty()) {
    for (int s = 0; s < 2; ++s) {
      Side& sd = (*side)[s];
      sd.root = dirs[s] + "/" + o.reuse;
      sd.dir.reset(open(sd.root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!sd.dir) {
        Print(StrPrintf("difftest: --reuse %s: %s\n", sd.root.c_str(), strerror(errno)));
        return kExitUsage;
      }
    }
    return kExitPass;
  }
  std::string name = StrPrintf("dt-%llu", static_cast<unsigned long long>(o.seed));
  for (int n = 1;; ++n) {
    struct stat st;
    if (lstat((dirs[0] + "/" + name).c_str(), &st) != 0 &&
        lstat((dirs[1] + "/" + name).c_str(), &st) != 0)
      break;
    name = StrPrintf("dt-%llu.%d", static_cast<unsigned long long>(o.seed), n);
  }
  for (int s = 0; s < 2; ++s) {
    Side& sd = (*side)[s];
    sd.root = dirs[s] + "/" + name;
    if (mkdir(sd.root.c_str(), 0755) != 0 || chmod(sd.root.c_str(), 0755) != 0) {
      Print(StrPrintf("difftest: mkdir %s: %s\n", sd.root.c_str(), strerror(errno)));
      if (s == 1) rmdir((*side)[0].root.c_str());
      return kExitUsage;
    }
    sd.dir.reset(open(sd.root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  }
  return kExitPass;
}

}  // namespace

// ---------------------------------------------------------------------------
// Public entry points.

std::string Usage() {
  return "usage: vssfs-difftest [--seed N] [--ops N] [--threads T] [--uid U --gid G [--groups "
         "g1,g2]]\n"
         "                      [--check-every K] [--keep] [--exclude-ops K1,K2]\n"
         "                      [--stall-timeout S] [--verbose] DIR_A DIR_B\n"
         "\n"
         "Runs the same seeded random file-system operations in DIR_A (reference, a plain\n"
         "directory) and DIR_B (under test, e.g. a vssfs mount) and compares every result,\n"
         "plus a full tree comparison every K ops (default 200) and at the end.\n"
         "  --seed N        seed (default: from the clock; printed)\n"
         "  --ops N         total operations over all threads (default 10000)\n"
         "  --threads T     concurrent threads, each in its own subtree (default 2)\n"
         "  --uid/--gid     run the operations as this user (needs root), with\n"
         "  --groups        these supplementary groups\n"
         "  --keep          keep the workspaces dt-<seed> after a passing run\n"
         "  --exclude-ops K1,K2  leave out these kinds of operation (to look past a\n"
         "                  known bug): open write read truncate sync close chmod chown\n"
         "                  utimens mkdir rmdir unlink rename symlink readlink link mknod\n"
         "                  access statfs fallocate lseek copy_file_range xattr acl flock\n"
         "                  lock stat readdir rmtree\n"
         "  --verbose       print every operation\n"
         "  --vssctl PATH --mount MNT\n"
         "                  snapshot model: at tree checks take snapshots of the vssfs\n"
         "                  volume at MNT (holding DIR_B) with PATH (vssctl), copy DIR_A\n"
         "                  as each one's model, delete some, and compare every live\n"
         "                  snapshot with its model at every check\n"
         "  --snapshot-percent P  chance of a snapshot per check (default 40)\n"
         "  --models DIR    where models are kept (default DIR_A/dt-<seed>-models)\n"
         "  --reuse NAME    run in the existing identical workspaces DIR_A/NAME and\n"
         "                  DIR_B/NAME (a snapshot model and its writable clone); no\n"
         "                  fixture, nothing removed afterwards\n"
         "  --keep-snapshots  leave snapshots and models (for --verify-snapshots)\n"
         "  --verify-snapshots --mount MNT --models DIR\n"
         "                  only compare the kept snapshots with their models\n"
         "Exit status: 0 pass, 1 mismatch, 2 usage or set-up error.\n";
}

ParseResult ParseArgs(const std::vector<std::string>& args, Options* o, std::string* error) {
  std::vector<std::string> positional;
  bool have_uid = false, have_gid = false, have_groups = false;
  auto number = [&](const std::string& flag, const std::string& text, uint64_t* out) {
    if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos ||
        text.size() > 19) {
      *error = "bad number for " + flag + ": '" + text + "'";
      return false;
    }
    *out = std::stoull(text);
    return true;
  };
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    std::string value;
    const bool takes_value = arg == "--seed" || arg == "--ops" || arg == "--threads" ||
                             arg == "--uid" || arg == "--gid" || arg == "--groups" ||
                             arg == "--check-every" || arg == "--stall-timeout" ||
                             arg == "--exclude-ops" || arg == "--vssctl" || arg == "--mount" ||
                             arg == "--models" || arg == "--snapshot-percent" || arg == "--reuse";
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (takes_value) {
      if (i + 1 >= args.size()) {
        *error = arg + " needs a value";
        return ParseResult::kError;
      }
      value = args[++i];
    }
    uint64_t n = 0;
    if (arg == "-h" || arg == "--help") return ParseResult::kHelp;
    if (arg == "--verbose" || arg == "-v") {
      o->verbose = true;
    } else if (arg == "--keep") {
      o->keep = true;
    } else if (arg == "--vssctl") {
      o->vssctl = value;
    } else if (arg == "--mount") {
      o->mount = value;
    } else if (arg == "--models") {
      o->models = value;
    } else if (arg == "--reuse") {
      if (value.empty() || value.find('/') != std::string::npos || value == "." || value == "..") {
        *error = "--reuse needs a directory name";
        return ParseResult::kError;
      }
      o->reuse = value;
    } else if (arg == "--snapshot-percent") {
      if (!number(arg, value, &n) || n > 100) return ParseResult::kError;
      o->snapshot_percent = static_cast<unsigned>(n);
    } else if (arg == "--keep-snapshots") {
      o->keep_snapshots = true;
    } else if (arg == "--verify-snapshots") {
      o->verify_only = true;
    } else if (arg == "--seed") {
      if (!number(arg, value, &o->seed)) return ParseResult::kError;
      o->seed_given = true;
    } else if (arg == "--ops") {
      if (!number(arg, value, &o->ops)) return ParseResult::kError;
    } else if (arg == "--check-every") {
      if (!number(arg, value, &o->check_every) || o->check_every == 0) {
        if (error->empty()) *error = "--check-every must be at least 1";
        return ParseResult::kError;
      }
    } else if (arg == "--threads") {
      if (!number(arg, value, &n) || n < 1 || n > 64) {
        if (error->empty()) *error = "--threads must be 1..64";
        return ParseResult::kError;
      }
      o->threads = static_cast<int>(n);
    } else if (arg == "--stall-timeout") {
      if (!number(arg, value, &n) || n < 1 || n > 86400) {
        if (error->empty()) *error = "--stall-timeout must be 1..86400";
        return ParseResult::kError;
      }
      o->stall_timeout_s = static_cast<int>(n);
    } else if (arg == "--uid") {
      if (!number(arg, value, &n) || n >= 0xffffffffu) return ParseResult::kError;
      o->uid = static_cast<uid_t>(n);
      have_uid = true;
    } else if (arg == "--gid") {
      if (!number(arg, value, &n) || n >= 0xffffffffu) return ParseResult::kError;
      o->gid = static_cast<gid_t>(n);
      have_gid = true;
    } else if (arg == "--exclude-ops") {
      size_t pos = 0;
      while (pos < value.size()) {
        const size_t comma = value.find(',', pos);
        const std::string name =
            value.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        pos = comma == std::string::npos ? value.size() : comma + 1;
        const bool known = std::any_of(std::begin(kOpTable), std::end(kOpTable),
                                       [&](const auto& op) { return name == op.first; });
        if (!known) {
          *error = "unknown operation kind '" + name + "' for --exclude-ops; kinds:";
          for (const auto& op : kOpTable) *error += std::string(" ") + op.first;
          return ParseResult::kError;
        }
        o->exclude_ops.push_back(name);
      }
      if (o->exclude_ops.size() >= std::size(kOpTable)) {
        *error = "--exclude-ops excludes every operation";
        return ParseResult::kError;
      }
    } else if (arg == "--groups") {
      have_groups = true;
      o->groups.clear();
      size_t pos = 0;
      while (pos <= value.size() && !value.empty()) {
        const size_t comma = value.find(',', pos);
        const std::string g =
            value.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        if (!number("--groups", g, &n) || n >= 0xffffffffu) return ParseResult::kError;
        o->groups.push_back(static_cast<gid_t>(n));
        if (comma == std::string::npos) break;
        pos = comma + 1;
      }
    } else if (arg.size() > 1 && arg[0] == '-') {
      *error = "unknown option " + arg;
      return ParseResult::kError;
    } else {
      positional.push_back(arg);
    }
  }
  if (have_uid != have_gid) {
    *error = "--uid and --gid go together";
    return ParseResult::kError;
  }
  if (have_groups && !have_uid) {
    *error = "--groups needs --uid and --gid";
    return ParseResult::kError;
  }
  o->drop_privileges = have_uid;
  if (!o->verify_only && !o->vssctl.empty() != !o->mount.empty()) {
    *error = "--vssctl and --mount go together";
    return ParseResult::kError;
  }
  if (o->verify_only) {
    if (o->mount.empty() || o->models.empty() || !positional.empty()) {
      *error = "--verify-snapshots needs --mount and --models and no DIR_A/DIR_B";
      return ParseResult::kError;
    }
    return ParseResult::kOk;
  }
  if (positional.size() != 2) {
    *error = "expected DIR_A and DIR_B";
    return ParseResult::kError;
  }
  o->dir_a = positional[0];
  o->dir_b = positional[1];
  return ParseResult::kOk;
}

int RunDifftest(const Options& options_in) {
  Options options = options_in;
  if (!options.seed_given) {
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t s = static_cast<uint64_t>(now.tv_sec) * 1000000007ull +
                 static_cast<uint64_t>(now.tv_nsec) + static_cast<uint64_t>(getpid());
    options.seed = SplitMix(&s) % 1000000000000ull;
  }
  Print(StrPrintf("difftest: seed=%llu ops=%llu threads=%d\n",
                  static_cast<unsigned long long>(options.seed),
                  static_cast<unsigned long long>(options.ops), options.threads));
  if (options.drop_privileges && geteuid() != 0) {
    Print("difftest: --uid/--gid need root\n");
    return kExitUsage;
  }
  if (time(nullptr) < kExplicitTimeLimit) {
    Print("difftest: the clock is before 2017; timestamps cannot be classified\n");
    return kExitUsage;
  }

  std::array<Side, 2> side;
  if (const int rc = MakeWorkspaces(options, &side); rc != kExitPass) return rc;
  const Ids ids = MakeIds(options);
  auto keep_note = [&] {
    Print(StrPrintf("difftest: workspaces kept: A=%s B=%s\n", side[0].root.c_str(),
                    side[1].root.c_str()));
  };
  auto fail_line = [&] {
    keep_note();
    Print("difftest: FAIL, rerun with " + RerunHint(options) + "\n");
  };
  if (options.reuse.empty()) {
    FixtureMaker fixture(&side, ids);
    for (int i = 0; i < options.threads; ++i) {
      if (!fixture.Make(StrPrintf("t%d", i))) {
        fail_line();
        return kExitMismatch;
      }
    }
  }
  if (options.verbose) {
    Print(StrPrintf("difftest: A=%s B=%s uid=%u gid=%u\n", side[0].root.c_str(),
                    side[1].root.c_str(), options.drop_privileges ? options.uid : geteuid(),
                    options.drop_privileges ? options.gid : getegid()));
  }

  int to_checker[2], to_runner[2];
  if (pipe2(to_checker, O_CLOEXEC) != 0 || pipe2(to_runner, O_CLOEXEC) != 0) {
    Print(StrPrintf("difftest: pipe: %s\n", strerror(errno)));
    return kExitUsage;
  }
  fflush(stdout);
  const pid_t pid = fork();
  if (pid < 0) {
    Print(StrPrintf("difftest: fork: %s\n", strerror(errno)));
    return kExitUsage;
  }
  if (pid == 0) {
    close(to_checker[0]);
    close(to_runner[1]);
    const int rc = RunnerMain(options, side[0].root, side[1].root, to_checker[1], to_runner[0]);
    fflush(stdout);
    _exit(rc);
  }
  close(to_checker[1]);
  close(to_runner[0]);
  Fd from_runner(to_checker[0]);
  Fd reply(to_runner[1]);

  TreeChecker checker(&side[0], &side[1]);
  std::unique_ptr<Snapper> snapper;
  if (!options.vssctl.empty()) {
    snapper = std::make_unique<Snapper>(options, side[0], side[1]);
    if (std::string r = snapper->Prepare(); !r.empty()) {
      Print("difftest: " + r);
      kill(pid, SIGKILL);
      return kExitUsage;
    }
  }
  uint64_t checks = 0;
  uint64_t ops_done = 0;
  int result = -1;
  for (;;) {
    pollfd p{from_runner.get(), POLLIN, 0};
    const int pr = poll(&p, 1, options.stall_timeout_s * 1000);
    if (pr < 0 && errno == EINTR) continue;
    if (pr == 0) {
      Print(StrPrintf(
          "difftest: MISMATCH: no progress for %d s after %llu ops (a hung operation on B?)\n",
          options.stall_timeout_s, static_cast<unsigned long long>(ops_done)));
      kill(pid, SIGKILL);
      result = kExitMismatch;
      break;
    }
    char msg[9];
    if (!ReadAll(from_runner.get(), msg, sizeof msg)) break;  // runner exited
    memcpy(&ops_done, msg + 1, 8);
    ++checks;
    std::string report = checker.Check();
    if (report.empty() && snapper) report = snapper->Step();
    if (report.empty() && snapper && msg[0] == kMsgEnd) report = snapper->Finish();
    if (!report.empty()) {
      Print(StrPrintf("difftest: MISMATCH in tree check #%llu (after %llu ops):\n  %s",
                      static_cast<unsigned long long>(checks),
                      static_cast<unsigned long long>(ops_done), report.c_str()));
      const char stop = kMsgStop;
      WriteAll(reply.get(), &stop, 1);
      result = kExitMismatch;
      break;
    }
    if (options.verbose) {
      Print(StrPrintf("difftest: tree check #%llu ok: %zu entries after %llu ops\n",
                      static_cast<unsigned long long>(checks), checker.entries(),
                      static_cast<unsigned long long>(ops_done)));
    }
    if (msg[0] == kMsgEnd) {
      result = kExitPass;
      break;
    }
    const char go = kMsgGo;
    WriteAll(reply.get(), &go, 1);
  }
  reply.reset();
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (result == -1) {  // the runner ended without finishing
    if (WIFEXITED(status) && WEXITSTATUS(status) == kExitMismatch) {
      result = kExitMismatch;
    } else if (WIFEXITED(status)) {
      Print(StrPrintf("difftest: runner exited with status %d\n", WEXITSTATUS(status)));
      return WEXITSTATUS(status) == kExitPass ? kExitUsage : WEXITSTATUS(status);
    } else {
      Print(StrPrintf("difftest: runner killed by signal %d\n", WTERMSIG(status)));
      return kExitUsage;
    }
  }
  if (result != kExitPass) {
    fail_line();
    return kExitMismatch;
  }
  if (!checker.have_btime() && options.verbose) {
    Print("difftest: note: A has no birth times; inode-number stability was not checked\n");
  }
  if (!options.keep && options.reuse.empty()) {
    side[0].dir.reset();
    side[1].dir.reset();
    RemoveTree(side[0].root);
    RemoveTree(side[1].root);
  }
  if (snapper) {
    Print(StrPrintf(
        "difftest: snapshots: %zu taken, %zu deleted, %zu not modeled, all others matched their "
        "models\n",
        snapper->taken(), snapper->deleted(), snapper->unmodeled()));
  }
  Print(StrPrintf("difftest: PASS %llu ops, %llu tree checks, seed=%llu\n",
                  static_cast<unsigned long long>(ops_done),
                  static_cast<unsigned long long>(checks),
                  static_cast<unsigned long long>(options.seed)));
  return kExitPass;
}

int VerifySnapshots(const Options& options) {
  Snapper snapper(options, Side{}, Side{});
  DirPtr d{opendir(options.models.c_str())};
  if (!d) {
    Print(StrPrintf("difftest: %s: %s\n", options.models.c_str(), strerror(errno)));
    return kExitUsage;
  }
  char* real = realpath(options.mount.c_str(), nullptr);
  const std::string mount = real ? real : options.mount;
  free(real);
  size_t n = 0;
  while (dirent* e = readdir(d.get())) {
    std::string file = e->d_name;
    if (file.size() < 6 || file.substr(file.size() - 5) != ".path") continue;
    const std::string name = file.substr(0, file.size() - 5);
    std::ifstream f(options.models + "/" + file);
    std::string rel;
    std::getline(f, rel);
    snapper.Add(name, options.models + "/" + name, mount + "/.snapshot/" + name + "/" + rel);
    ++n;
  }
  const std::string report = snapper.CompareAll();
  if (!report.empty()) {
    Print("difftest: MISMATCH: " + report);
    return kExitMismatch;
  }
  Print(StrPrintf("difftest: PASS %zu snapshots match their models\n", n));
  return kExitPass;
}

}  // namespace vssfs::difftest
