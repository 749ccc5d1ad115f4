#include "snapshot_view.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "access_time.h"
#include "backing_xattr.h"
#include "log.h"
#include "vssfs/cow_store/store_dir.h"

namespace vssfs::fs {

using cow_store::BlockLocation;
using cow_store::DirEntry;
using cow_store::Ino;
using cow_store::InodeMeta;
using cow_store::SnapId;
using cow_store::UniqueFd;

namespace {

constexpr int kSnapShift = 40;
constexpr uint64_t kInoMask = (uint64_t{1} << kSnapShift) - 1;
constexpr SnapId kMaxSnap = (uint64_t{1} << (63 - kSnapShift)) - 1;

int ErrnoOf(const cow_store::Status& s) { return s.ok() ? 0 : -s.error(); }

bool IsReservedRootName(const char* name) {
  return std::strcmp(name, cow_store::kDefaultStoreName) == 0 ||
         std::strcmp(name, ".snapshot") == 0;
}

}  // namespace

SnapshotView::SnapshotView(CowEngine* cow, ino_t root_ino, std::string root_handle, double timeout)
    : cow_(cow), root_ino_(root_ino), root_handle_(std::move(root_handle)), timeout_(timeout) {
  Refresh();
}

uint64_t SnapshotView::NodeId(SnapId snap, Ino ino) {
  if (snap == 0 || snap > kMaxSnap || ino > kInoMask) return 0;
  return kReservedNodeIdBase | (snap << kSnapShift) | ino;
}

void SnapshotView::Refresh() {
  std::unique_lock lock(snapshots_mutex_);
  RefreshLocked();
}

void SnapshotView::RefreshLocked() {
  cow_store::Result<std::vector<cow_store::SnapshotInfo>> all = cow_->store().ListSnapshots();
  live_.clear();
  if (!all.ok()) {
    LOG_ERROR("cannot list snapshots: %s", all.status().message().c_str());
    return;
  }
  partial_.clear();
  for (const auto& s : all.value()) {
    live_[s.id] = s.clone;
    if (s.partial) {
      partial_[s.id] =
          std::make_shared<const std::unordered_set<Ino>>(s.covered.begin(), s.covered.end());
    }
  }
}

bool SnapshotView::Shows(SnapId snap, Ino ino) const {
  auto it = partial_.find(snap);
  // Objects a clone created are numbered above every backing inode.
  return it == partial_.end() || ino > UINT32_MAX || it->second->count(ino) != 0;
}

std::shared_ptr<SnapshotView::Node> SnapshotView::FindLive(uint64_t nodeid) {
  std::shared_ptr<Node> n = Find(nodeid);
  return n && SnapshotExists(n->snap) ? n : nullptr;
}

std::shared_ptr<SnapshotView::Node> SnapshotView::Find(uint64_t nodeid) {
  std::lock_guard lock(nodes_mutex_);
  auto it = nodes_.find(nodeid);
  return it == nodes_.end() ? nullptr : it->second;
}

void SnapshotView::Forget(uint64_t node, uint64_t n) {
  std::lock_guard lock(nodes_mutex_);
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return;
  if (it->second->nlookup <= n) {
    nodes_.erase(it);
  } else {
    it->second->nlookup -= n;
  }
}

void SnapshotView::FillStat(uint64_t nodeid, const InodeMeta& m, struct stat* st) const {
  *st = {};
  st->st_ino = nodeid;
  st->st_mode = m.mode;
  st->st_nlink = m.nlink;
  st->st_uid = m.uid;
  st->st_gid = m.gid;
  st->st_rdev = m.rdev;
  st->st_size = static_cast<off_t>(m.size);
  st->st_blksize = 4096;
  st->st_blocks = static_cast<blkcnt_t>(m.blocks);
  st->st_atim = m.atime;
  st->st_mtim = m.mtime;
  st->st_ctim = m.ctime;
}

int SnapshotView::Resolve(const Node& n, bool with_xattrs, InodeMeta* meta) {
  std::shared_lock stripe(cow_->Stripe(n.ino));
  cow_store::Result<std::unique_ptr<cow_store::ReadView>> view = cow_->store().BeginRead();
  if (!view.ok()) return ErrnoOf(view.status());
  if (CloneOf(n.snap) != cow_store::CloneState::kNone) {
    cow_store::Result<std::optional<cow_store::CloneInode>> own =
        view.value()->FindCloneInode(n.snap, n.ino);
    if (!own.ok()) return ErrnoOf(own.status());
    if (own.value()) {
      *meta = std::move(own.value()->meta);
      return 0;
    }
  }
  cow_store::Result<std::optional<InodeMeta>> rec = view.value()->FindInode(n.ino, n.snap);
  if (!rec.ok()) return ErrnoOf(rec.status());
  if (rec.value()) {
    *meta = std::move(*rec.value());
    return 0;
  }
  UniqueFd fd = OpenByHandle(cow_->mount_fd(), n.handle, O_PATH | O_NOFOLLOW);
  if (!fd) return errno == ESTALE ? -ESTALE : -errno;
  return ReadLiveMeta(fd.get(), with_xattrs, meta);
}

int SnapshotView::Entries(const Node& n, std::vector<DirEntry>* out) {
  if (int r = EntriesUnfiltered(n, out); r != 0) return r;
  if (partial_.count(n.snap) != 0) {
    out->erase(std::remove_if(out->begin(), out->end(),
                              [&](const DirEntry& d) { return !Shows(n.snap, d.ino); }),
               out->end());
  }
  return 0;
}

int SnapshotView::EntriesUnfiltered(const Node& n, std::vector<DirEntry>* out) {
  out->clear();
  std::shared_lock stripe(cow_->Stripe(n.ino));
  cow_store::Result<std::unique_ptr<cow_store::ReadView>> view = cow_->store().BeginRead();
  if (!view.ok()) return ErrnoOf(view.status());
  auto add = [&](const DirEntry& d) {
    out->push_back(d);
    return true;
  };
  if (CloneOf(n.snap) != cow_store::CloneState::kNone) {
    cow_store::Result<bool> own = view.value()->HasCloneListing(n.snap, n.ino);
    if (!own.ok()) return ErrnoOf(own.status());
    if (own.value()) return ErrnoOf(view.value()->ListCloneEntries(n.snap, n.ino, "", add));
  }
  cow_store::Result<std::optional<SnapId>> listing = view.value()->FindListing(n.ino, n.snap);
  if (!listing.ok()) return ErrnoOf(listing.status());
  if (listing.value()) {
    return ErrnoOf(view.value()->ListEntries(n.ino, *listing.value(), "", add));
  }
  UniqueFd fd = OpenByHandle(cow_->mount_fd(), n.handle, O_PATH | O_DIRECTORY);
  if (!fd) return -errno;
  return ReadLiveListing(fd.get(), n.ino == root_ino_, out);
}

int SnapshotView::Enter(SnapId snap, Ino ino, mode_t type, const std::string& handle,
                        uint64_t parent, fuse_entry_param* e) {
  const uint64_t id = NodeId(snap, ino);
  if (id == 0) return -EOVERFLOW;
  std::shared_ptr<Node> node;
  {
    std::lock_guard lock(nodes_mutex_);
    std::shared_ptr<Node>& slot = nodes_[id];
    if (!slot) {
      slot = std::make_shared<Node>();
      slot->snap = snap;
      slot->ino = ino;
      slot->type = type;
      slot->handle = handle;
      slot->parent = parent;
    }
    ++slot->nlookup;
    node = slot;
  }
  InodeMeta meta;
  int r = Resolve(*node, false, &meta);
  if (r != 0) {
    Forget(id, 1);
    return r;
  }
  *e = fuse_entry_param{};
  e->ino = id;
  FillStat(id, meta, &e->attr);
  e->attr_timeout = TimeoutFor(id);
  e->entry_timeout = e->attr_timeout;
  return 0;
}

double SnapshotView::TimeoutFor(uint64_t node) const {
  const SnapId snap = (node & ~kReservedNodeIdBase) >> kSnapShift;
  std::shared_lock lock(snapshots_mutex_);
  return CloneOf(snap) == cow_store::CloneState::kNone ? timeout_ : 0;
}

int SnapshotView::LookupSnapshot(const char* name, fuse_entry_param* e) {
  std::shared_lock lock(snapshots_mutex_);
  cow_store::Result<std::vector<cow_store::SnapshotInfo>> all = cow_->store().ListSnapshots();
  if (!all.ok()) return ErrnoOf(all.status());
  for (const auto& s : all.value()) {
    if (s.name == name && SnapshotExists(s.id)) {
      return Enter(s.id, root_ino_, S_IFDIR, root_handle_, kSnapshotDirNodeId, e);
    }
  }
  return -ENOENT;
}

int SnapshotView::ListSnapshotNames(std::vector<Listed>* out) {
  std::shared_lock lock(snapshots_mutex_);
  cow_store::Result<std::vector<cow_store::SnapshotInfo>> all = cow_->store().ListSnapshots();
  if (!all.ok()) return ErrnoOf(all.status());
  for (const auto& s : all.value()) {
    // A writable clone (a recovery in progress) is reachable by name but
    // not listed: whatever enumerates .snapshot (Samba's Previous Versions,
    // backup tools) must not take a copy that is still changing.
    if (SnapshotExists(s.id) && s.clone != cow_store::CloneState::kWritable) {
      out->push_back(Listed{s.name, NodeId(s.id, root_ino_), S_IFDIR});
    }
  }
  return 0;
}

int SnapshotView::Lookup(uint64_t parent, const char* name, fuse_entry_param* e) {
  std::shared_lock lock(snapshots_mutex_);
  std::shared_ptr<Node> p = FindLive(parent);
  if (!p) return -ESTALE;
  if (!S_ISDIR(p->type)) return -ENOTDIR;
  if (std::strlen(name) > NAME_MAX) return -ENAMETOOLONG;
  if (p->ino == root_ino_ && IsReservedRootName(name)) return -ENOENT;
  Ino ino = 0;
  mode_t type = 0;
  std::string handle;
  {
    std::shared_lock stripe(cow_->Stripe(p->ino));
    cow_store::Result<std::unique_ptr<cow_store::ReadView>> view = cow_->store().BeginRead();
    if (!view.ok()) return ErrnoOf(view.status());
    bool own = false;
    if (CloneOf(p->snap) != cow_store::CloneState::kNone) {
      cow_store::Result<bool> has = view.value()->HasCloneListing(p->snap, p->ino);
      if (!has.ok()) return ErrnoOf(has.status());
      own = has.value();
    }
    cow_store::Result<std::optional<SnapId>> listing =
        own ? std::optional<SnapId>() : view.value()->FindListing(p->ino, p->snap);
    if (!listing.ok()) return ErrnoOf(listing.status());
    if (own || listing.value()) {
      cow_store::Result<std::optional<DirEntry>> de =
          own ? view.value()->LookupCloneEntry(p->snap, p->ino, name)
              : view.value()->LookupEntry(p->ino, *listing.value(), name);
      if (!de.ok()) return ErrnoOf(de.status());
      if (!de.value()) return -ENOENT;
      ino = de.value()->ino;
      type = DTTOIF(de.value()->type);
      handle = std::move(de.value()->handle);
    } else {
      UniqueFd dir = OpenByHandle(cow_->mount_fd(), p->handle, O_PATH | O_DIRECTORY);
      if (!dir) return -errno;
      UniqueFd fd(openat(dir.get(), name, O_PATH | O_NOFOLLOW | O_CLOEXEC));
      if (!fd) return -errno;
      struct stat st;
      if (fstatat(fd.get(), "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) != 0) return -errno;
      ino = st.st_ino;
      type = st.st_mode & S_IFMT;
      if (int r = HandleAt(fd.get(), "", AT_EMPTY_PATH, &handle); r != 0) return r;
    }
  }
  if (!Shows(p->snap, ino)) return -ENOENT;
  return Enter(p->snap, ino, type, handle, parent, e);
}

int SnapshotView::GetAttr(uint64_t node, struct stat* st) {
  std::shared_lock lock(snapshots_mutex_);
  std::shared_ptr<Node> n = FindLive(node);
  if (!n) return -ESTALE;
  InodeMeta meta;
  if (int r = Resolve(*n, false, &meta); r != 0) return r;
  FillStat(node, meta, st);
  return 0;
}

int SnapshotView::ReadLink(uint64_t node, std::string* target) {
  std::shared_lock lock(snapshots_mutex_);
  std::shared_ptr<Node> n = FindLive(node);
  if (!n) return -ESTALE;
  if (!S_ISLNK(n->type)) return -EINVAL;
  InodeMeta meta;
  if (int r = Resolve(*n, true, &meta); r != 0) return r;
  *target = meta.symlink;
  return 0;
}

int SnapshotView::List(uint64_t node, std::vector<Listed>* out) {
  std::shared_lock lock(snapshots_mutex_);
  std::shared_ptr<Node> n = FindLive(node);
  if (!n) return -ESTALE;
  if (!S_ISDIR(n->type)) return -ENOTDIR;
  std::vector<DirEntry> entries;
  if (int r = Entries(*n, &entries); r != 0) return r;
  out->clear();
  out->push_back(Listed{".", node, S_IFDIR});
  out->push_back(Listed{"..", n->parent != 0 ? n->parent : node, S_IFDIR});
  for (const DirEntry& d : entries) {
    uint64_t id = NodeId(n->snap, d.ino);
    if (id == 0) continue;
    out->push_back(Listed{d.name, id, static_cast<mode_t>(DTTOIF(d.type))});
  }
  return 0;
}

int SnapshotView::Open(uint64_t node, int flags, const Caller& caller, uint64_t* fh) {
  const bool writes = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
  // Writers take clone_mutex_ first (the lock order), readers never.
  std::unique_lock<std::mutex> writer;
  if (writes) writer = std::unique_lock(clone_mutex_);
  std::shared_lock lock(snapshots_mutex_);
  std::shared_ptr<Node> n = FindLive(node);
  if (!n) return -ESTALE;
  if (S_ISDIR(n->type)) return -EISDIR;
  if (writes && CloneOf(n->snap) != cow_store::CloneState::kWritable) return -EROFS;
  InodeMeta meta;
  if (int r = Resolve(*n, false, &meta); r != 0) return r;
  auto f = std::make_shared<File>();
  f->snap = n->snap;
  f->ino = n->ino;
  f->size = meta.size;
  f->handle = n->handle;
  if ((flags & O_TRUNC) && S_ISREG(n->type)) {
    cow_store::CloneInode ci;
    if (int r = CloneInodeOf(*n, &ci); r != 0) return r;
    cow_store::CloneChange change;
    if (int r = Truncate(*f, &ci, 0, &change); r != 0) return r;
    if (caller.kill_suidgid) DropSetid(&ci.meta, caller);
    change.PutInode(n->ino, std::move(ci));
    if (int r = Apply(n->snap, change); r != 0) return r;
  }
  std::lock_guard flock(files_mutex_);
  *fh = next_file_++;
  files_.emplace(*fh, std::move(f));
  return 0;
}

void SnapshotView::Release(uint64_t fh) {
  std::shared_ptr<File> f;
  {
    std::lock_guard lock(files_mutex_);
    auto it = files_.find(fh);
    if (it == files_.end()) return;
    f = std::move(it->second);
    files_.erase(it);
  }
  // The last descriptor of a clone object that lost its last name drops it.
  std::lock_guard writer(clone_mutex_);
  std::shared_lock lock(snapshots_mutex_);
  if (CloneOf(f->snap) != cow_store::CloneState::kWritable || IsOpen(f->snap, f->ino)) return;
  cow_store::Result<std::unique_ptr<cow_store::ReadView>> view = cow_->store().BeginRead();
  if (!view.ok()) return;
  cow_store::Result<std::optional<cow_store::CloneInode>> own =
      view.value()->FindCloneInode(f->snap, f->ino);
  view.value().reset();
  if (own.ok() && own.value() && own.value()->meta.nlink == 0) {
    cow_store::CloneChange change;
    change.DeleteInode(f->ino);
    if (int r = Apply(f->snap, change); r != 0) {
      LOG_WARN("cannot drop an unlinked clone object: %s", std::strerror(-r));
    }
  }
}

int SnapshotView::Read(uint64_t node, uint64_t fh, size_t size, off_t off, std::string* out) {
  (void)node;
  std::shared_ptr<File> f;
  {
    std::lock_guard lock(files_mutex_);
    auto it = files_.find(fh);
    if (it == files_.end()) return -EBADF;
    f = it->second;
  }
  std::shared_lock lock(snapshots_mutex_);
  if (!SnapshotExists(f->snap)) return -ESTALE;
  out->clear();
  uint64_t file_size = f->size;
  uint64_t limit = f->size;
  const bool clone = CloneOf(f->snap) != cow_store::CloneState::kNone;
  if (clone) {
    cow_store::Result<std::unique_ptr<cow_store::ReadView>> view = cow_->store().BeginRead();
    if (!view.ok()) return ErrnoOf(view.status());
    cow_store::Result<std::optional<cow_store::CloneInode>> own =
        view.value()->FindCloneInode(f->snap, f->ino);
    if (!own.ok()) return ErrnoOf(own.status());
    if (own.value()) {
      file_size = own.value()->meta.size;
      limit = own.value()->base_limit;
    }
  }
  const uint64_t start = static_cast<uint64_t>(off);
  if (start >= file_size || size == 0) return 0;
  return ReadRange(*f, clone, limit, start, std::min<uint64_t>(file_size, start + size), out);
}

int SnapshotView::ReadRange(File& file, bool clone, uint64_t limit, uint64_t start, uint64_t end,
                            std::string* out) {
  File* f = &file;
  out->assign(static_cast<size_t>(end - start), '\0');
  const uint64_t bs = cow_->store().block_size();

  std::shared_lock stripe(cow_->Stripe(f->ino));
  cow_store::Result<std::unique_ptr<cow_store::ReadView>> view = cow_->store().BeginRead();
  if (!view.ok()) return ErrnoOf(view.status());
  auto open_live = [&] {
    std::lock_guard fl(f->mutex);
    if (!f->live_tried && !f->handle.empty()) {
      f->live_tried = true;
      f->live_fd.reset(OpenNoAtime(O_RDONLY, [&](int flags) {
        return OpenByHandle(cow_->mount_fd(), f->handle, flags).release();
      }));
    }
  };
  // Runs of live blocks are read with one pread each.
  uint64_t live_lo = 0, live_hi = 0;
  auto flush_live = [&]() -> int {
    if (live_hi <= live_lo) return 0;
    open_live();
    if (!f->live_fd) return -EIO;
    uint64_t pos = live_lo;
    while (pos < live_hi) {
      ssize_t n = pread(f->live_fd.get(), out->data() + (pos - start), live_hi - pos,
                        static_cast<off_t>(pos));
      if (n < 0) {
        if (errno == EINTR) continue;
        return -errno;
      }
      if (n == 0) break;  // Zeros beyond the live end (cannot normally happen).
      pos += static_cast<uint64_t>(n);
    }
    live_lo = live_hi = 0;
    return 0;
  };
  // Where every block comes from: the clone's own block, else the
  // snapshot's below `limit` (zeros above it). The disk reads for all of
  // them are started at once (readahead), then copied in order.
  std::vector<BlockLocation> locs;
  std::vector<uint64_t> base_end;  // Bytes of the block that come from the base.
  for (uint64_t b = start / bs; b * bs < end; ++b) {
    std::optional<BlockLocation> own;
    if (clone) {
      cow_store::Result<std::optional<BlockLocation>> c =
          view.value()->FindCloneBlock(f->snap, f->ino, b);
      if (!c.ok()) return ErrnoOf(c.status());
      own = c.value();
    }
    if (own) {
      locs.push_back(*own);
      base_end.push_back(std::min(end, (b + 1) * bs));
    } else if (b * bs >= limit) {
      BlockLocation zero;
      zero.kind = BlockLocation::Kind::kZero;
      locs.push_back(zero);
      base_end.push_back(std::min(end, (b + 1) * bs));
    } else {
      cow_store::Result<BlockLocation> loc = view.value()->FindBlock(f->ino, b, f->snap);
      if (!loc.ok()) return ErrnoOf(loc.status());
      locs.push_back(loc.value());
      base_end.push_back(std::min({end, (b + 1) * bs, limit}));
    }
    if (locs.back().kind == BlockLocation::Kind::kStored) {
      cow_->store().Prefetch(locs.back());
    } else if (locs.back().kind == BlockLocation::Kind::kLive) {
      open_live();
      std::lock_guard fl(f->mutex);
      if (f->live_fd) {
        (void)posix_fadvise(f->live_fd.get(), static_cast<off_t>(b * bs), static_cast<off_t>(bs),
                            POSIX_FADV_WILLNEED);
      }
    }
  }
  std::string block;
  for (uint64_t b = start / bs; b * bs < end; ++b) {
    const BlockLocation& loc = locs[b - start / bs];
    const uint64_t lo = std::max(start, b * bs);
    const uint64_t hi = base_end[b - start / bs];  // Zeros from here to the block's end.
    if (hi <= lo) continue;
    if (loc.kind == BlockLocation::Kind::kLive) {
      if (live_hi == lo) {
        live_hi = hi;
      } else {
        if (int r = flush_live(); r != 0) return r;
        live_lo = lo;
        live_hi = hi;
      }
      continue;
    }
    if (int r = flush_live(); r != 0) return r;
    if (loc.kind == BlockLocation::Kind::kZero) continue;
    const uint64_t len = loc.length;
    if (lo == b * bs && hi - lo == len) {
      if (cow_store::Status s = cow_->store().ReadBlock(loc, out->data() + (lo - start)); !s.ok()) {
        return ErrnoOf(s);
      }
      continue;
    }
    block.resize(len);
    if (cow_store::Status s = cow_->store().ReadBlock(loc, block.data()); !s.ok()) {
      return ErrnoOf(s);
    }
    const uint64_t from = lo - b * bs;
    if (from < len) {
      std::memcpy(out->data() + (lo - start), block.data() + from,
                  static_cast<size_t>(std::min(hi - lo, len - from)));
    }
  }
  return flush_live();
}

int XattrNameError(const char* name) {
  static constexpr const char* kPrefixes[] = {"user.", "trusted.", "security."};
  for (const char* p : kPrefixes) {
    const size_t n = std::strlen(p);
    if (std::strncmp(name, p, n) == 0) return name[n] == '\0' ? -EINVAL : 0;
  }
  if (std::strcmp(name, "system.posix_acl_access") == 0 ||
      std::strcmp(name, "system.posix_acl_default") == 0) {
    return 0;
  }
  return -EOPNOTSUPP;
}

int SnapshotView::GetXattr(uint64_t node, const char* name, size_t size, std::string* value) {
  if (int r = XattrNameError(name); r != 0) return r;
  std::shared_lock lock(snapshots_mutex_);
  std::shared_ptr<Node> n = FindLive(node);
  if (!n) return -ESTALE;
  InodeMeta meta;
  if (int r = Resolve(*n, true, &meta); r != 0) return r;
  for (const auto& [k, v] : meta.xattrs) {
    if (k != name) continue;
    if (size == 0) return static_cast<int>(v.size());
    if (v.size() > size) return -ERANGE;
    *value = v;
    return static_cast<int>(v.size());
  }
  return -ENODATA;
}

int SnapshotView::ListXattr(uint64_t node, std::string* list) {
  std::shared_lock lock(snapshots_mutex_);
  std::shared_ptr<Node> n = FindLive(node);
  if (!n) return -ESTALE;
  InodeMeta meta;
  if (int r = Resolve(*n, true, &meta); r != 0) return r;
  list->clear();
  for (const auto& [k, v] : meta.xattrs) {
    list->append(k);
    list->push_back('\0');
  }
  return static_cast<int>(list->size());
}

}  // namespace vssfs::fs
