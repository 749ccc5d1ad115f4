#include "cow.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "access_time.h"
#include "backing_xattr.h"
#include "log.h"
#include "vssfs/cow_store/store_dir.h"

namespace vssfs::fs {

using cow_store::DirEntry;
using cow_store::Ino;
using cow_store::InodeMeta;
using cow_store::Preservation;
using cow_store::SnapId;
using cow_store::Status;
using cow_store::UniqueFd;

namespace {

constexpr char kSnapshotDirName[] = ".snapshot";
// Blocks per Preserve() call when preserving a large range (bounds memory).
constexpr size_t kBatchBlocks = 256;

int ErrnoOf(const Status& s) { return s.ok() ? 0 : -s.error(); }

// TEST ONLY (docs/CONSISTENCY.md): VSSFS_FAULT_SKIP_PRESERVE=N makes this
// daemon drop the Nth data block it preserves (it is marked preserved but
// never stored), so that tools/vss-consistency can prove it sees a snapshot
// that lost a block. Unset or 0: no effect.
bool FaultSkipThisBlock() {
  static const uint64_t nth = [] {
    const char* v = std::getenv("VSSFS_FAULT_SKIP_PRESERVE");
    return v != nullptr ? std::strtoull(v, nullptr, 10) : 0;
  }();
  static std::atomic<uint64_t> preserved{0};
  return nth != 0 && preserved.fetch_add(1) + 1 == nth;
}

bool TestBit(const std::vector<uint64_t>& bits, uint64_t i) {
  return i / 64 < bits.size() && (bits[i / 64] >> (i % 64)) & 1;
}

void SetBit(std::vector<uint64_t>* bits, uint64_t i) {
  if (i / 64 >= bits->size()) bits->resize(i / 64 + 1);
  (*bits)[i / 64] |= uint64_t{1} << (i % 64);
}

}  // namespace

int ReadLiveListing(int dir_fd, bool is_root, std::vector<DirEntry>* out) {
  out->clear();
  UniqueFd fd(openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return -errno;
  std::unique_ptr<DIR, int (*)(DIR*)> dir(fdopendir(fd.get()), closedir);
  if (!dir) return -errno;
  const int dfd = fd.release();
  while (true) {
    errno = 0;
    dirent* d = readdir(dir.get());
    if (d == nullptr) {
      if (errno != 0) return -errno;
      break;
    }
    const char* name = d->d_name;
    if (std::strcmp(name, ".") == 0 || std::strcmp(name, "..") == 0) continue;
    if (is_root && (std::strcmp(name, cow_store::kDefaultStoreName) == 0 ||
                    std::strcmp(name, kSnapshotDirName) == 0)) {
      continue;
    }
    DirEntry de;
    de.name = name;
    de.ino = d->d_ino;
    de.type = d->d_type;
    if (de.type == DT_UNKNOWN) {
      struct stat st;
      if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;
        return -errno;
      }
      de.type = static_cast<uint8_t>(IFTODT(st.st_mode));
    }
    if (int r = HandleAt(dfd, name, 0, &de.handle); r != 0) {
      if (r == -ENOENT) continue;
      return r;
    }
    out->push_back(std::move(de));
  }
  return 0;
}

int ReadLiveMeta(int fd, bool with_xattrs, InodeMeta* meta, const std::string& symlink_path) {
  struct stat st;
  if (fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return -errno;
  *meta = InodeMeta{};
  meta->mode = st.st_mode;
  meta->uid = st.st_uid;
  meta->gid = st.st_gid;
  meta->nlink = st.st_nlink;
  meta->size = static_cast<uint64_t>(st.st_size);
  meta->blocks = static_cast<uint64_t>(st.st_blocks);
  meta->rdev = st.st_rdev;
  meta->atime = st.st_atim;
  meta->mtime = st.st_mtim;
  meta->ctime = st.st_ctim;
  if (!with_xattrs) return 0;
  // A symlink's xattrs can only be reached through a path: its current one.
  std::string link;
  if (S_ISLNK(st.st_mode)) {
    char buf[PATH_MAX + 1];
    ssize_t n = readlinkat(fd, "", buf, sizeof buf);
    if (n < 0) return -errno;
    meta->symlink.assign(buf, static_cast<size_t>(n));
    if (!symlink_path.empty() && SameInode(fd, symlink_path) == 0) {
      link = symlink_path;
    } else if (DescriptorPath(fd, &link) != 0) {
      return 0;  // Nameless: it can carry none we can read.
    }
  }
  std::string list;
  for (int attempt = 0; attempt < 4; ++attempt) {
    ssize_t n = BackingListXattr(fd, link, nullptr, 0);
    if (n < 0) return n == -ENOTSUP ? 0 : static_cast<int>(n);
    list.resize(static_cast<size_t>(n));
    n = BackingListXattr(fd, link, list.data(), list.size());
    if (n >= 0) {
      list.resize(static_cast<size_t>(n));
      break;
    }
    if (n != -ERANGE) return static_cast<int>(n);
  }
  for (size_t pos = 0; pos < list.size();) {
    size_t end = list.find('\0', pos);
    if (end == std::string::npos) end = list.size();
    std::string name = list.substr(pos, end - pos);
    pos = end + 1;
    if (name.empty()) continue;
    std::string value;
    for (int attempt = 0; attempt < 4; ++attempt) {
      ssize_t n = BackingGetXattr(fd, link, name.c_str(), nullptr, 0);
      if (n == -ENODATA) break;
      if (n < 0) return static_cast<int>(n);
      value.resize(static_cast<size_t>(n));
      n = BackingGetXattr(fd, link, name.c_str(), value.data(), value.size());
      if (n >= 0) {
        value.resize(static_cast<size_t>(n));
        meta->xattrs.emplace_back(name, value);
        break;
      }
      if (n != -ERANGE) return static_cast<int>(n);
    }
  }
  return 0;
}

CowEngine::CowEngine(cow_store::Store* store, int mount_fd, int keep_fd, ino_t root_ino)
    : store_(store),
      mount_fd_(mount_fd),
      keep_fd_(keep_fd),
      root_ino_(root_ino),
      block_size_(store->block_size()) {}

CowEngine::Epoch CowEngine::Enter() {
  Epoch e;
  e.lock_ = std::shared_lock(epoch_mutex_);
  e.latest_ = store_->LatestSnapshot();
  e.covered_ = covered_.load(std::memory_order_acquire);
  return e;
}

void CowEngine::SetCoverage(Coverage covered) {
  std::lock_guard lock(coverage_mutex_);
  covered_.store(covered.get(), std::memory_order_release);
  if (covered) coverage_history_.push_back(std::move(covered));
}

cow_store::Result<CowEngine::Coverage> CowEngine::CoverageOf(const cow_store::Store& store) {
  cow_store::Result<std::vector<cow_store::SnapshotInfo>> all = store.ListSnapshots();
  if (!all.ok()) return all.status();
  auto set = std::make_shared<std::unordered_set<Ino>>();
  for (const cow_store::SnapshotInfo& s : all.value()) {
    if (!s.partial) return Coverage();
    set->insert(s.covered.begin(), s.covered.end());
  }
  return Coverage(std::move(set));
}

std::string CowEngine::KeepName(Ino ino) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(ino));
  return buf;
}

int CowEngine::Load(Inode& inode, SnapId k, int fd) {
  if (inode.cow_epoch == k) return 0;
  cow_store::Result<cow_store::PreservedState> st = store_->GetPreservedState(inode.backing_ino, k);
  if (!st.ok()) return ErrnoOf(st.status());
  inode.cow_inode = st.value().inode;
  inode.cow_listing = st.value().listing;
  inode.cow_blocks.clear();
  for (uint64_t b : st.value().blocks) SetBit(&inode.cow_blocks, b);
  if (inode.cow_inode) {
    inode.cow_size = st.value().size;
  } else {
    struct stat sb;
    if (fstatat(fd, "", &sb, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return -errno;
    inode.cow_size = static_cast<uint64_t>(sb.st_size);
  }
  inode.cow_epoch = k;
  return 0;
}

int CowEngine::PreserveInodeLocked(const Epoch& e, int fd, Ino ino, uint64_t* size,
                                   const std::string& symlink_path) {
  Preservation batch;
  InodeMeta meta;
  if (int r = ReadLiveMeta(fd, true, &meta, symlink_path); r != 0) return r;
  if (size != nullptr) *size = meta.size;
  batch.AddInode(ino, std::move(meta));
  if (Status s = store_->Preserve(e.latest(), batch); !s.ok()) {
    LOG_ERROR("cannot preserve attributes of inode %llu: %s", static_cast<unsigned long long>(ino),
              s.message().c_str());
    return ErrnoOf(s);
  }
  Grace(ino);
  return 0;
}

int CowEngine::PreserveInode(const Epoch& e, Inode* inode, int fd, Ino ino) {
  if (!Needed(e, inode) || !e.Covers(ino)) return 0;
  if (inode == nullptr) {
    cow_store::Result<cow_store::PreservedState> st = store_->GetPreservedState(ino, e.latest());
    if (!st.ok()) return ErrnoOf(st.status());
    if (st.value().inode) return 0;
    return PreserveInodeLocked(e, fd, ino, nullptr);
  }
  std::lock_guard lock(inode->cow_mutex);
  if (int r = Load(*inode, e.latest(), fd); r != 0) return r;
  if (inode->cow_inode) return 0;
  // A symlink's descriptor may be named by a link since removed: find a
  // name that reaches its xattrs.
  std::string link;
  if (S_ISLNK(inode->type)) (void)LiveSymlinkPath(*inode, &link);
  uint64_t size = 0;
  if (int r = PreserveInodeLocked(e, fd, ino, &size, link); r != 0) return r;
  inode->cow_inode = true;
  inode->cow_size = size;
  return 0;
}

int CowEngine::PreserveListing(const Epoch& e, Inode* inode, int dir_fd, Ino ino) {
  if (!Needed(e, inode) || !e.Covers(ino)) return 0;
  std::unique_lock<std::mutex> lock;
  if (inode != nullptr) {
    lock = std::unique_lock(inode->cow_mutex);
    if (int r = Load(*inode, e.latest(), dir_fd); r != 0) return r;
    if (inode->cow_listing) return 0;
  } else {
    cow_store::Result<cow_store::PreservedState> st = store_->GetPreservedState(ino, e.latest());
    if (!st.ok()) return ErrnoOf(st.status());
    if (st.value().listing) return 0;
  }
  std::vector<DirEntry> entries;
  if (int r = ReadLiveListing(dir_fd, ino == root_ino_, &entries); r != 0) return r;
  Preservation batch;
  batch.AddListing(ino, std::move(entries));
  if (Status s = store_->Preserve(e.latest(), batch); !s.ok()) {
    LOG_ERROR("cannot preserve directory %llu: %s", static_cast<unsigned long long>(ino),
              s.message().c_str());
    return ErrnoOf(s);
  }
  Grace(ino);
  if (inode != nullptr) inode->cow_listing = true;
  return 0;
}

int CowEngine::PreserveData(const Epoch& e, Inode& inode, uint64_t off, uint64_t len) {
  if (!Needed(e, &inode) || !e.Covers(inode.backing_ino)) return 0;
  std::unique_lock lock(inode.cow_mutex);
  const int fd = inode.fd.get();
  if (int r = Load(inode, e.latest(), fd); r != 0) return r;
  if (!inode.cow_inode) {
    uint64_t size = 0;
    if (int r = PreserveInodeLocked(e, fd, inode.backing_ino, &size); r != 0) return r;
    inode.cow_inode = true;
    inode.cow_size = size;
  }
  const uint64_t bs = block_size_;
  const uint64_t size = inode.cow_size;
  if (size == 0 || off >= size || len == 0) return 0;
  const uint64_t end = len > size - off ? size : off + len;
  const uint64_t first = off / bs;
  const uint64_t last = (end - 1) / bs;
  // Blocks another request is preserving are waited for; the rest are
  // claimed and preserved here, without the lock.
  std::vector<uint64_t> todo;
  while (true) {
    todo.clear();
    bool wait = false;
    for (uint64_t b = first; b <= last; ++b) {
      if (TestBit(inode.cow_blocks, b)) continue;
      if (TestBit(inode.cow_busy, b)) {
        wait = true;
        break;
      }
      todo.push_back(b);
    }
    if (!wait) break;
    inode.cow_cv.wait(lock);
  }
  if (todo.empty()) return 0;
  for (uint64_t b : todo) SetBit(&inode.cow_busy, b);
  lock.unlock();

  std::vector<uint64_t> done;
  int result = 0;
  const ProcPath live(fd);
  UniqueFd rfd(
      OpenNoAtime(O_RDONLY | O_CLOEXEC, [&](int flags) { return open(live.path, flags); }));
  if (!rfd) result = -errno;
  std::string buf;
  for (size_t i = 0; result == 0 && i < todo.size(); i += kBatchBlocks) {
    Preservation batch;
    const size_t n = std::min(kBatchBlocks, todo.size() - i);
    // One read covering this batch's blocks (and any preserved ones between).
    const uint64_t lo = todo[i] * bs;
    const uint64_t hi = std::min(size, (todo[i + n - 1] + 1) * bs);
    buf.assign(static_cast<size_t>(hi - lo), '\0');
    size_t got = 0;
    while (got < buf.size()) {
      ssize_t r =
          pread(rfd.get(), buf.data() + got, buf.size() - got, static_cast<off_t>(lo + got));
      if (r < 0) {
        if (errno == EINTR) continue;
        result = -errno;
        break;
      }
      if (r == 0) break;  // Shorter now: the rest reads as zeros.
      got += static_cast<size_t>(r);
    }
    for (size_t j = i; result == 0 && j < i + n; ++j) {
      const uint64_t pos = todo[j] * bs;
      const size_t want = static_cast<size_t>(std::min(bs, size - pos));
      if (FaultSkipThisBlock()) {
        LOG_WARN(
            "fault injection (VSSFS_FAULT_SKIP_PRESERVE): block %llu of inode %llu not preserved",
            static_cast<unsigned long long>(todo[j]),
            static_cast<unsigned long long>(inode.backing_ino));
        continue;
      }
      batch.AddBlock(inode.backing_ino, todo[j], std::string_view(buf).substr(pos - lo, want));
    }
    if (result != 0) break;
    if (Status s = store_->Preserve(e.latest(), batch); !s.ok()) {
      LOG_ERROR("cannot preserve data of inode %llu: %s",
                static_cast<unsigned long long>(inode.backing_ino), s.message().c_str());
      result = ErrnoOf(s);
      break;
    }
    done.insert(done.end(), todo.begin() + static_cast<ptrdiff_t>(i),
                todo.begin() + static_cast<ptrdiff_t>(i + n));
  }
  if (!done.empty()) Grace(inode.backing_ino);
  lock.lock();
  for (uint64_t b : done) SetBit(&inode.cow_blocks, b);
  for (uint64_t b : todo) inode.cow_busy[b / 64] &= ~(uint64_t{1} << (b % 64));
  inode.cow_cv.notify_all();
  return result;
}

int CowEngine::Keep(const Epoch& e, int fd, Ino ino) {
  if (!e.active() || !e.Covers(ino)) return 0;
  std::string handle;
  if (int r = HandleAt(fd, "", AT_EMPTY_PATH, &handle); r != 0) return r;
  Preservation batch;
  batch.AddKept(ino, handle);
  if (Status s = store_->Preserve(e.latest(), batch); !s.ok()) return ErrnoOf(s);
  const std::string name = KeepName(ino);
  if (linkat(fd, "", keep_fd_, name.c_str(), AT_EMPTY_PATH) != 0 && errno != EEXIST) {
    int err = errno;
    LOG_ERROR("cannot keep inode %llu for snapshots: %s", static_cast<unsigned long long>(ino),
              std::strerror(err));
    return -err;
  }
  return 0;
}

}  // namespace vssfs::fs
