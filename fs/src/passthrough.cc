#include "passthrough.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/capability.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <new>
#include <set>
#include <vector>

#include "backing_xattr.h"
#include "cached_read.h"
#include "channel.h"
#include "creds.h"
#include "log.h"
#include "vssfs/cow_store/store_dir.h"
#include "vssfs/fs/preflight.h"

namespace vssfs::fs {

using cow_store::Result;
using cow_store::Status;
using cow_store::UniqueFd;

namespace {

constexpr char kSnapshotDirName[] = ".snapshot";
constexpr char kCapabilityXattr[] = "security.capability";
// Directory offset of the end of the virtual ".snapshot" entry that follows
// the backing entries of the root directory. Backing cookies never take this
// value in practice (ext4's largest hash cookie and end marker are
// 0x7fffffffffffffff, tmpfs/xfs/btrfs use small numbers).
constexpr off_t kAfterSnapshotEntryOffset = INT64_MAX - 1;

Filesystem& Fs(fuse_req_t req) { return *static_cast<Filesystem*>(fuse_req_userdata(req)); }

// Runs a handler body, turning exceptions into errno values: nothing may
// unwind into libfuse.
template <typename F>
int Run(F&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  } catch (...) {
    return -EIO;
  }
}

bool IsDotOrDotDot(const char* name) {
  return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

// Which reserved root name `name` is, if any, when looked up in `parent`.
enum class Reserved { kNone, kStore, kSnapshot };
Reserved ReservedName(fuse_ino_t parent, const char* name) {
  if (parent != FUSE_ROOT_ID) return Reserved::kNone;
  if (std::strcmp(name, cow_store::kDefaultStoreName) == 0) return Reserved::kStore;
  if (std::strcmp(name, kSnapshotDirName) == 0) return Reserved::kSnapshot;
  return Reserved::kNone;
}

// The errno for creating an entry called `name` in `parent`, or 0.
int CheckNewName(fuse_ino_t parent, const char* name) {
  if (parent >= kReservedNodeIdBase) return -EROFS;
  switch (ReservedName(parent, name)) {
    case Reserved::kStore:
      return -EPERM;
    case Reserved::kSnapshot:
      return -EEXIST;
    case Reserved::kNone:
      return 0;
  }
  return 0;
}

// Adjusts open(2) flags for the backing descriptor. With the writeback cache
// the kernel may read pages of a file opened write-only and computes append
// positions itself. O_DIRECT is dropped: the kernel already bypasses its
// cache for such opens, and libfuse's buffers do not meet O_DIRECT alignment.
int BackingOpenFlags(int flags, bool writeback) {
  flags &= ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW | O_DIRECT);
  if (writeback) {
    if ((flags & O_ACCMODE) == O_WRONLY) flags = (flags & ~O_ACCMODE) | O_RDWR;
    flags &= ~O_APPEND;
  }
  return flags | O_CLOEXEC;
}

// Runs `op` on this thread as the request's caller without CAP_FSETID, so
// the backing filesystem clears set-id bits and file capabilities as it
// would for that caller (creds.h). Returns op()'s result, or -EPERM if the
// switch failed.
std::vector<gid_t> GroupsOf(fuse_req_t req) {
  std::vector<gid_t> groups(32);
  int n = fuse_req_getgroups(req, static_cast<int>(groups.size()), groups.data());
  if (n > static_cast<int>(groups.size())) {
    groups.resize(static_cast<size_t>(n));
    n = fuse_req_getgroups(req, n, groups.data());
  }
  groups.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return groups;
}

template <typename F>
auto AsUnprivilegedCaller(fuse_req_t req, F&& op) -> decltype(op()) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  std::vector<gid_t> groups = GroupsOf(req);
  ScopedUnprivilegedCaller caller(ctx->uid, ctx->gid, groups.data(),
                                  static_cast<int>(groups.size()));
  if (!caller.ok()) return -EPERM;
  return op();
}

// Whether an operation on `fd` (an open file or O_PATH descriptor) that may
// clear set-id bits (chown, fallocate, copy destination) must run as the
// caller: the file has set-id bits and the caller lacks CAP_FSETID. The
// kernel flags writes, truncates and O_TRUNC itself
// (FUSE_HANDLE_KILLPRIV_V2) but not these.
bool MayDropSetidFor(fuse_req_t req, int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) return false;
  if ((st.st_mode & (S_ISUID | S_ISGID)) == 0) return false;
  return !ProcessHasCapability(fuse_req_ctx(req)->pid, CAP_FSETID);
}

// ---- replies: each handler below has exactly one reply statement --------

void ReplyErrOrEntry(fuse_req_t req, int r, const fuse_entry_param& e) {
  if (r == 0) {
    fuse_reply_entry(req, &e);
  } else {
    fuse_reply_err(req, -r);
  }
}

// The caller of `req`, for snapshot clone changes.
SnapshotView::Caller CallerOf(fuse_req_t req, bool kill_suidgid) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  SnapshotView::Caller c;
  c.uid = ctx->uid;
  c.gid = ctx->gid;
  c.umask = ctx->umask;
  c.kill_suidgid = kill_suidgid;
  c.groups = GroupsOf(req);
  c.fsetid = ProcessHasCapability(ctx->pid, CAP_FSETID);
  return c;
}

void ReplyErrOrAttr(fuse_req_t req, int r, const struct stat& st, double timeout) {
  if (r == 0) {
    fuse_reply_attr(req, &st, timeout);
  } else {
    fuse_reply_err(req, -r);
  }
}

}  // namespace

// ---------------------------------------------------------------------------

struct Filesystem::DirHandle {
  std::mutex mutex;  // Serialises readdir calls on one handle.
  std::unique_ptr<DIR, int (*)(DIR*)> dir{nullptr, closedir};
  // .snapshot and snapshot directories: no backing DIR; the entries are
  // read at opendir.
  bool virtual_only = false;
  std::vector<SnapshotView::Listed> entries;
  bool is_root = false;
  off_t offset = 0;                // Offset the DIR stream is positioned at.
  struct dirent* entry = nullptr;  // Read but not yet returned.
};

Result<std::unique_ptr<Filesystem>> Filesystem::Create(const FilesystemConfig& config) {
  std::unique_ptr<Filesystem> fs(new Filesystem(config));
  UniqueFd root(open(config.backing_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) return Status::FromErrno(errno, "open backing directory " + config.backing_dir);
  struct stat st;
  if (fstat(root.get(), &st) != 0) {
    return Status::FromErrno(errno, "stat backing directory " + config.backing_dir);
  }
  fs->atime_policy_ = AtimePolicyOf(root.get());
  fs->inodes_ = std::make_unique<InodeTable>(std::move(root), st);
  clock_gettime(CLOCK_REALTIME, &fs->mount_time_);
  return fs;
}

Status Filesystem::AttachStore(cow_store::Store* store) {
  // Before any thread exists (a plain fork).
  Result<std::unique_ptr<MountSyncer>> syncer = MountSyncer::Start(config_.mountpoint);
  if (!syncer.ok()) return syncer.status();
  syncer_ = std::move(syncer.value());
  if (std::string why; config_.flush_behind && !FlushBehind::Supported(&why)) {
    LOG_INFO("flush-behind off: %s", why.c_str());
  } else if (config_.flush_behind) {
    // Forks too, then starts a thread: last.
    Result<std::unique_ptr<FlushBehind>> fb = FlushBehind::Start(config_.mountpoint);
    if (!fb.ok()) return fb.status();
    flush_behind_ = std::move(fb.value());
  }
  const FilesystemConfig& config = config_;
  store_ = store;
  struct stat st;
  if (fstat(inodes_->root()->fd.get(), &st) != 0)
    return Status::FromErrno(errno, "stat backing root");
  Filesystem* fs = this;
  fs->mount_fd_.reset(open(config.backing_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fs->mount_fd_)
    return Status::FromErrno(errno, "open backing directory " + config.backing_dir);
  // Kept files must live on the backing filesystem (they are hard links).
  const std::string hidden = config.backing_dir + "/" + cow_store::kDefaultStoreName;
  if (mkdir(hidden.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "create " + hidden);
  }
  const std::string keep = hidden + "/keep";
  if (mkdir(keep.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "create " + keep);
  }
  fs->keep_fd_.reset(open(keep.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fs->keep_fd_) return Status::FromErrno(errno, "open " + keep);
  std::string root_handle;
  if (int r = HandleAt(fs->mount_fd_.get(), "", AT_EMPTY_PATH, &root_handle); r != 0) {
    return Status::FromErrno(-r,
                             "file handle of the backing directory (the backing filesystem "
                             "must support file handles)");
  }
  fs->cow_ = std::make_unique<CowEngine>(store, fs->mount_fd_.get(), fs->keep_fd_.get(), st.st_ino);
  fs->snaps_ =
      std::make_unique<SnapshotView>(fs->cow_.get(), st.st_ino, root_handle, config.timeout);
  Result<CowEngine::Coverage> coverage = CowEngine::CoverageOf(*store);
  if (!coverage.ok()) return coverage.status();
  fs->cow_->SetCoverage(coverage.value());
  fs->ReconcileKept();
  Result<uint64_t> orphans = store->ReclaimOrphans();
  if (!orphans.ok()) return orphans.status();
  if (orphans.value() > 0) {
    LOG_INFO("freed %llu bytes of store space left by an interrupted preservation",
             static_cast<unsigned long long>(orphans.value()));
  }
  return Status();
}

void Filesystem::ReconcileKept() {
  cow_store::Result<std::vector<std::pair<cow_store::Ino, std::string>>> kept = store_->ListKept();
  if (!kept.ok()) {
    LOG_ERROR("cannot list kept files: %s", kept.status().message().c_str());
    return;
  }
  std::set<std::string> names;
  for (const auto& [ino, handle] : kept.value()) {
    std::string name = CowEngine::KeepName(ino);
    names.insert(name);
    struct stat st;
    if (fstatat(keep_fd_.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) continue;
    // Crashed between recording and linking: the file still has its name.
    UniqueFd fd = OpenByHandle(mount_fd_.get(), handle, O_PATH | O_NOFOLLOW);
    if (!fd || linkat(fd.get(), "", keep_fd_.get(), name.c_str(), AT_EMPTY_PATH) != 0) {
      LOG_ERROR("kept file for inode %llu is gone (%s); snapshots showing it read ESTALE",
                static_cast<unsigned long long>(ino), std::strerror(errno));
    }
  }
  UniqueFd dup_fd(dup(keep_fd_.get()));
  DIR* d = dup_fd ? fdopendir(dup_fd.get()) : nullptr;
  if (d == nullptr) return;
  dup_fd.release();
  std::vector<std::string> stale;
  while (dirent* de = readdir(d)) {
    if (de->d_name[0] == '.') continue;
    if (!names.count(de->d_name)) stale.emplace_back(de->d_name);
  }
  closedir(d);
  for (const std::string& name : stale) {
    if (unlinkat(keep_fd_.get(), name.c_str(), 0) != 0 && errno == EISDIR) {
      unlinkat(keep_fd_.get(), name.c_str(), AT_REMOVEDIR);
    }
  }
  if (!stale.empty()) LOG_INFO("removed %zu kept files no snapshot needs", stale.size());
}

void Filesystem::InvalidateSnapshotDir(const std::string& name) {
  if (session_ == nullptr) return;
  fuse_lowlevel_notify_inval_inode(session_, kSnapshotDirNodeId, 0, 0);
  fuse_lowlevel_notify_inval_entry(session_, kSnapshotDirNodeId, name.c_str(), name.size());
}

Result<std::vector<cow_store::Ino>> Filesystem::ResolveTargets(
    const std::vector<std::string>& files) const {
  std::vector<cow_store::Ino> inos;
  struct stat root;
  if (fstat(mount_fd_.get(), &root) != 0) return Status::FromErrno(errno, "stat backing root");
  inos.push_back(root.st_ino);
  for (const std::string& f : files) {
    std::string rel = f;
    if (rel.rfind(config_.mountpoint + "/", 0) == 0) {
      rel = rel.substr(config_.mountpoint.size() + 1);
    } else if (!rel.empty() && rel[0] == '/') {
      return Status::Error(EINVAL, f + " is not on the volume mounted at " + config_.mountpoint);
    }
    // Walk down from the root without following symlinks: every directory
    // on the way is covered too (the snapshot shows the file at its path).
    UniqueFd dir(dup(mount_fd_.get()));
    size_t pos = 0;
    bool top = true;
    while (pos <= rel.size()) {
      size_t end = rel.find('/', pos);
      if (end == std::string::npos) end = rel.size();
      const std::string part = rel.substr(pos, end - pos);
      pos = end + 1;
      if (part.empty() || part == ".") continue;
      if (part == ".." || (top && (part == ".snapshot" || part == cow_store::kDefaultStoreName))) {
        return Status::Error(EINVAL, f + ": not a path of the live volume");
      }
      top = false;
      UniqueFd next(openat(dir.get(), part.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
      if (!next) return Status::FromErrno(errno, "target file " + f);
      struct stat st;
      if (fstat(next.get(), &st) != 0) return Status::FromErrno(errno, "target file " + f);
      inos.push_back(st.st_ino);
      dir = std::move(next);
      if (pos <= rel.size() && !S_ISDIR(st.st_mode)) {
        return Status::Error(ENOTDIR, "target file " + f + ": a component is not a directory");
      }
    }
    // A listed directory brings everything below it.
    struct stat st;
    if (fstat(dir.get(), &st) == 0 && S_ISDIR(st.st_mode)) {
      std::vector<std::string> todo = {ProcPath(dir.get()).path};
      while (!todo.empty()) {
        const std::string d = todo.back();
        todo.pop_back();
        std::unique_ptr<DIR, int (*)(DIR*)> listing(opendir(d.c_str()), closedir);
        if (!listing) return Status::FromErrno(errno, "target directory " + f);
        while (dirent* e = readdir(listing.get())) {
          const std::string n = e->d_name;
          if (n == "." || n == "..") continue;
          struct stat cst;
          if (fstatat(dirfd(listing.get()), n.c_str(), &cst, AT_SYMLINK_NOFOLLOW) != 0) continue;
          inos.push_back(cst.st_ino);
          if (S_ISDIR(cst.st_mode)) todo.push_back(d + "/" + n);
        }
      }
    }
  }
  return inos;
}

Result<cow_store::SnapshotInfo> Filesystem::CreateSnapshot(const std::string& name,
                                                           std::optional<cow_store::Guid> guid,
                                                           const std::vector<std::string>& files) {
  std::optional<std::vector<cow_store::Ino>> covered;
  if (!files.empty()) {
    Result<std::vector<cow_store::Ino>> inos = ResolveTargets(files);
    if (!inos.ok()) return inos.status();
    covered = std::move(inos.value());
  }
  // Every write that completed before this request: out of the kernel's
  // writeback cache into the backing files, then onto stable storage.
  if (!syncer_) return Status::Error(EIO, "snapshots are not available before the mount");
  // Under a hold, the flush happened when the hold was taken.
  if (!held_.owns_lock()) {
    if (Status st = syncer_->Sync(); !st.ok()) return st;
    if (syncfs(mount_fd_.get()) != 0) return Status::FromErrno(errno, "syncfs backing directory");
  }
  for (int attempt = 0;; ++attempt) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    const int64_t ns = int64_t{now.tv_sec} * 1000000000 + now.tv_nsec;
    const std::string chosen = name.empty() ? cow_store::DefaultSnapshotName(ns) : name;
    Result<cow_store::SnapshotInfo> info = Status::Error(EIO, "not taken");
    {
      // Under a set's write barrier the cut is already held, and it stays
      // held across a same-second retry below: the set's instant is the
      // barrier's, however long naming takes.
      std::unique_lock<std::shared_mutex> cut;
      if (!held_.owns_lock()) cut = cow_->Cut();
      info = store_->CreateSnapshot(chosen, guid, ns, covered ? &*covered : nullptr);
      // Births recorded for forgotten inodes are of older epochs now.
      if (info.ok()) inodes_->ClearBirths();
      // What the snapshots cover now, from the cut on: everything after a
      // whole-volume snapshot (no catalogue read under the cut), else the
      // union of the partial ones.
      if (info.ok()) {
        Result<CowEngine::Coverage> coverage =
            covered ? CowEngine::CoverageOf(*store_) : Result<CowEngine::Coverage>(nullptr);
        cow_->SetCoverage(coverage.ok() ? coverage.value() : CowEngine::Coverage());
      }
    }
    const bool retry = !info.ok() && info.status().error() == EEXIST && name.empty() && attempt < 3;
    if (!retry && held_.owns_lock()) {
      held_.unlock();
      held_ = {};
    }
    if (retry) {
      // Two default-named snapshots in one second: the second waits for the
      // next second so that names stay unique and in @GMT format.
      struct timespec wait = {0, 1000000000 - now.tv_nsec};
      nanosleep(&wait, nullptr);
      continue;
    }
    if (info.ok()) {
      snaps_->Refresh();
      InvalidateSnapshotDir(chosen);
      LOG_INFO("snapshot %s (#%llu) taken", chosen.c_str(),
               static_cast<unsigned long long>(info.value().id));
      Result<std::vector<std::string>> gone = ApplyRetention(false);
      if (!gone.ok()) LOG_ERROR("retention: %s", gone.status().message().c_str());
    }
    return info;
  }
}

Result<std::vector<std::string>> Filesystem::ApplyRetention(bool dry_run) {
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  const int64_t ns = int64_t{now.tv_sec} * 1000000000 + now.tv_nsec;
  Result<std::vector<cow_store::SnapshotInfo>> candidates =
      store_->RetentionCandidates(ns, store_->LatestSnapshot());
  if (!candidates.ok()) return candidates.status();
  std::vector<std::string> names;
  for (const cow_store::SnapshotInfo& s : candidates.value()) {
    if (!dry_run) {
      Result<cow_store::GcResult> gc = DeleteSnapshot(s.name);
      if (!gc.ok()) return gc.status();
      LOG_INFO("retention deleted snapshot %s", s.name.c_str());
    }
    names.push_back(s.name);
  }
  return names;
}

Status Filesystem::HoldWrites(int timeout_ms) {
  if (held_.owns_lock()) return Status::Error(EBUSY, "writes are already held on this volume");
  if (!syncer_) return Status::Error(EIO, "snapshots are not available before the mount");
  if (Status st = syncer_->Sync(); !st.ok()) return st;
  if (syncfs(mount_fd_.get()) != 0) return Status::FromErrno(errno, "syncfs backing directory");
  held_ = cow_->Cut();
  held_until_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  LOG_INFO("writes held for a snapshot set (at most %d ms)", timeout_ms);
  return Status();
}

void Filesystem::ReleaseHold() {
  if (held_.owns_lock()) {
    held_.unlock();
    held_ = {};
    LOG_INFO("write hold released without a snapshot");
  }
}

void Filesystem::ExpireHold() {
  if (held_.owns_lock() && std::chrono::steady_clock::now() >= held_until_) {
    LOG_WARN("write hold expired before the snapshot was taken; writes resume");
    ReleaseHold();
  }
}

Result<cow_store::SnapshotInfo> Filesystem::CloneSnapshot(const std::string& key) {
  Result<cow_store::SnapshotInfo> info = store_->FindSnapshot(key);
  if (!info.ok()) return info.status();
  if (Status st = store_->CreateClone(info.value().id); !st.ok()) return st;
  snaps_->Refresh();
  // Attributes cached while the snapshot was read-only may carry its
  // long cache lifetime: drop them.
  InvalidateSnapshotDir(info.value().name);
  LOG_INFO("snapshot %s has a writable clone", info.value().name.c_str());
  return store_->GetSnapshot(info.value().id);
}

Result<cow_store::SnapshotInfo> Filesystem::FreezeSnapshot(const std::string& key) {
  Result<cow_store::SnapshotInfo> info = store_->FindSnapshot(key);
  if (!info.ok()) return info.status();
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  // The store refuses clone writes from the commit on; the view then
  // stops offering them.
  if (Status st =
          store_->FreezeClone(info.value().id, int64_t{now.tv_sec} * 1000000000 + now.tv_nsec);
      !st.ok()) {
    return st;
  }
  snaps_->Refresh();
  // Under the writeback cache the kernel keeps its own mtime and ctime of
  // regular files and does not advance them for the clone's direct writes:
  // dropping the snapshot's cached dentries (and with them every inode no
  // descriptor holds) makes the frozen state's stored times visible.
  InvalidateSnapshotDir(info.value().name);
  LOG_INFO("snapshot %s frozen", info.value().name.c_str());
  return store_->GetSnapshot(info.value().id);
}

Result<cow_store::GcResult> Filesystem::DeleteSnapshot(const std::string& key) {
  if (held_.owns_lock()) {
    return Status::Error(EBUSY, "writes are held for a snapshot set; try again shortly");
  }
  Result<cow_store::SnapshotInfo> info = store_->FindSnapshot(key);
  if (!info.ok()) return info.status();
  Result<cow_store::GcResult> gc = Status::Error(EIO, "not deleted");
  {
    auto readers = snaps_->LockForDelete();
    std::unique_lock<std::shared_mutex> cut;
    // Deleting the latest snapshot changes which epoch writers preserve for.
    if (info.value().id == store_->LatestSnapshot()) cut = cow_->Cut();
    gc = store_->DeleteSnapshot(info.value().id);
    snaps_->RefreshLocked();
  }
  if (gc.ok()) {
    Result<CowEngine::Coverage> coverage = CowEngine::CoverageOf(*store_);
    if (coverage.ok()) cow_->SetCoverage(coverage.value());
  }
  if (!gc.ok()) return gc;
  for (cow_store::Ino ino : gc.value().released) {
    std::string name = CowEngine::KeepName(ino);
    if (unlinkat(keep_fd_.get(), name.c_str(), 0) != 0 && errno != ENOENT) {
      LOG_WARN("cannot remove kept file %s: %s", name.c_str(), std::strerror(errno));
    }
  }
  InvalidateSnapshotDir(info.value().name);
  LOG_INFO("snapshot %s deleted (%llu blocks freed)", info.value().name.c_str(),
           static_cast<unsigned long long>(gc.value().blocks_freed));
  return gc;
}

void Filesystem::Forget(fuse_ino_t ino, uint64_t n) {
  if (SnapshotView::IsSnapshotNode(ino)) {
    snaps_->Forget(ino, n);
  } else {
    inodes_->Forget(ino, n);
  }
}

void Filesystem::Init(fuse_conn_info* conn) {
  auto want = [&](unsigned cap) {
    if (conn->capable & cap) conn->want |= cap;
  };
  // Defaults, overridable by -o options applied below.
  want(FUSE_CAP_WRITEBACK_CACHE);
  want(FUSE_CAP_POSIX_ACL);  // Kernel checks permissions with ACLs as the caller.
  want(FUSE_CAP_DONT_MASK);  // We apply the umask (or a default ACL) natively.
  want(FUSE_CAP_PARALLEL_DIROPS);
  want(FUSE_CAP_CACHE_SYMLINKS);
  want(FUSE_CAP_ASYNC_DIO);
  want(FUSE_CAP_ATOMIC_O_TRUNC);
  want(FUSE_CAP_READDIRPLUS);
  want(FUSE_CAP_READDIRPLUS_AUTO);
  want(FUSE_CAP_AUTO_INVAL_DATA);
  // Locks are kept by the kernel for all users of the mount.
  conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
  conn->time_gran = 1;
  conn->max_background = 64;
  conn->congestion_threshold = 48;
  if (config_.conn_opts != nullptr) fuse_apply_conn_info_opts(config_.conn_opts, conn);
  // Requests must be read through the channel hooks (channel.h), and replies
  // to requests that came through io_uring written through them.
  conn->want &= ~FUSE_CAP_SPLICE_READ;
  if (UringOffered()) conn->want &= ~(FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  writeback_ = (conn->want & FUSE_CAP_WRITEBACK_CACHE) != 0;
  LOG_INFO("kernel FUSE protocol %u.%u, max_write %u, writeback cache %s", conn->proto_major,
           conn->proto_minor, conn->max_write, writeback_ ? "on" : "off");
  StartPruner(conn->proto_minor);
}

void Filesystem::StartPruner(unsigned proto_minor) {
  NoteProtocol(proto_minor);
  struct rlimit rl {};
  const uint64_t limit = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                             ? rl.rlim_cur
                             : uint64_t{1} << 20;
  const size_t fit = DefaultInodeBudget(limit);
  size_t budget = config_.max_inodes == 0 ? fit : config_.max_inodes;
  if (budget > fit) {
    LOG_WARN("max_inodes=%zu does not fit the descriptor limit of %llu: using %zu", budget,
             static_cast<unsigned long long>(limit), fit);
    budget = fit;
  }
  // Eviction first: the table must know it can before it is shared.
  std::string evict = "off (-o inode_release=prune)";
  if (config_.inode_release != InodeRelease::kPrune) {
    const int r = mount_fd_ ? inodes_->EnableEviction(mount_fd_.get()) : -EBADF;
    evict = r == 0 ? "on"
                   : std::string("off: cannot open files by handle (") + std::strerror(-r) +
                         (r == -EPERM ? ", needs CAP_DAC_READ_SEARCH)" : ")");
  }
  std::string prune = "off (-o inode_release=handles)";
  bool can_prune = false;
  if (config_.inode_release != InodeRelease::kHandles) {
    can_prune = NotifyPrune({}) != -ENOSYS;
    prune = can_prune ? "on" : "off: the kernel lacks FUSE_NOTIFY_PRUNE (Linux 6.18)";
  }
  pruner_ = std::make_unique<InodePruner>(inodes_.get(), budget, &NotifyPrune);
  if (!can_prune) {
    pruner_->MarkUnsupported(config_.inode_release == InodeRelease::kHandles
                                 ? "-o inode_release=handles"
                                 : InodePruner::kKernelCannotPrune);
  }
  // The pruner lives as long as the table (declared after it), stopped or not.
  inodes_->SetPressureHook(pruner_->budget(), [p = pruner_.get()] { p->Poke(); });
  LOG_INFO(
      "inode budget %zu (descriptor limit %llu); closing idle files' descriptors %s; "
      "asking the kernel to forget inodes %s",
      pruner_->budget(), static_cast<unsigned long long>(limit), evict.c_str(), prune.c_str());
}

void Filesystem::StopPruner() {
  if (pruner_) pruner_->Stop();
}

std::shared_ptr<Inode> Filesystem::Get(fuse_ino_t ino) {
  std::shared_ptr<Inode> inode = inodes_->Find(ino);
  if (inode || !MadeRoom()) return inode;
  return inodes_->Find(ino);
}

bool Filesystem::MadeRoom() {
  if ((errno != EMFILE && errno != ENFILE) || !pruner_ || !multithreaded_) return false;
  const int saved = errno;
  // Forgotten entries queued for release first: closing them makes room.
  if (inodes_->FlushReleases() > 0) return true;
  LOG_DEBUG("out of descriptors (%s): asking the pruner to release some", std::strerror(saved));
  if (pruner_->Relieve(std::chrono::milliseconds(200))) {
    inodes_->FlushReleases();  // (Entries forgotten meanwhile count as released.)
    return true;
  }
  errno = saved;
  return false;
}

int Filesystem::MissingInode() {
  const int err = errno;
  return err == EMFILE || err == ENFILE || err == ENOMEM || err == EIO ? -err : -ESTALE;
}

template <typename OpenFn>
int Filesystem::OpenWithRoom(OpenFn open) {
  int fd = open();
  if (fd >= 0 || !MadeRoom()) return fd;
  return open();
}

void Filesystem::AfterInit() {
  if (after_init_done.exchange(true)) return;
  // The mount's backing_dev_info is named after its device number, listed in
  // mountinfo; reading mountinfo does not touch our own filesystem. The
  // kernel sets these at INIT, so they are changed on the first request
  // after it.
  std::string bdi;
  for (const MountEntry& m : ReadMountTable()) {
    if (m.mountpoint == config_.mountpoint) bdi = "/sys/class/bdi/" + m.device + "/";
  }
  if (bdi.empty()) return;
  auto set = [&](const char* knob, unsigned value) {
    std::ofstream out(bdi + knob);
    out << value << "\n";
    out.flush();
    if (!out) LOG_DEBUG("cannot set %s%s to %u", bdi.c_str(), knob, value);
  };
  if (config_.read_ahead_kb != 0) set("read_ahead_kb", config_.read_ahead_kb);
  if (writeback_ && config_.max_dirty_ratio != 0) {
    // FUSE mounts start with a strict 1% share of the dirty-page limit (to
    // contain untrusted daemons); vssfs is trusted and local, so its page
    // cache may hold dirty data like a local filesystem's (Linux 6.2+).
    set("strict_limit", 0);
    set("max_ratio", config_.max_dirty_ratio);
  }
}

void Filesystem::FillEntry(fuse_entry_param* e, uint64_t nodeid, uint32_t generation,
                           const struct stat& st) const {
  *e = fuse_entry_param{};
  e->ino = nodeid;
  e->generation = generation;
  e->attr = st;
  e->attr_timeout = config_.timeout;
  e->entry_timeout = config_.timeout;
}

void Filesystem::SnapshotDirStat(struct stat* st) const {
  *st = {};
  st->st_ino = kSnapshotDirNodeId;
  st->st_mode = S_IFDIR | 0555;
  st->st_nlink = 2;
  st->st_blksize = 4096;
  st->st_atim = st->st_mtim = st->st_ctim = mount_time_;
}

int Filesystem::LookupIn(const Inode& parent, const char* name, fuse_entry_param* e) {
  UniqueFd fd(
      OpenWithRoom([&] { return openat(parent.fd.get(), name, O_PATH | O_NOFOLLOW | O_CLOEXEC); }));
  if (!fd) return -errno;
  struct stat st;
  if (fstatat(fd.get(), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return -errno;
  if (st.st_dev != inodes_->dev()) {
    // Another filesystem mounted inside the backing tree: its inode numbers
    // could collide with ours and snapshots cannot preserve it.
    if (!warned_cross_device_.exchange(true)) {
      LOG_WARN(
          "'%s' is on another filesystem than the backing directory; "
          "vssfs does not cross mount points (EXDEV)",
          name);
    }
    return -EXDEV;
  }
  std::shared_ptr<Inode> inode = inodes_->Acquire(std::move(fd), st);
  if (!inode) return -EOVERFLOW;
  if (S_ISLNK(st.st_mode)) {
    std::lock_guard lock(inode->location_mutex);
    inode->location_parent = inodes_->Find(parent.nodeid);
    inode->location_name = name;
  }
  FillEntry(e, inode->nodeid, inode->generation, st);
  return 0;
}

int Filesystem::Lookup(fuse_ino_t parent, const char* name, fuse_entry_param* e) {
  if (parent == kSnapshotDirNodeId) {
    if (IsDotOrDotDot(name)) return -ENOENT;
    return snaps_->LookupSnapshot(name, e);
  }
  if (SnapshotView::IsSnapshotNode(parent)) return snaps_->Lookup(parent, name, e);
  switch (ReservedName(parent, name)) {
    case Reserved::kStore:
      return -ENOENT;
    case Reserved::kSnapshot: {
      struct stat st;
      SnapshotDirStat(&st);
      FillEntry(e, kSnapshotDirNodeId, 0, st);
      return 0;
    }
    case Reserved::kNone:
      break;
  }
  std::shared_ptr<Inode> p = Get(parent);
  if (!p) return MissingInode();
  return LookupIn(*p, name, e);
}

int Filesystem::GetAttr(fuse_ino_t ino, fuse_file_info* fi, struct stat* st) {
  if (ino == kSnapshotDirNodeId) {
    SnapshotDirStat(st);
    return 0;
  }
  if (SnapshotView::IsSnapshotNode(ino)) return snaps_->GetAttr(ino, st);
  std::shared_ptr<Inode> inode = Get(ino);
  if (!inode) return MissingInode();
  // fi->fh is a descriptor only for regular files (directory handles are
  // registry ids).
  int r = fi != nullptr && S_ISREG(inode->type)
              ? fstat(static_cast<int>(fi->fh), st)
              : fstatat(inode->fd.get(), "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
  if (r != 0) return -errno;
  if (inode->kept && st->st_nlink > 0) --st->st_nlink;  // The keep link is not a name.
  if (ino == FUSE_ROOT_ID && !config_.store_in_backing) {
    ++st->st_nlink;  // .snapshot is shown; a hidden store would cancel it.
  }
  return 0;
}

int Filesystem::SetAttr(fuse_req_t req, fuse_ino_t ino, const struct stat& attr, int to_set,
                        fuse_file_info* fi, struct stat* out) {
  if (SnapshotView::IsSnapshotNode(ino)) {
    const bool kill = (to_set & FUSE_SET_ATTR_KILL_SUID) && KillprivV2Negotiated();
    return snaps_->SetAttr(ino, CallerOf(req, kill), attr, to_set, out);
  }
  if (ino >= kReservedNodeIdBase) return -EROFS;
  std::shared_ptr<Inode> inode = Get(ino);
  if (!inode) return MissingInode();
  CowEngine::Epoch epoch = cow_->Enter();
  if (int r = cow_->PreserveInode(epoch, inode.get(), inode->fd.get(), inode->backing_ino);
      r != 0) {
    return r;
  }
  LOG_DEBUG("setattr node %llu valid %#x", static_cast<unsigned long long>(ino), to_set);
  const int path_fd = inode->fd.get();
  // The kernel passes the open file for fchmod/ftruncate/futimens; its fh is
  // a descriptor only for regular files (directory handles are registry ids).
  const int fd = fi != nullptr && S_ISREG(inode->type) ? static_cast<int>(fi->fh) : -1;

  // Order as the kernel applies a combined change: owner, size, then mode
  // and times (so a chown's clearing of set-id bits cannot undo a new mode).
  // chown(f, -1, -1) still clears set-id bits and capabilities. It reaches
  // us as a bare ctime update for regular files under the writeback cache,
  // and as an empty request for other files and, without the writeback
  // cache, for regular files too. An empty request on a regular file may
  // also be the kernel's own privilege removal before a caller's write.
  // Either way, when the file has set-id bits and the caller lacks
  // CAP_FSETID, chown(-1, -1) as the caller does what both need; otherwise
  // it is left alone. utimensat never sends either.
  if ((to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) || to_set == FUSE_SET_ATTR_CTIME ||
      (to_set == 0 && (!S_ISREG(inode->type) || MayDropSetidFor(req, path_fd)))) {
    uid_t uid = (to_set & FUSE_SET_ATTR_UID) ? attr.st_uid : static_cast<uid_t>(-1);
    gid_t gid = (to_set & FUSE_SET_ATTR_GID) ? attr.st_gid : static_cast<gid_t>(-1);
    auto chown = [&] {
      return fchownat(path_fd, "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
    };
    // Which set-id bits a chown clears depends on the caller's groups and
    // CAP_FSETID: let the backing filesystem decide as the caller.
    int r = MayDropSetidFor(req, path_fd) ? AsUnprivilegedCaller(req, chown) : chown();
    if (r != 0) return r;
    inode->caps = Inode::Caps::kUnknown;  // chown drops file capabilities.
  }
  if (to_set & FUSE_SET_ATTR_SIZE) {
    std::unique_lock serialise(inode->write_mutex);
    if (S_ISREG(inode->type)) {
      if (int r =
              cow_->PreserveData(epoch, *inode, static_cast<uint64_t>(attr.st_size), UINT64_MAX);
          r != 0) {
        return r;
      }
    }
    // Under the writeback cache the kernel keeps its own mtime: it asks for
    // a new one only when the size changes. The backing filesystem stamps
    // one on every truncate, so an unchanged size keeps the old mtime here
    // too, or the disk (and every snapshot of it) would disagree with what
    // the mount shows.
    struct stat before {};
    const bool keep_mtime = writeback_ && S_ISREG(inode->type) &&
                            !(to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) &&
                            fstat(path_fd, &before) == 0 && before.st_size == attr.st_size;
    auto truncate = [&] {
      int r =
          fd >= 0 ? ftruncate(fd, attr.st_size) : ::truncate(ProcPath(path_fd).path, attr.st_size);
      return r == 0 ? 0 : -errno;
    };
    // With FUSE_HANDLE_KILLPRIV_V2 this bit is FATTR_KILL_SUIDGID: the
    // caller lacks CAP_FSETID.
    int r = (to_set & FUSE_SET_ATTR_KILL_SUID) && KillprivV2Negotiated()
                ? AsUnprivilegedCaller(req, truncate)
                : truncate();
    if (r != 0) return r;
    if (keep_mtime) {
      const struct timespec times[2] = {{0, UTIME_OMIT}, before.st_mtim};
      if (utimensat(path_fd, "", times, AT_EMPTY_PATH) != 0) return -errno;
    }
  }
  if (to_set & FUSE_SET_ATTR_MODE) {
    int r = fd >= 0 ? fchmod(fd, attr.st_mode)
                    : fchmodat(AT_FDCWD, ProcPath(path_fd).path, attr.st_mode, 0);
    if (r != 0) return -errno;
  }
  if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
    struct timespec times[2];
    times[0].tv_nsec = UTIME_OMIT;
    times[1].tv_nsec = UTIME_OMIT;
    if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
      times[0].tv_nsec = UTIME_NOW;
    } else if (to_set & FUSE_SET_ATTR_ATIME) {
      times[0] = attr.st_atim;
    }
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
      times[1].tv_nsec = UTIME_NOW;
    } else if (to_set & FUSE_SET_ATTR_MTIME) {
      times[1] = attr.st_mtim;
    }
    int r = fd >= 0 ? futimens(fd, times) : utimensat(path_fd, "", times, AT_EMPTY_PATH);
    if (r != 0) return -errno;
  }
  return GetAttr(ino, fi, out);
}

int Filesystem::ReadLink(fuse_ino_t ino, std::string* target) {
  if (SnapshotView::IsSnapshotNode(ino)) return snaps_->ReadLink(ino, target);
  std::shared_ptr<Inode> inode = Get(ino);
  if (!inode) return MissingInode();
  char buf[PATH_MAX + 1];
  ssize_t n = readlinkat(inode->fd.get(), "", buf, sizeof buf);
  if (n < 0) return -errno;
  if (static_cast<size_t>(n) >= sizeof buf) return -ENAMETOOLONG;
  target->assign(buf, static_cast<size_t>(n));
  return 0;
}

int Filesystem::MakeNode(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
                         dev_t rdev, const char* link_target, fuse_entry_param* e) {
  if (SnapshotView::IsSnapshotNode(parent)) {
    return snaps_->MakeNode(parent, CallerOf(req, false), name, mode, rdev, link_target, e);
  }
  if (int r = CheckNewName(parent, name); r != 0) return r;
  std::shared_ptr<Inode> p = Get(parent);
  if (!p) return MissingInode();
  CowEngine::Epoch epoch = cow_->Enter();
  if (int r = PreserveParent(epoch, *p); r != 0) return r;
  const fuse_ctx* ctx = fuse_req_ctx(req);
  {
    ScopedCaller caller(ctx->uid, ctx->gid, ctx->umask);
    if (!caller.ok()) return -EPERM;
    int r;
    if (link_target != nullptr) {
      r = symlinkat(link_target, p->fd.get(), name);
    } else if (S_ISDIR(mode)) {
      r = mkdirat(p->fd.get(), name, mode & 07777);
    } else {
      r = mknodat(p->fd.get(), name, mode, rdev);
    }
    if (r != 0) return -errno;
  }
  int r = LookupIn(*p, name, e);
  if (r == 0 && epoch.active()) MarkBorn(e->ino, epoch);
  return r;
}

int Filesystem::Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
                       fuse_file_info* fi, fuse_entry_param* e) {
  if (SnapshotView::IsSnapshotNode(parent)) {
    int r = snaps_->MakeNode(parent, CallerOf(req, false), name, S_IFREG | (mode & 07777), 0,
                             nullptr, e);
    if (r == -EEXIST && !(fi->flags & O_EXCL)) r = snaps_->Lookup(parent, name, e);
    if (r != 0) return r;
    r = Open(req, e->ino, fi);
    if (r != 0) snaps_->Forget(e->ino, 1);
    return r;
  }
  if (int r = CheckNewName(parent, name); r != 0) return r;
  std::shared_ptr<Inode> p = Get(parent);
  if (!p) return MissingInode();
  const fuse_ctx* ctx = fuse_req_ctx(req);
  CowEngine::Epoch epoch = cow_->Enter();
  if (int r = PreserveParent(epoch, *p); r != 0) return r;
  UniqueFd fd;
  bool created = true;
  {
    ScopedCaller caller(ctx->uid, ctx->gid, ctx->umask);
    if (!caller.ok()) return -EPERM;
    // With snapshots, create exclusively: an existing file (a name made
    // behind the kernel's back) must go through the open path, which
    // preserves what O_TRUNC would destroy.
    const int excl = epoch.active() ? O_EXCL : (fi->flags & O_EXCL);
    fd.reset(OpenWithRoom([&] {
      return OpenNoAtime(BackingOpenFlags(fi->flags, writeback_) | O_CREAT | excl,
                         [&](int flags) { return openat(p->fd.get(), name, flags, mode); });
    }));
    if (!fd && errno == EEXIST && epoch.active() && !(fi->flags & O_EXCL)) created = false;
    if (!fd && created) return -errno;
  }
  if (!created) {
    fuse_entry_param existing{};
    if (int r = LookupIn(*p, name, &existing); r != 0) return r;
    std::shared_ptr<Inode> inode = Get(existing.ino);
    int r = inode ? OpenLive(req, *inode, epoch, fi) : MissingInode();
    if (r != 0) {
      inodes_->Forget(existing.ino, 1);
      return r;
    }
    *e = existing;
    return 0;
  }
  // The kernel holds the parent directory's lock during create, so the
  // name still denotes the new file.
  UniqueFd path_fd(
      OpenWithRoom([&] { return openat(p->fd.get(), name, O_PATH | O_NOFOLLOW | O_CLOEXEC); }));
  if (!path_fd) return -errno;
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return -errno;
  std::shared_ptr<Inode> inode = inodes_->Acquire(std::move(path_fd), st);
  if (!inode) return -EOVERFLOW;
  if (epoch.active()) inode->born = epoch.latest();
  FillEntry(e, inode->nodeid, inode->generation, st);
  fi->fh = static_cast<uint64_t>(fd.release());
  fi->keep_cache = config_.timeout > 0;
  CountOpen(*inode, fi->flags, 1);
  return 0;
}

int Filesystem::Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (SnapshotView::IsSnapshotNode(ino)) {
    int r = snaps_->Open(ino, fi->flags, CallerOf(req, RequestKillsSuidgid()), &fi->fh);
    // A clone changes: no page cache, so that every write reaches the
    // clone at once (and fails once it is frozen).
    const bool clone = snaps_->TimeoutFor(ino) == 0;
    fi->direct_io = clone;
    fi->keep_cache = r == 0 && !clone && config_.timeout > 0;
    return r;
  }
  if (ino == kSnapshotDirNodeId) return -EISDIR;
  std::shared_ptr<Inode> inode = Get(ino);
  if (!inode) return MissingInode();
  CowEngine::Epoch epoch = cow_->Enter();
  return OpenLive(req, *inode, epoch, fi);
}

int Filesystem::OpenLive(fuse_req_t req, Inode& inode_ref, const CowEngine::Epoch& epoch,
                         fuse_file_info* fi) {
  Inode* inode = &inode_ref;
  auto do_open = [&] {
    int fd = OpenWithRoom([&] {
      return OpenNoAtime(BackingOpenFlags(fi->flags, writeback_),
                         [&](int flags) { return open(ProcPath(inode->fd.get()).path, flags); });
    });
    return fd >= 0 ? fd : -errno;
  };
  std::unique_lock<std::mutex> serialise;
  if ((fi->flags & O_TRUNC) && S_ISREG(inode->type) && epoch.active()) {
    serialise = std::unique_lock(inode->write_mutex);
    if (int r = cow_->PreserveData(epoch, *inode, 0, UINT64_MAX); r != 0) return r;
  }
  // O_TRUNC by a caller without CAP_FSETID: truncate as that caller.
  int fd = (fi->flags & O_TRUNC) && RequestKillsSuidgid() ? AsUnprivilegedCaller(req, do_open)
                                                          : do_open();
  if (fd < 0) return fd;
  fi->fh = static_cast<uint64_t>(fd);
  fi->keep_cache = config_.timeout > 0;
  CountOpen(*inode, fi->flags, 1);
  if ((fi->flags & O_ACCMODE) != O_WRONLY && (fi->flags & O_NOATIME) == 0 && S_ISREG(inode->type)) {
    UpdateAccessTime(*inode, &epoch);
  }
  return 0;
}

void Filesystem::UpdateAccessTime(Inode& inode, const CowEngine::Epoch* epoch) {
  if (atime_policy_ == AtimePolicy::kNever) return;
  struct stat st;
  struct timespec now;
  if (fstat(inode.fd.get(), &st) != 0 || clock_gettime(CLOCK_REALTIME, &now) != 0) return;
  if (!AtimeUpdateDue(atime_policy_, st, now)) return;
  std::optional<CowEngine::Epoch> own;
  if (epoch == nullptr) epoch = &own.emplace(cow_->Enter());
  // A snapshot must keep showing the old time: a store that cannot take the
  // attributes (full) costs the update, never the open.
  if (cow_->PreserveInode(*epoch, &inode, inode.fd.get(), inode.backing_ino) != 0) return;
  if (int r = TouchAtime(inode.fd.get(), S_ISDIR(st.st_mode)); r != 0) {
    LOG_DEBUG("access time of inode %llu not updated: %s",
              static_cast<unsigned long long>(inode.backing_ino), std::strerror(-r));
  }
}

int Filesystem::WriteBackKernelCache(const Inode& inode) {
  if (!writeback_ || !multithreaded_ || session_ == nullptr || inode.open_writers == 0) return 0;
  // Invalidating the file's page cache makes the kernel launder dirty pages
  // through WRITE requests, served by the other worker threads (with io_uring:
  // by another entry of this CPU's queue, which must be free beforehand).
  EnsureIdleUringEntry();
  int r = fuse_lowlevel_notify_inval_inode(session_, inode.nodeid, 0, 0);
  return r == -ENOENT ? 0 : r;
}

void Filesystem::CountOpen(Inode& inode, int flags, int delta) {
  inode.open_files += delta;
  if ((flags & O_ACCMODE) == O_RDONLY) return;
  if (flush_behind_ && writeback_) {
    if (delta > 0) {
      flush_behind_->WriterOpened(inode);
    } else {
      flush_behind_->WriterClosed(inode);
    }
  } else {
    inode.open_writers += delta;
  }
}

void Filesystem::Release(fuse_ino_t ino, fuse_file_info* fi) {
  if (SnapshotView::IsSnapshotNode(ino)) {
    snaps_->Release(fi->fh);
    return;
  }
  UniqueFd fd(static_cast<int>(fi->fh));
  if (std::shared_ptr<Inode> inode = Get(ino)) CountOpen(*inode, fi->flags, -1);
  inodes_->CloseLater(std::move(fd));
}

int Filesystem::Lseek(fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi, off_t* result) {
  if (SnapshotView::IsSnapshotNode(ino)) {
    // Snapshot files are reported as all data.
    struct stat st;
    if (int r = snaps_->GetAttr(ino, &st); r != 0) return r;
    if (off < 0 || off >= st.st_size) return -ENXIO;
    *result = whence == SEEK_DATA ? off : st.st_size;
    return 0;
  }
  // The kernel asks only for SEEK_DATA and SEEK_HOLE, and without writing
  // back its cache first.
  if (std::shared_ptr<Inode> inode = Get(ino)) {
    if (int r = WriteBackKernelCache(*inode); r != 0) return r;
  }
  off_t r = lseek(static_cast<int>(fi->fh), off, whence);
  if (r < 0) return -errno;
  *result = r;
  return 0;
}

int Filesystem::Link(fuse_ino_t ino, fuse_ino_t parent, const char* name, fuse_entry_param* e) {
  if (SnapshotView::IsSnapshotNode(ino) && SnapshotView::IsSnapshotNode(parent)) {
    return snaps_->Link(ino, parent, name, e);
  }
  if (int r = CheckNewName(parent, name); r != 0) return r;
  if (ino == kSnapshotDirNodeId) return -EPERM;
  if (SnapshotView::IsSnapshotNode(ino) || SnapshotView::IsSnapshotNode(parent)) return -EXDEV;
  std::shared_ptr<Inode> inode = Get(ino);
  std::shared_ptr<Inode> p = Get(parent);
  if (!inode || !p) return MissingInode();
  CowEngine::Epoch epoch = cow_->Enter();
  if (int r = PreserveParent(epoch, *p); r != 0) return r;
  if (int r = cow_->PreserveInode(epoch, inode.get(), inode->fd.get(), inode->backing_ino);
      r != 0) {
    return r;
  }
  // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it, link through /proc.
  if (linkat(inode->fd.get(), "", p->fd.get(), name, AT_EMPTY_PATH) != 0) {
    if (errno != ENOENT || linkat(AT_FDCWD, ProcPath(inode->fd.get()).path, p->fd.get(), name,
                                  AT_SYMLINK_FOLLOW) != 0) {
      return -errno;
    }
  }
  return LookupIn(*p, name, e);
}

int Filesystem::Remove(fuse_ino_t parent, const char* name, bool directory) {
  if (SnapshotView::IsSnapshotNode(parent)) return snaps_->Remove(parent, name, directory);
  if (parent >= kReservedNodeIdBase) return -EROFS;
  switch (ReservedName(parent, name)) {
    case Reserved::kStore:
      return -ENOENT;
    case Reserved::kSnapshot:
      return -EROFS;
    case Reserved::kNone:
      break;
  }
  std::shared_ptr<Inode> p = Get(parent);
  if (!p) return MissingInode();
  CowEngine::Epoch epoch = cow_->Enter();
  if (epoch.active()) {
    if (int r = PreserveParent(epoch, *p); r != 0) return r;
    if (int r = PreserveVictim(epoch, *p, name, /*loses_name=*/true); r != 0) return r;
  }
  std::shared_ptr<Inode> victim = directory ? nullptr : PinVictim(*p, name);
  if (unlinkat(p->fd.get(), name, directory ? AT_REMOVEDIR : 0) != 0) return -errno;
  return 0;
}

std::shared_ptr<Inode> Filesystem::PinVictim(const Inode& dir, const char* name) {
  // Until some entry is evicted, every entry holds its descriptor. (An
  // eviction between this check and the deletion leaves the case of a file
  // deleted behind the mount's back: a later lookup under the number
  // compares handles, InodeTable::Acquire.)
  if (inodes_->evicted() == 0) return nullptr;
  struct stat st;
  if (fstatat(dir.fd.get(), name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
      st.st_dev != inodes_->dev()) {
    return nullptr;  // Not a file eviction applies to; the call itself reports errors.
  }
  // Reopened if evicted. Fails only if the kernel does not know the file,
  // or the entry is another file's, deleted behind the mount's back (a
  // lookup of this one replaces it).
  return Get(inodes_->NodeIdFor(st.st_ino));
}

int Filesystem::PreserveParent(const CowEngine::Epoch& epoch, Inode& dir) {
  if (!epoch.active()) return 0;
  if (int r = cow_->PreserveListing(epoch, &dir, dir.fd.get(), dir.backing_ino); r != 0) return r;
  return cow_->PreserveInode(epoch, &dir, dir.fd.get(), dir.backing_ino);
}

int Filesystem::PreserveVictim(const CowEngine::Epoch& epoch, Inode& dir, const char* name,
                               bool loses_name) {
  UniqueFd fd(
      OpenWithRoom([&] { return openat(dir.fd.get(), name, O_PATH | O_NOFOLLOW | O_CLOEXEC); }));
  if (!fd) return errno == ENOENT ? 0 : -errno;  // The call itself will fail.
  struct stat st;
  if (fstatat(fd.get(), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return -errno;
  if (st.st_dev != inodes_->dev()) return 0;
  std::shared_ptr<Inode> inode = Get(inodes_->NodeIdFor(st.st_ino));
  if (!CowEngine::Needed(epoch, inode.get())) return 0;
  if (int r = cow_->PreserveInode(epoch, inode.get(), fd.get(), st.st_ino); r != 0) return r;
  if (!loses_name) return 0;
  if (S_ISDIR(st.st_mode)) {
    // Its (empty) listing and attributes are all a snapshot needs of it.
    return cow_->PreserveListing(epoch, inode.get(), fd.get(), st.st_ino);
  }
  if (st.st_nlink == 1) {
    if (int r = cow_->Keep(epoch, fd.get(), st.st_ino); r != 0) return r;
    if (inode && epoch.Covers(st.st_ino)) inode->kept = true;
  }
  return 0;
}

void Filesystem::MarkBorn(uint64_t nodeid, const CowEngine::Epoch& epoch) {
  if (std::shared_ptr<Inode> inode = Get(nodeid)) inode->born = epoch.latest();
}

int Filesystem::Rename(fuse_ino_t parent, const char* name, fuse_ino_t newparent,
                       const char* newname, unsigned flags) {
  if (SnapshotView::IsSnapshotNode(parent) && SnapshotView::IsSnapshotNode(newparent)) {
    return snaps_->Rename(parent, name, newparent, newname, flags);
  }
  if (SnapshotView::IsSnapshotNode(parent) != SnapshotView::IsSnapshotNode(newparent) &&
      parent != kSnapshotDirNodeId && newparent != kSnapshotDirNodeId) {
    return -EXDEV;
  }
  if (parent >= kReservedNodeIdBase || newparent >= kReservedNodeIdBase) return -EROFS;
  Reserved from = ReservedName(parent, name);
  Reserved to = ReservedName(newparent, newname);
  if (from == Reserved::kStore) return -ENOENT;
  if (from == Reserved::kSnapshot || to == Reserved::kSnapshot) return -EROFS;
  if (to == Reserved::kStore) return -EPERM;
  std::shared_ptr<Inode> p = Get(parent);
  std::shared_ptr<Inode> np = Get(newparent);
  if (!p || !np) return MissingInode();
  CowEngine::Epoch epoch = cow_->Enter();
  if (epoch.active()) {
    if (int r = PreserveParent(epoch, *p); r != 0) return r;
    if (np.get() != p.get()) {
      if (int r = PreserveParent(epoch, *np); r != 0) return r;
    }
    if (int r = PreserveVictim(epoch, *p, name, false); r != 0) return r;
    if (int r = PreserveVictim(epoch, *np, newname, !(flags & RENAME_EXCHANGE)); r != 0) {
      return r;
    }
  }
  std::shared_ptr<Inode> victim = flags & RENAME_EXCHANGE ? nullptr : PinVictim(*np, newname);
  if (renameat2(p->fd.get(), name, np->fd.get(), newname, flags) != 0) return -errno;
  return 0;
}

std::shared_ptr<Filesystem::DirHandle> Filesystem::FindDir(uint64_t fh) {
  std::lock_guard lock(dir_mutex_);
  auto it = dirs_.find(fh);
  return it == dirs_.end() ? nullptr : it->second;
}

int Filesystem::OpenDir(fuse_ino_t ino, fuse_file_info* fi) {
  auto h = std::make_shared<DirHandle>();
  if (ino == kSnapshotDirNodeId) {
    h->virtual_only = true;
    h->entries.push_back(SnapshotView::Listed{".", kSnapshotDirNodeId, S_IFDIR});
    h->entries.push_back(SnapshotView::Listed{"..", FUSE_ROOT_ID, S_IFDIR});
    if (int r = snaps_->ListSnapshotNames(&h->entries); r != 0) return r;
  } else if (SnapshotView::IsSnapshotNode(ino)) {
    h->virtual_only = true;
    if (int r = snaps_->List(ino, &h->entries); r != 0) return r;
  } else {
    std::shared_ptr<Inode> inode = Get(ino);
    if (!inode) return MissingInode();
    UniqueFd fd(OpenWithRoom([&] {
      return OpenNoAtime(O_RDONLY | O_DIRECTORY | O_CLOEXEC,
                         [&](int flags) { return openat(inode->fd.get(), ".", flags); });
    }));
    if (!fd) return -errno;
    h->dir.reset(fdopendir(fd.get()));
    if (!h->dir) return -errno;
    fd.release();  // Owned by the DIR stream now.
    h->is_root = ino == FUSE_ROOT_ID;
    UpdateAccessTime(*inode, nullptr);
  }
  std::lock_guard lock(dir_mutex_);
  uint64_t id = next_dir_handle_++;
  dirs_.emplace(id, std::move(h));
  fi->fh = id;
  fi->cache_readdir = config_.timeout > 0;
  fi->keep_cache = config_.timeout > 0;
  return 0;
}

int Filesystem::ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset,
                        fuse_file_info* fi, bool plus, std::string* out) {
  std::shared_ptr<DirHandle> h = FindDir(fi->fh);
  if (!h) return -EBADF;
  std::lock_guard lock(h->mutex);
  out->resize(size);
  char* p = out->data();
  size_t rem = size;

  // Adds one entry; false when the buffer is full (entry not added).
  auto add = [&](const char* name, const fuse_entry_param& e, off_t next) {
    size_t n = plus ? fuse_add_direntry_plus(req, p, rem, name, &e, next)
                    : fuse_add_direntry(req, p, rem, name, &e.attr, next);
    if (n > rem) return false;
    p += n;
    rem -= n;
    return true;
  };

  if (h->virtual_only) {
    // Entries were read at opendir. No lookup is counted (ino 0 in
    // readdirplus entries): the kernel looks names up itself.
    for (off_t i = offset; i >= 0 && static_cast<size_t>(i) < h->entries.size(); ++i) {
      const SnapshotView::Listed& l = h->entries[static_cast<size_t>(i)];
      fuse_entry_param e{};
      e.attr.st_mode = l.type;
      e.attr.st_ino = l.nodeid;
      if (!add(l.name.c_str(), e, i + 1)) break;
    }
    out->resize(size - rem);
    return 0;
  }

  if (offset == kAfterSnapshotEntryOffset) {
    out->clear();
    return 0;
  }
  std::shared_ptr<Inode> dir_inode = plus ? Get(ino) : nullptr;
  if (plus && !dir_inode) return MissingInode();
  if (offset != h->offset) {
    seekdir(h->dir.get(), offset);
    h->entry = nullptr;
    h->offset = offset;
  }
  bool at_end = false;
  while (true) {
    if (h->entry == nullptr) {
      errno = 0;
      h->entry = readdir(h->dir.get());
      if (h->entry == nullptr) {
        if (errno != 0 && rem == size) return -errno;
        at_end = errno == 0;
        break;
      }
    }
    const dirent* d = h->entry;
    const off_t next = d->d_off;
    if (h->is_root && (std::strcmp(d->d_name, cow_store::kDefaultStoreName) == 0 ||
                       std::strcmp(d->d_name, kSnapshotDirName) == 0)) {
      h->entry = nullptr;
      h->offset = next;
      continue;
    }
    fuse_entry_param e{};
    bool counted = false;
    if (plus && !IsDotOrDotDot(d->d_name)) {
      int r = LookupIn(*dir_inode, d->d_name, &e);
      if (r == 0) {
        counted = true;
      } else if (r != -ENOENT && r != -EXDEV) {
        if (rem == size) return r;
        break;
      }
    }
    if (!counted) {
      e = fuse_entry_param{};
      e.attr.st_ino = d->d_ino;
      e.attr.st_mode = static_cast<mode_t>(d->d_type) << 12;
    }
    if (!add(d->d_name, e, next)) {
      if (counted) inodes_->Forget(e.ino, 1);
      break;
    }
    h->entry = nullptr;
    h->offset = next;
  }
  if (at_end && h->is_root) {
    struct stat st;
    SnapshotDirStat(&st);
    fuse_entry_param e{};
    FillEntry(&e, kSnapshotDirNodeId, 0, st);
    add(kSnapshotDirName, e, kAfterSnapshotEntryOffset);
  }
  out->resize(size - rem);
  return 0;
}

int Filesystem::ReleaseDir(fuse_file_info* fi) {
  std::lock_guard lock(dir_mutex_);
  dirs_.erase(fi->fh);
  return 0;
}

int Filesystem::FsyncDir(int datasync, fuse_file_info* fi) {
  std::shared_ptr<DirHandle> h = FindDir(fi->fh);
  if (!h) return -EBADF;
  if (h->virtual_only) return 0;
  int fd = dirfd(h->dir.get());
  int r = datasync ? fdatasync(fd) : fsync(fd);
  return r == 0 ? 0 : -errno;
}

int Filesystem::StatFs(struct statvfs* st) {
  return fstatvfs(inodes_->root()->fd.get(), st) == 0 ? 0 : -errno;
}

int Filesystem::GetXattr(fuse_ino_t ino, const char* name, size_t size, std::string* value) {
  if (ino == kSnapshotDirNodeId) return -ENODATA;
  if (SnapshotView::IsSnapshotNode(ino)) return snaps_->GetXattr(ino, name, size, value);
  std::shared_ptr<Inode> inode = Get(ino);
  if (!inode) return MissingInode();
  const bool caps = std::strcmp(name, kCapabilityXattr) == 0;
  if (caps && inode->caps == Inode::Caps::kAbsent) return -ENODATA;
  std::string link;
  if (int r = LiveSymlinkPath(*inode, &link); r != 0) return r;
  value->resize(size);
  ssize_t n = BackingGetXattr(inode->fd.get(), link, name, size ? value->data() : nullptr, size);
  if (caps) {
    inode->caps = n == -ENODATA ? Inode::Caps::kAbsent
                                : (n >= 0 ? Inode::Caps::kPresent : Inode::Caps::kUnknown);
  }
  if (n < 0) return static_cast<int>(n);
  value->resize(size ? static_cast<size_t>(n) : 0);
  return static_cast<int>(n);
}

int Filesystem::ListLiveXattr(fuse_ino_t ino, std::string* all) {
  std::shared_ptr<Inode> inode = Get(ino);
  if (!inode) return MissingInode();
  const int fd = inode->fd.get();
  std::string symlink;
  if (int r = LiveSymlinkPath(*inode, &symlink); r != 0) return r;
  // It can grow between the two calls; retry then.
  for (int attempt = 0;; ++attempt) {
    ssize_t n = BackingListXattr(fd, symlink, nullptr, 0);
    if (n <= 0) {
      all->clear();
      return static_cast<int>(n);
    }
    all->resize(static_cast<size_t>(n));
    ssize_t m = BackingListXattr(fd, symlink, all->data(), all->size());
    if (m >= 0) {
      all->resize(static_cast<size_t>(m));
      return static_cast<int>(m);
    }
    if (m != -ERANGE || attempt == 3) return static_cast<int>(m);
  }
}

int Filesystem::ListXattr(fuse_req_t req, fuse_ino_t ino, size_t size, std::string* list) {
  if (ino == kSnapshotDirNodeId) return 0;
  // The whole list, whatever `size` is: it may need filtering.
  std::string all;
  if (SnapshotView::IsSnapshotNode(ino)) {
    if (int r = snaps_->ListXattr(ino, &all); r < 0) return r;
  } else if (int r = ListLiveXattr(ino, &all); r < 0) {
    return r;
  }
  // Linux lists trusted.* names only to CAP_SYS_ADMIN; vssfs reads them as
  // root, so it filters them for other callers.
  constexpr char kTrusted[] = "trusted.";
  if (all.find(kTrusted) != std::string::npos &&
      !ProcessHasCapability(fuse_req_ctx(req)->pid, CAP_SYS_ADMIN)) {
    std::string kept;
    for (size_t pos = 0; pos < all.size();) {
      size_t end = all.find('\0', pos);
      if (end == std::string::npos) end = all.size();
      if (all.compare(pos, sizeof kTrusted - 1, kTrusted) != 0) {
        kept.append(all, pos, end - pos + 1);
      }
      pos = end + 1;
    }
    all.swap(kept);
  }
  if (size != 0) {
    if (all.size() > size) return -ERANGE;
    *list = std::move(all);
    return static_cast<int>(list->size());
  }
  return static_cast<int>(all.size());
}

int Filesystem::SetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value,
                         size_t size, int flags) {
  if (SnapshotView::IsSnapshotNode(ino)) {
    return snaps_->SetXattr(ino, CallerOf(req, false), name, std::string(value, size), flags);
  }
  if (ino >= kReservedNodeIdBase) return -EROFS;
  std::shared_ptr<Inode> inode = Get(ino);
  if (!inode) return MissingInode();
  CowEngine::Epoch epoch = cow_->Enter();
  if (int r = cow_->PreserveInode(epoch, inode.get(), inode->fd.get(), inode->backing_ino);
      r != 0) {
    return r;
  }
  if (std::strcmp(name, kCapabilityXattr) == 0) {
    inode->caps = Inode::Caps::kUnknown;
    // Writes made before this call but still dirty in the kernel would drop
    // the new capability when they reach the backing file: send them first.
    if (int r = WriteBackKernelCache(*inode); r != 0) return r;
  }
  std::string link;
  if (int r = LiveSymlinkPath(*inode, &link); r != 0) return r;
  auto set = [&] { return BackingSetXattr(inode->fd.get(), link, name, value, size, flags); };
  // Setting an access ACL clears set-group-ID when the caller is neither in
  // the file's group nor has CAP_FSETID: let the backing filesystem decide
  // as the caller.
  if (std::strcmp(name, "system.posix_acl_access") == 0) {
    struct stat st;
    if (fstatat(inode->fd.get(), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 &&
        (st.st_mode & S_ISGID) && !ProcessHasCapability(fuse_req_ctx(req)->pid, CAP_FSETID)) {
      return AsUnprivilegedCaller(req, set);
    }
  }
  return set();
}

int Filesystem::RemoveXattr(fuse_ino_t ino, const char* name) {
  if (SnapshotView::IsSnapshotNode(ino)) return snaps_->RemoveXattr(ino, name);
  if (ino >= kReservedNodeIdBase) return -EROFS;
  std::shared_ptr<Inode> inode = Get(ino);
  if (!inode) return MissingInode();
  CowEngine::Epoch epoch = cow_->Enter();
  if (int r = cow_->PreserveInode(epoch, inode.get(), inode->fd.get(), inode->backing_ino);
      r != 0) {
    return r;
  }
  if (std::strcmp(name, kCapabilityXattr) == 0) inode->caps = Inode::Caps::kUnknown;
  std::string link;
  if (int r = LiveSymlinkPath(*inode, &link); r != 0) return r;
  return BackingRemoveXattr(inode->fd.get(), link, name);
}

int Filesystem::Read(fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi, std::string* out) {
  if (!SnapshotView::IsSnapshotNode(ino)) return -EISDIR;
  return snaps_->Read(ino, fi->fh, size, off, out);
}

int Filesystem::PreserveForWrite(const CowEngine::Epoch& epoch, Inode* inode, off_t off,
                                 size_t len) {
  if (!epoch.active()) return 0;
  if (inode == nullptr) return -EROFS;  // A snapshot file, or unknown.
  return cow_->PreserveData(epoch, *inode, static_cast<uint64_t>(off), len);
}

int Filesystem::Fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                          fuse_file_info* fi) {
  if (SnapshotView::IsSnapshotNode(ino)) {
    return snaps_->Fallocate(ino, fi->fh, CallerOf(req, false), mode, offset, length);
  }
  if (ino >= kReservedNodeIdBase) return -EROFS;
  const int fd = static_cast<int>(fi->fh);
  std::shared_ptr<Inode> inode = Get(ino);
  CowEngine::Epoch epoch = cow_->Enter();
  std::unique_lock<std::mutex> serialise;
  if (inode) serialise = std::unique_lock(inode->write_mutex);
  if (epoch.active()) {
    if (!inode) return -ESTALE;
    uint64_t from = 0, len = 0;  // What the call may change.
    if (mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)) {
      from = static_cast<uint64_t>(offset);
      len = UINT64_MAX;  // Shifts everything after it.
    } else if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
      from = static_cast<uint64_t>(offset);
      len = static_cast<uint64_t>(length);
    }
    int r = len > 0 ? cow_->PreserveData(epoch, *inode, from, len)
                    : cow_->PreserveInode(epoch, inode.get(), inode->fd.get(), inode->backing_ino);
    if (r != 0) return r;
  }
  auto allocate = [&] { return fallocate(fd, mode, offset, length) == 0 ? 0 : -errno; };
  return MayDropSetidFor(req, fd) ? AsUnprivilegedCaller(req, allocate) : allocate();
}

ssize_t Filesystem::CopyFileRange(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
                                  fuse_file_info* fi_in, fuse_ino_t ino_out, off_t off_out,
                                  fuse_file_info* fi_out, size_t len, int flags) {
  // A snapshot file has no backing descriptor: the kernel then copies
  // through read and write (into a writable clone; else EROFS).
  if (ino_out >= kReservedNodeIdBase) {
    return SnapshotView::IsSnapshotNode(ino_out) && snaps_->TimeoutFor(ino_out) == 0 ? -EXDEV
                                                                                     : -EROFS;
  }
  if (ino_in >= kReservedNodeIdBase) return -EXDEV;
  loff_t in = off_in;
  loff_t out = off_out;
  const int fd_out = static_cast<int>(fi_out->fh);
  std::shared_ptr<Inode> inode = Get(ino_out);
  CowEngine::Epoch epoch = cow_->Enter();
  std::unique_lock<std::mutex> serialise;
  if (inode) serialise = std::unique_lock(inode->write_mutex);
  if (int r = PreserveForWrite(epoch, inode.get(), off_out, len); r != 0) return r;
  auto copy = [&]() -> ssize_t {
    ssize_t n = copy_file_range(static_cast<int>(fi_in->fh), &in, fd_out, &out, len,
                                static_cast<unsigned>(flags));
    return n >= 0 ? n : -errno;
  };
  return MayDropSetidFor(req, fd_out) ? AsUnprivilegedCaller(req, copy) : copy();
}

// ---- C trampolines --------------------------------------------------------

namespace {

void OpInit(void* userdata, fuse_conn_info* conn) {
  static_cast<Filesystem*>(userdata)->Init(conn);
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Filesystem& fs = Fs(req);
  if (!fs.after_init_done.load(std::memory_order_relaxed)) fs.AfterInit();
  fuse_entry_param e{};
  int r = Run([&] { return fs.Lookup(parent, name, &e); });
  if (r == -ENOENT && fs.config().negative_timeout > 0) {
    // A negative entry: the kernel remembers the absence.
    e = fuse_entry_param{};
    e.entry_timeout = fs.config().negative_timeout;
    r = 0;
  }
  ReplyErrOrEntry(req, r, e);
}

void OpForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Fs(req).Forget(ino, nlookup);
  fuse_reply_none(req);
}

void OpForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) Fs(req).Forget(forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

void OpGetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Filesystem& fs = Fs(req);
  if (!fs.after_init_done.load(std::memory_order_relaxed)) fs.AfterInit();
  struct stat st {};
  int r = Run([&] { return fs.GetAttr(ino, fi, &st); });
  ReplyErrOrAttr(req, r, st, fs.AttrTimeout(ino));
}

void OpSetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
  Filesystem& fs = Fs(req);
  struct stat st {};
  int r = Run([&] { return fs.SetAttr(req, ino, *attr, to_set, fi, &st); });
  ReplyErrOrAttr(req, r, st, fs.AttrTimeout(ino));
}

void OpReadLink(fuse_req_t req, fuse_ino_t ino) {
  std::string target;
  int r = Run([&] { return Fs(req).ReadLink(ino, &target); });
  if (r == 0) {
    fuse_reply_readlink(req, target.c_str());
  } else {
    fuse_reply_err(req, -r);
  }
}

void OpMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  fuse_entry_param e{};
  int r = Run([&] { return Fs(req).MakeNode(req, parent, name, mode, rdev, nullptr, &e); });
  ReplyErrOrEntry(req, r, e);
}

void OpMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  fuse_entry_param e{};
  int r = Run([&] { return Fs(req).MakeNode(req, parent, name, S_IFDIR | mode, 0, nullptr, &e); });
  ReplyErrOrEntry(req, r, e);
}

void OpSymlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
  fuse_entry_param e{};
  int r = Run([&] { return Fs(req).MakeNode(req, parent, name, S_IFLNK, 0, link, &e); });
  ReplyErrOrEntry(req, r, e);
}

void OpLink(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char* name) {
  fuse_entry_param e{};
  int r = Run([&] { return Fs(req).Link(ino, parent, name, &e); });
  ReplyErrOrEntry(req, r, e);
}

void OpUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  fuse_reply_err(req, -Run([&] { return Fs(req).Remove(parent, name, false); }));
}

void OpRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  fuse_reply_err(req, -Run([&] { return Fs(req).Remove(parent, name, true); }));
}

void OpRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
              const char* newname, unsigned flags) {
  fuse_reply_err(req,
                 -Run([&] { return Fs(req).Rename(parent, name, newparent, newname, flags); }));
}

void OpCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
              fuse_file_info* fi) {
  Filesystem& fs = Fs(req);
  fuse_entry_param e{};
  int r = Run([&] { return fs.Create(req, parent, name, mode, fi, &e); });
  if (r == 0) {
    if (fuse_reply_create(req, &e, fi) != 0) {
      // The request was interrupted: nobody will release this file.
      fs.Release(e.ino, fi);
      fs.Forget(e.ino, 1);
    }
  } else {
    fuse_reply_err(req, -r);
  }
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  int r = Run([&] { return Fs(req).Open(req, ino, fi); });
  if (r == 0) {
    if (fuse_reply_open(req, fi) != 0) Fs(req).Release(ino, fi);
  } else {
    fuse_reply_err(req, -r);
  }
}

// Reads and writes of at least this size bypass the backing page cache: they
// come from readahead and from writeback of whole pages, and the mount's page
// cache already holds the data, so the backing page cache would only keep a
// second copy. Reads (page-aligned in offset and length) use O_DIRECT, writes
// UncachedWrite.
constexpr size_t kDirectIoMin = 256 << 10;
constexpr size_t kPage = 4096;

// Reads with O_DIRECT. Returns the count read, or -EAGAIN to fall back to a
// buffered read.
ssize_t DirectRead(Inode& inode, char* buf, size_t len, off_t off) {
  int fd = inode.direct_read_fd.load();
  if (fd == -2) {
    std::lock_guard lock(inode.read_mutex);
    fd = inode.direct_read_fd.load();
    if (fd == -2) {
      fd = OpenNoAtime(O_RDONLY | O_DIRECT | O_CLOEXEC,
                       [&](int flags) { return open(ProcPath(inode.fd.get()).path, flags); });
      if (fd < 0) fd = -1;
      inode.direct_read_fd = fd;
    }
  }
  if (fd < 0) return -EAGAIN;
  ssize_t n = pread(fd, buf, len, off);
  return n < 0 ? (errno == EINVAL ? -EAGAIN : -errno) : n;
}

struct FreeDeleter {
  void operator()(char* p) const { std::free(p); }
};

void OpRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  if (ino >= kReservedNodeIdBase) {
    std::string data;
    int r = Run([&] { return Fs(req).Read(ino, size, off, fi, &data); });
    if (r == 0) {
      fuse_reply_buf(req, data.data(), data.size());
    } else {
      fuse_reply_err(req, -r);
    }
    return;
  }
  // The worker's read buffer, page-aligned for O_DIRECT.
  thread_local std::unique_ptr<char, FreeDeleter> t_buf;
  thread_local size_t t_size = 0;
  if (t_size < size) {
    void* p = nullptr;
    if (posix_memalign(&p, kPage, size) == 0) {
      t_buf.reset(static_cast<char*>(p));
      t_size = size;
    }
  }
  if (t_size < size) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  // Large aligned reads (readahead) go direct.
  ssize_t n = -EAGAIN;
  if (size >= kDirectIoMin && size % kPage == 0 && off % static_cast<off_t>(kPage) == 0) {
    std::shared_ptr<Inode> inode = Fs(req).inodes().Find(ino);
    if (inode) n = DirectRead(*inode, t_buf.get(), size, off);
  }
  if (n == -EAGAIN) {
    bool blocked = false;
    n = CachedRead(static_cast<int>(fi->fh), t_buf.get(), size, off, &blocked);
    if (n >= 0) NoteReadBlocked(blocked);
  }
  if (n >= 0) {
    fuse_reply_buf(req, t_buf.get(), static_cast<size_t>(n));
  } else {
    fuse_reply_err(req, static_cast<int>(-n));
  }
}

// pwritev2's RWF_DONTCACHE (Linux 6.14+; the value is the kernel ABI's, which
// this system's headers may predate): a buffered write whose pages are
// written back at once and dropped from the page cache when that completes.
constexpr int kRwfDontCache = 0x00000080;

// Writes `len` bytes at `data` to the backing file for writeback of the
// mount's page cache: with RWF_DONTCACHE through `fd` (the handle's buffered
// descriptor), else with O_DIRECT when `data` is page-aligned in memory,
// offset and length; -EAGAIN when neither is possible for this file. Caller
// holds inode.write_mutex.
//
// Both keep no second copy of the data in the backing page cache. Uncached
// buffered writes are preferred: the backing filesystem starts writing each
// range back as it arrives, with many ranges in flight at once, whereas
// direct writes that extend a file run one at a time at the disk's latency
// (1 GiB written sequentially and fsynced: 0.65 s of flushing against 1.0 s).
ssize_t UncachedWrite(Inode& inode, int fd, const char* data, size_t len, off_t off) {
  if (!inode.dontcache_unsupported) {
    iovec v{const_cast<char*>(data), len};
    ssize_t n = pwritev2(fd, &v, 1, off, kRwfDontCache);
    if (n >= 0) return n;
    // EOPNOTSUPP: an older kernel, or a filesystem without uncached writes.
    if (errno != EOPNOTSUPP) return -errno;
    inode.dontcache_unsupported = true;
    static std::atomic<bool> logged{false};
    if (!logged.exchange(true)) {
      VSSFS_LOG(LogLevel::kInfo,
                "uncached writes (RWF_DONTCACHE) refused by the kernel or the backing "
                "filesystem; large writes use O_DIRECT");
    }
  }
  if (inode.direct_unsupported || len % kPage != 0 || off % static_cast<off_t>(kPage) != 0 ||
      reinterpret_cast<uintptr_t>(data) % kPage != 0) {
    return -EAGAIN;
  }
  if (!inode.direct_fd) {
    inode.direct_fd.reset(open(ProcPath(inode.fd.get()).path, O_WRONLY | O_DIRECT | O_CLOEXEC));
    if (!inode.direct_fd) {
      inode.direct_unsupported = true;
      return -EAGAIN;
    }
  }
  ssize_t n = pwrite(inode.direct_fd.get(), data, len, off);
  if (n < 0 && errno == EINVAL) {
    inode.direct_unsupported = true;
    return -EAGAIN;
  }
  return n < 0 ? -errno : n;
}

void OpWriteBuf(fuse_req_t req, fuse_ino_t ino, fuse_bufvec* in, off_t off, fuse_file_info* fi) {
  // The channel put the payload on a page boundary (channel.h).
  fuse_bufvec src = *in;
  const char* payload = WritePayload();
  if (payload != nullptr && !(src.buf[0].flags & FUSE_BUF_IS_FD)) {
    src.buf[0].mem = const_cast<char*>(payload);
  }
  const size_t len = fuse_buf_size(&src);
  if (ino >= kReservedNodeIdBase) {
    // A snapshot file: only a writable clone takes it.
    int r = Run([&] {
      std::string data(len, '\0');
      fuse_bufvec dst = FUSE_BUFVEC_INIT(len);
      dst.buf[0].mem = data.data();
      ssize_t got = fuse_buf_copy(&dst, &src, static_cast<fuse_buf_copy_flags>(0));
      if (got < 0) return static_cast<int>(got);
      return Fs(req).CloneWrite(ino, fi->fh, CallerOf(req, RequestKillsSuidgid()), data.data(),
                                static_cast<size_t>(got), off);
    });
    if (r >= 0) {
      fuse_reply_write(req, static_cast<size_t>(r));
    } else {
      fuse_reply_err(req, -r);
    }
    return;
  }
  fuse_bufvec out = FUSE_BUFVEC_INIT(len);
  out.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  out.buf[0].fd = static_cast<int>(fi->fh);
  out.buf[0].pos = off;
  // Writeback sends many WRITEs for one file at once. The backing
  // filesystem serialises them on its inode lock, whose waiters spin; a
  // sleeping per-inode mutex here leaves the CPU to the writer that holds it.
  Filesystem& fs = Fs(req);
  std::shared_ptr<Inode> inode = ino >= kReservedNodeIdBase ? nullptr : fs.inodes().Find(ino);
  CowEngine::Epoch epoch = fs.cow().Enter();
  // Old blocks first, durably, then the overwrite (invariant 4). Concurrent
  // WRITEs of one file preserve their blocks in parallel (sharing commits);
  // the backing writes are serialised.
  const int preserved = Run([&] { return fs.PreserveForWrite(epoch, inode.get(), off, len); });
  std::unique_lock<std::mutex> serialise;
  if (inode) serialise = std::unique_lock(inode->write_mutex);
  const bool uncached = inode && payload != nullptr && len >= kDirectIoMin && src.count == 1 &&
                        src.buf[0].mem == payload;
  auto write = [&]() -> ssize_t {
    if (uncached) {
      ssize_t n = UncachedWrite(*inode, static_cast<int>(fi->fh), payload, len, off);
      if (n != -EAGAIN) return n;
    }
    return fuse_buf_copy(&out, &src, static_cast<fuse_buf_copy_flags>(0));
  };
  // FUSE_WRITE_KILL_SUIDGID: the writer lacks CAP_FSETID; write as it.
  ssize_t n = preserved != 0          ? preserved
              : RequestKillsSuidgid() ? AsUnprivilegedCaller(req, write)
                                      : write();
  serialise = {};
  if (n >= 0) {
    fuse_reply_write(req, static_cast<size_t>(n));
  } else {
    fuse_reply_err(req, static_cast<int>(-n));
  }
}

void OpRelease(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Fs(req).Release(ino, fi);
  fuse_reply_err(req, 0);
}

void OpFsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  int r = 0;
  if (ino < kReservedNodeIdBase) {
    int fd = static_cast<int>(fi->fh);
    r = (datasync ? fdatasync(fd) : fsync(fd)) == 0 ? 0 : errno;
  }
  fuse_reply_err(req, r);
}

void OpOpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Filesystem& fs = Fs(req);
  int r = Run([&] { return fs.OpenDir(ino, fi); });
  if (r == 0) {
    if (fuse_reply_open(req, fi) != 0) fs.ReleaseDir(fi);
  } else {
    fuse_reply_err(req, -r);
  }
}

void ReadDirCommon(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
                   bool plus) {
  std::string buf;
  int r = Run([&] { return Fs(req).ReadDir(req, ino, size, off, fi, plus, &buf); });
  if (r == 0) {
    fuse_reply_buf(req, buf.data(), buf.size());
  } else {
    fuse_reply_err(req, -r);
  }
}

void OpReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  ReadDirCommon(req, ino, size, off, fi, false);
}

void OpReadDirPlus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  ReadDirCommon(req, ino, size, off, fi, true);
}

void OpReleaseDir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  fuse_reply_err(req, -Run([&] { return Fs(req).ReleaseDir(fi); }));
}

void OpFsyncDir(fuse_req_t req, fuse_ino_t, int datasync, fuse_file_info* fi) {
  fuse_reply_err(req, -Run([&] { return Fs(req).FsyncDir(datasync, fi); }));
}

void OpStatFs(fuse_req_t req, fuse_ino_t) {
  struct statvfs st {};
  int r = Run([&] { return Fs(req).StatFs(&st); });
  if (r == 0) {
    fuse_reply_statfs(req, &st);
  } else {
    fuse_reply_err(req, -r);
  }
}

void OpGetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  std::string value;
  int r = Run([&] { return Fs(req).GetXattr(ino, name, size, &value); });
  if (r < 0) {
    fuse_reply_err(req, -r);
  } else if (size == 0) {
    fuse_reply_xattr(req, static_cast<size_t>(r));
  } else {
    fuse_reply_buf(req, value.data(), value.size());
  }
}

void OpListXattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  std::string list;
  int r = Run([&] { return Fs(req).ListXattr(req, ino, size, &list); });
  if (r < 0) {
    fuse_reply_err(req, -r);
  } else if (size == 0) {
    fuse_reply_xattr(req, static_cast<size_t>(r));
  } else {
    fuse_reply_buf(req, list.data(), list.size());
  }
}

void OpSetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
                int flags) {
  fuse_reply_err(req, -Run([&] { return Fs(req).SetXattr(req, ino, name, value, size, flags); }));
}

void OpRemoveXattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  fuse_reply_err(req, -Run([&] { return Fs(req).RemoveXattr(ino, name); }));
}

void OpFallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                 fuse_file_info* fi) {
  fuse_reply_err(req, -Run([&] { return Fs(req).Fallocate(req, ino, mode, offset, length, fi); }));
}

void OpLseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi) {
  off_t pos = 0;
  int r = Run([&] { return Fs(req).Lseek(ino, off, whence, fi, &pos); });
  if (r == 0) {
    fuse_reply_lseek(req, pos);
  } else {
    fuse_reply_err(req, -r);
  }
}

void OpCopyFileRange(fuse_req_t req, fuse_ino_t ino_in, off_t off_in, fuse_file_info* fi_in,
                     fuse_ino_t ino_out, off_t off_out, fuse_file_info* fi_out, size_t len,
                     int flags) {
  ssize_t n = Run([&]() -> int {
    ssize_t r =
        Fs(req).CopyFileRange(req, ino_in, off_in, fi_in, ino_out, off_out, fi_out, len, flags);
    return static_cast<int>(std::min<ssize_t>(r, INT32_MAX & ~4095));
  });
  if (n >= 0) {
    fuse_reply_write(req, static_cast<size_t>(n));
  } else {
    fuse_reply_err(req, static_cast<int>(-n));
  }
}

fuse_lowlevel_ops MakeOperations() {
  fuse_lowlevel_ops ops{};
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.forget = OpForget;
  ops.forget_multi = OpForgetMulti;
  ops.getattr = OpGetAttr;
  ops.setattr = OpSetAttr;
  ops.readlink = OpReadLink;
  ops.mknod = OpMknod;
  ops.mkdir = OpMkdir;
  ops.symlink = OpSymlink;
  ops.link = OpLink;
  ops.unlink = OpUnlink;
  ops.rmdir = OpRmdir;
  ops.rename = OpRename;
  ops.create = OpCreate;
  ops.open = OpOpen;
  ops.read = OpRead;
  ops.write_buf = OpWriteBuf;
  // No flush handler: locks are the kernel's and data reaches the backing
  // file on write, so close(2) has nothing to tell vssfs. libfuse answers
  // ENOSYS once and the kernel stops sending FLUSH (a round trip per close).
  ops.release = OpRelease;
  ops.fsync = OpFsync;
  ops.opendir = OpOpenDir;
  ops.readdir = OpReadDir;
  ops.readdirplus = OpReadDirPlus;
  ops.releasedir = OpReleaseDir;
  ops.fsyncdir = OpFsyncDir;
  ops.statfs = OpStatFs;
  ops.getxattr = OpGetXattr;
  ops.listxattr = OpListXattr;
  ops.setxattr = OpSetXattr;
  ops.removexattr = OpRemoveXattr;
  ops.fallocate = OpFallocate;
  ops.lseek = OpLseek;
  ops.copy_file_range = OpCopyFileRange;
  return ops;
}

}  // namespace

const fuse_lowlevel_ops& Filesystem::Operations() {
  static const fuse_lowlevel_ops kOps = MakeOperations();
  return kOps;
}

}  // namespace vssfs::fs
