// The write side of SnapshotView: changes to a snapshot's writable clone
// (Remote VSS auto-recovery). Every request becomes one
// cow_store::CloneChange, applied atomically and durably before the reply.
// The first change of an object copies its attributes (and xattrs) into the
// clone; the first change of a directory copies its listing; a write copies
// the touched blocks (read-modify-write of whole blocks). The kernel has
// already checked permissions (default_permissions, POSIX ACLs).
#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>

#include "snapshot_view.h"

namespace vssfs::fs {

using cow_store::CloneChange;
using cow_store::CloneInode;
using cow_store::CloneState;
using cow_store::DirEntry;
using cow_store::Ino;
using cow_store::InodeMeta;
using cow_store::SnapId;

namespace {

int ErrnoOf(const cow_store::Status& s) { return s.ok() ? 0 : -s.error(); }

struct timespec Now() {
  struct timespec t {};
  clock_gettime(CLOCK_REALTIME, &t);
  return t;
}

uint64_t AllocatedBlocks(uint64_t size) { return (size + 4095) / 4096 * 8; }

// POSIX ACL xattr (system.posix_acl_access): le32 version 2, then entries
// of le16 tag, le16 perm, le32 id.
constexpr char kAclAccess[] = "system.posix_acl_access";
constexpr uint16_t kAclUserObj = 0x01, kAclGroupObj = 0x04, kAclMask = 0x10, kAclOther = 0x20;
constexpr size_t kAclHeader = 4, kAclEntry = 8;

uint16_t Le16(const std::string& s, size_t at) {
  return static_cast<uint16_t>(static_cast<uint8_t>(s[at]) | static_cast<uint8_t>(s[at + 1]) << 8);
}

void SetLe16(std::string* s, size_t at, uint16_t v) {
  (*s)[at] = static_cast<char>(v & 0xff);
  (*s)[at + 1] = static_cast<char>(v >> 8);
}

bool ValidAcl(const std::string& acl) {
  return acl.size() >= kAclHeader && (acl.size() - kAclHeader) % kAclEntry == 0 &&
         static_cast<uint8_t>(acl[0]) == 2;
}

// Whether `acl` has entries beyond the three the mode expresses.
bool ExtendedAcl(const std::string& acl) {
  for (size_t at = kAclHeader; at + kAclEntry <= acl.size(); at += kAclEntry) {
    const uint16_t tag = Le16(acl, at);
    if (tag != kAclUserObj && tag != kAclGroupObj && tag != kAclOther) return true;
  }
  return false;
}

// Mode permission bits that `acl` implies: owner from USER_OBJ, group from
// MASK (or GROUP_OBJ without a mask), other from OTHER.
uint32_t ModeFromAcl(const std::string& acl, uint32_t mode) {
  int owner = -1, group = -1, mask = -1, other = -1;
  for (size_t at = kAclHeader; at + kAclEntry <= acl.size(); at += kAclEntry) {
    const uint16_t tag = Le16(acl, at), perm = Le16(acl, at + 2) & 7;
    if (tag == kAclUserObj) owner = perm;
    if (tag == kAclGroupObj) group = perm;
    if (tag == kAclMask) mask = perm;
    if (tag == kAclOther) other = perm;
  }
  if (mask >= 0) group = mask;
  if (owner < 0 || group < 0 || other < 0) return mode;
  return (mode & ~0777u) | static_cast<uint32_t>(owner << 6 | group << 3 | other);
}

// chmod of a file with an access ACL updates USER_OBJ, MASK (or GROUP_OBJ)
// and OTHER, as POSIX requires.
void ChmodAcl(InodeMeta* m) {
  for (auto& [name, value] : m->xattrs) {
    if (name != kAclAccess || !ValidAcl(value)) continue;
    bool has_mask = false;
    for (size_t at = kAclHeader; at + kAclEntry <= value.size(); at += kAclEntry) {
      has_mask |= Le16(value, at) == kAclMask;
    }
    for (size_t at = kAclHeader; at + kAclEntry <= value.size(); at += kAclEntry) {
      const uint16_t tag = Le16(value, at);
      if (tag == kAclUserObj) SetLe16(&value, at + 2, (m->mode >> 6) & 7);
      if (tag == (has_mask ? kAclMask : kAclGroupObj)) SetLe16(&value, at + 2, (m->mode >> 3) & 7);
      if (tag == kAclOther) SetLe16(&value, at + 2, m->mode & 7);
    }
  }
}

constexpr char kAclDefault[] = "system.posix_acl_default";
constexpr uint16_t kAclUser = 0x02, kAclGroup = 0x08;

const std::string* FindXattr(const cow_store::XattrList& xattrs, const char* name) {
  for (const auto& [k, v] : xattrs) {
    if (k == name) return &v;
  }
  return nullptr;
}

// A new object in a directory with a default ACL: its access ACL is the
// default masked by the create mode (the umask does not apply), a new
// directory also inherits the default; an ACL that says no more than the
// mode is not stored (POSIX.1e, as Linux's posix_acl_create).
// Returns false when the parent has no usable default ACL.
bool InheritAcl(const cow_store::XattrList& parent, InodeMeta* m) {
  const std::string* def = FindXattr(parent, kAclDefault);
  if (def == nullptr || !ValidAcl(*def) || S_ISLNK(m->mode)) return false;
  std::string acl = *def;
  const uint32_t mode = m->mode;
  size_t group_obj = 0, mask = 0;
  bool extended = false;
  uint32_t owner = 0, other = 0;
  for (size_t at = kAclHeader; at + kAclEntry <= acl.size(); at += kAclEntry) {
    const uint16_t tag = Le16(acl, at), perm = Le16(acl, at + 2);
    if (tag == kAclUserObj) {
      owner = perm & ((mode >> 6) & 7);
      SetLe16(&acl, at + 2, static_cast<uint16_t>(owner));
    } else if (tag == kAclOther) {
      other = perm & (mode & 7);
      SetLe16(&acl, at + 2, static_cast<uint16_t>(other));
    } else if (tag == kAclGroupObj) {
      group_obj = at;
    } else if (tag == kAclMask) {
      mask = at;
      extended = true;
    } else if (tag == kAclUser || tag == kAclGroup) {
      extended = true;
    }
  }
  const size_t group_at = mask != 0 ? mask : group_obj;
  if (group_at == 0) return false;
  extended = ExtendedAcl(acl);
  const uint32_t group = Le16(acl, group_at + 2) & ((mode >> 3) & 7);
  SetLe16(&acl, group_at + 2, static_cast<uint16_t>(group));
  m->mode = (mode & ~0777u) | owner << 6 | group << 3 | other;
  if (extended) m->xattrs.emplace_back(kAclAccess, acl);
  if (S_ISDIR(mode)) m->xattrs.emplace_back(kAclDefault, *def);
  return true;
}

uint8_t TypeOf(uint32_t mode) { return static_cast<uint8_t>(IFTODT(mode)); }

const DirEntry* FindEntry(const std::vector<DirEntry>& entries, const std::string& name) {
  for (const DirEntry& d : entries) {
    if (d.name == name) return &d;
  }
  return nullptr;
}

void EraseEntry(std::vector<DirEntry>* entries, const std::string& name) {
  entries->erase(std::remove_if(entries->begin(), entries->end(),
                                [&](const DirEntry& d) { return d.name == name; }),
                 entries->end());
}

void SetEntry(std::vector<DirEntry>* entries, DirEntry entry) {
  for (DirEntry& d : *entries) {
    if (d.name == entry.name) {
      d = std::move(entry);
      return;
    }
  }
  entries->push_back(std::move(entry));
}

}  // namespace

int SnapshotView::ProbeXattrs(mode_t mode, const cow_store::XattrList& xattrs) {
  size_t total = 0;
  for (const auto& [name, value] : xattrs) total += name.size() + value.size();
  if (total <= kXattrProbeFrom) return 0;
  // What fits in one inode's xattr space is the backing filesystem's
  // business (ext4: about one block, shared with the ACLs): try the whole
  // set on an inode of the same kind there (only a directory takes a
  // default ACL), so that a clone accepts exactly what the live tree would.
  // In the keep directory, where a leftover scratch directory of a crash is
  // removed at the next mount (ReconcileKept).
  cow_store::UniqueFd probe;
  std::string scratch;
  if (S_ISDIR(mode)) {
    static std::atomic<uint64_t> serial{0};
    scratch = "xattr-probe-" + std::to_string(getpid()) + "-" + std::to_string(++serial);
    if (mkdirat(cow_->keep_fd(), scratch.c_str(), 0700) != 0) return 0;
    probe.reset(openat(cow_->keep_fd(), scratch.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  } else {
    probe.reset(openat(cow_->keep_fd(), ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  }
  int r = 0;
  if (probe) {
    // ACLs the probe inherited from the keep directory are not the set's.
    for (const char* acl : {kAclAccess, kAclDefault}) {
      if (FindXattr(xattrs, acl) == nullptr) fremovexattr(probe.get(), acl);
    }
    for (const auto& [name, value] : xattrs) {
      if (fsetxattr(probe.get(), name.c_str(), value.data(), value.size(), 0) == 0) continue;
      // Names the backing filesystem or the daemon cannot set there are
      // left out of the probe; what else fits still decides.
      if (errno == ENOTSUP || errno == EPERM || errno == EACCES) continue;
      r = -errno;
      break;
    }
  }
  probe.reset();
  if (!scratch.empty()) unlinkat(cow_->keep_fd(), scratch.c_str(), AT_REMOVEDIR);
  return r;  // Without O_TMPFILE or a scratch directory, only the VFS limits apply.
}

// Drops set-user-ID, and set-group-ID when it marks a setgid executable
// (group execute set) or the caller is neither in the file's group nor has
// CAP_FSETID: what the kernel does on write, truncate, fallocate and chown.
void SnapshotView::DropSetid(InodeMeta* m, const Caller& caller) {
  if (S_ISDIR(m->mode)) return;
  m->mode &= ~static_cast<uint32_t>(S_ISUID);
  if ((m->mode & S_IXGRP) || (!caller.fsetid && !InGroup(caller, m->gid))) {
    m->mode &= ~static_cast<uint32_t>(S_ISGID);
  }
}

std::shared_ptr<SnapshotView::File> SnapshotView::FindFile(uint64_t fh) {
  std::lock_guard lock(files_mutex_);
  auto it = files_.find(fh);
  return it == files_.end() ? nullptr : it->second;
}

SnapshotView::Node SnapshotView::NodeOf(SnapId snap, const DirEntry& entry) {
  Node n;
  n.snap = snap;
  n.ino = entry.ino;
  n.type = DTTOIF(entry.type);
  n.handle = entry.handle;
  return n;
}

int SnapshotView::WritableFile(const File& f, CloneInode* ci) {
  if (!SnapshotExists(f.snap)) return -ESTALE;
  if (CloneOf(f.snap) != CloneState::kWritable) return -EROFS;
  return CloneInodeOf(NodeOf(f.snap, DirEntry{"", f.ino, DT_REG, f.handle}), ci);
}

int SnapshotView::WritableInode(uint64_t nodeid, std::shared_ptr<Node>* node, CloneInode* ci) {
  int err = 0;
  *node = WritableNode(nodeid, &err);
  if (!*node) return err;
  return CloneInodeOf(**node, ci);
}

int SnapshotView::WritableDir(uint64_t nodeid, std::shared_ptr<Node>* dir,
                              std::vector<DirEntry>* entries, bool* own) {
  int err = 0;
  *dir = WritableNode(nodeid, &err);
  if (!*dir) return err;
  return CloneEntriesOf(**dir, entries, own);
}

std::shared_ptr<SnapshotView::Node> SnapshotView::WritableNode(uint64_t nodeid, int* error) {
  std::shared_ptr<Node> n = FindLive(nodeid);
  if (!n) {
    *error = -ESTALE;
    return nullptr;
  }
  if (CloneOf(n->snap) != CloneState::kWritable) {
    *error = -EROFS;
    return nullptr;
  }
  *error = 0;
  return n;
}

int SnapshotView::CloneInodeOf(const Node& n, CloneInode* out) {
  {
    cow_store::Result<std::unique_ptr<cow_store::ReadView>> view = cow_->store().BeginRead();
    if (!view.ok()) return ErrnoOf(view.status());
    cow_store::Result<std::optional<CloneInode>> own = view.value()->FindCloneInode(n.snap, n.ino);
    if (!own.ok()) return ErrnoOf(own.status());
    if (own.value()) {
      *out = std::move(*own.value());
      return 0;
    }
  }
  out->meta = InodeMeta{};
  if (int r = Resolve(n, true, &out->meta); r != 0) return r;
  out->base_limit = S_ISREG(out->meta.mode) ? out->meta.size : 0;
  return 0;
}

int SnapshotView::CloneEntriesOf(const Node& dir, std::vector<DirEntry>* out, bool* own) {
  if (!S_ISDIR(dir.type)) return -ENOTDIR;
  {
    cow_store::Result<std::unique_ptr<cow_store::ReadView>> view = cow_->store().BeginRead();
    if (!view.ok()) return ErrnoOf(view.status());
    cow_store::Result<bool> has = view.value()->HasCloneListing(dir.snap, dir.ino);
    if (!has.ok()) return ErrnoOf(has.status());
    *own = has.value();
  }
  return Entries(dir, out);
}

void SnapshotView::PutListing(const Node& dir, bool own, const std::vector<DirEntry>& before,
                              const std::vector<DirEntry>& after, CloneChange* change) {
  if (!own) {
    change->PutListing(dir.ino, after);
    return;
  }
  std::map<std::string, const DirEntry*> old;
  for (const DirEntry& d : before) old[d.name] = &d;
  for (const DirEntry& d : after) {
    auto it = old.find(d.name);
    if (it == old.end() || it->second->ino != d.ino || it->second->type != d.type ||
        it->second->handle != d.handle) {
      change->PutEntry(dir.ino, d);
    }
    if (it != old.end()) old.erase(it);
  }
  for (const auto& [name, d] : old) change->DeleteEntry(dir.ino, name);
}

int SnapshotView::Apply(SnapId snap, CloneChange& change) {
  return ErrnoOf(cow_->store().ApplyClone(snap, change));
}

bool SnapshotView::IsOpen(SnapId snap, Ino ino) {
  std::lock_guard lock(files_mutex_);
  for (const auto& [fh, f] : files_) {
    if (f->snap == snap && f->ino == ino) return true;
  }
  return false;
}

int SnapshotView::Truncate(File& f, CloneInode* ci, uint64_t size, CloneChange* change) {
  const uint64_t bs = cow_->store().block_size();
  const uint64_t old = ci->meta.size;
  if (size < old) {
    change->DropBlocks(f.ino, (size + bs - 1) / bs);
    if (size % bs != 0) {
      // The block that now ends the file keeps only its head.
      std::string head;
      const uint64_t lo = size / bs * bs;
      if (int r = ReadRange(f, true, ci->base_limit, lo, size, &head); r != 0) return r;
      change->PutBlock(f.ino, size / bs, head);
    }
    ci->base_limit = std::min(ci->base_limit, size);
  }
  ci->meta.size = size;
  ci->meta.blocks = AllocatedBlocks(size);
  ci->meta.mtime = ci->meta.ctime = Now();
  return 0;
}

int SnapshotView::Unlinked(const Node& victim, CloneChange* change) {
  CloneInode ci;
  if (int r = CloneInodeOf(victim, &ci); r != 0) return r;
  if (S_ISDIR(ci.meta.mode) || ci.meta.nlink <= 1) {
    if (!S_ISDIR(ci.meta.mode) && IsOpen(victim.snap, victim.ino)) {
      // Open descriptors keep the object; the last release drops it.
      ci.meta.nlink = 0;
      ci.meta.ctime = Now();
      change->PutInode(victim.ino, std::move(ci));
    } else {
      // Its blocks and listing go; a record with no links stays, for what a
      // descriptor still open on it (a directory's, say) reads.
      change->DeleteInode(victim.ino);
      ci.meta.nlink = 0;
      ci.meta.ctime = Now();
      if (S_ISDIR(ci.meta.mode)) ci.meta.size = 0;
      ci.base_limit = 0;
      change->PutInode(victim.ino, std::move(ci));
    }
    return 0;
  }
  --ci.meta.nlink;
  ci.meta.ctime = Now();
  change->PutInode(victim.ino, std::move(ci));
  return 0;
}

int SnapshotView::SetAttr(uint64_t node, const Caller& caller, const struct stat& attr, int to_set,
                          struct stat* out) {
  std::lock_guard writer(clone_mutex_);
  std::shared_lock lock(snapshots_mutex_);
  std::shared_ptr<Node> n;
  CloneInode ci;
  if (int r = WritableInode(node, &n, &ci); r != 0) return r;
  CloneChange change;
  InodeMeta& m = ci.meta;
  // chown, also chown(f, -1, -1), which arrives as a bare ctime update
  // (writeback cache) or an empty request. An empty request may also be the
  // kernel removing privileges before a caller's write: dropping set-id bits
  // as that caller is right then too.
  if ((to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) || to_set == FUSE_SET_ATTR_CTIME ||
      to_set == 0) {
    if (to_set & FUSE_SET_ATTR_UID) m.uid = attr.st_uid;
    if (to_set & FUSE_SET_ATTR_GID) m.gid = attr.st_gid;
    DropSetid(&m, caller);
  }
  if (to_set & FUSE_SET_ATTR_SIZE) {
    if (S_ISDIR(m.mode)) return -EISDIR;
    if (!S_ISREG(m.mode)) return -EINVAL;
    File f;
    f.snap = n->snap;
    f.ino = n->ino;
    f.handle = n->handle;
    if (int r = Truncate(f, &ci, static_cast<uint64_t>(attr.st_size), &change); r != 0) return r;
    if (caller.kill_suidgid) DropSetid(&m, caller);
  }
  if (to_set & FUSE_SET_ATTR_MODE) {
    m.mode = (m.mode & S_IFMT) | (attr.st_mode & 07777);
    ChmodAcl(&m);
  }
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
    m.atime = Now();
  } else if (to_set & FUSE_SET_ATTR_ATIME) {
    m.atime = attr.st_atim;
  }
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
    m.mtime = Now();
  } else if (to_set & FUSE_SET_ATTR_MTIME) {
    m.mtime = attr.st_mtim;
  }
  m.ctime = Now();
  const InodeMeta result = m;
  change.PutInode(n->ino, std::move(ci));
  if (int r = Apply(n->snap, change); r != 0) return r;
  FillStat(node, result, out);
  return 0;
}

int SnapshotView::Write(uint64_t node, uint64_t fh, const Caller& caller, const char* data,
                        size_t size, off_t off) {
  (void)node;
  if (off < 0) return -EINVAL;
  std::shared_ptr<File> f = FindFile(fh);
  if (!f) return -EBADF;
  std::lock_guard writer(clone_mutex_);
  std::shared_lock lock(snapshots_mutex_);
  CloneInode ci;
  if (int r = WritableFile(*f, &ci); r != 0) return r;
  if (size == 0) return 0;
  const uint64_t start = static_cast<uint64_t>(off), end = start + size;
  CloneChange change;
  if (int r = Overwrite(*f, &ci, start, end, data, &change); r != 0) return r;
  ci.meta.mtime = ci.meta.ctime = Now();
  if (caller.kill_suidgid) DropSetid(&ci.meta, caller);
  change.PutInode(f->ino, std::move(ci));
  if (int r = Apply(f->snap, change); r != 0) return r;
  return static_cast<int>(size);
}

int SnapshotView::Overwrite(File& f, CloneInode* ci, uint64_t start, uint64_t end, const char* data,
                            CloneChange* change) {
  const uint64_t bs = cow_->store().block_size();
  const uint64_t old = ci->meta.size, new_size = std::max(old, end);
  std::string block;
  for (uint64_t b = start / bs; b * bs < end; ++b) {
    const uint64_t lo = b * bs, hi = std::min(new_size, lo + bs);
    block.clear();
    if (std::min(hi, old) > lo && (start > lo || end < std::min(hi, old))) {
      if (int r = ReadRange(f, true, ci->base_limit, lo, std::min(hi, old), &block); r != 0) {
        return r;
      }
    }
    block.resize(static_cast<size_t>(hi - lo), '\0');
    const uint64_t from = std::max(start, lo), to = std::min(end, hi);
    if (data != nullptr) {
      std::memcpy(block.data() + (from - lo), data + (from - start),
                  static_cast<size_t>(to - from));
    } else {
      std::memset(block.data() + (from - lo), 0, static_cast<size_t>(to - from));
    }
    change->PutBlock(f.ino, b, block);
  }
  ci->meta.size = new_size;
  ci->meta.blocks = std::max(ci->meta.blocks, AllocatedBlocks(new_size));
  return 0;
}

int SnapshotView::Fallocate(uint64_t node, uint64_t fh, const Caller& caller, int mode,
                            off_t offset, off_t length) {
  if (offset < 0 || length <= 0) return -EINVAL;
  if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
    return -EOPNOTSUPP;  // Collapse and insert: not in clones.
  }
  if ((mode & FALLOC_FL_PUNCH_HOLE) && !(mode & FALLOC_FL_KEEP_SIZE)) return -EOPNOTSUPP;
  (void)node;
  std::shared_ptr<File> f = FindFile(fh);
  if (!f) return -EBADF;
  std::lock_guard writer(clone_mutex_);
  std::shared_lock lock(snapshots_mutex_);
  CloneInode ci;
  if (int r = WritableFile(*f, &ci); r != 0) return r;
  const uint64_t start = static_cast<uint64_t>(offset);
  const uint64_t end = start + static_cast<uint64_t>(length);
  const bool keep_size = mode & FALLOC_FL_KEEP_SIZE;
  CloneChange change;
  if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
    // Blocks are not allocated ahead in the store: zeros are zeros.
    const uint64_t zero_end = keep_size ? std::min(end, ci.meta.size) : end;
    if (zero_end > start) {
      if (int r = Overwrite(*f, &ci, start, zero_end, nullptr, &change); r != 0) return r;
    }
  } else if (!keep_size && end > ci.meta.size) {
    ci.meta.size = end;
    ci.meta.blocks = std::max(ci.meta.blocks, AllocatedBlocks(end));
  }
  // As file_modified(): times, and set-id bits for a caller without
  // CAP_FSETID.
  ci.meta.mtime = ci.meta.ctime = Now();
  if (!caller.fsetid) DropSetid(&ci.meta, caller);
  change.PutInode(f->ino, std::move(ci));
  return Apply(f->snap, change);
}

int SnapshotView::MakeNode(uint64_t parent, const Caller& caller, const char* name, mode_t mode,
                           dev_t rdev, const char* link_target, fuse_entry_param* e) {
  if (std::strlen(name) > NAME_MAX) return -ENAMETOOLONG;
  SnapId snap = 0;
  Ino ino = 0;
  mode_t type = 0;
  {
    std::lock_guard writer(clone_mutex_);
    std::shared_lock lock(snapshots_mutex_);
    std::shared_ptr<Node> p;
    std::vector<DirEntry> entries;
    bool own = false;
    if (int r = WritableDir(parent, &p, &entries, &own); r != 0) return r;
    if (FindEntry(entries, name) != nullptr) return -EEXIST;
    CloneInode pci;
    if (int r = CloneInodeOf(*p, &pci); r != 0) return r;
    cow_store::Result<Ino> allocated = cow_->store().AllocCloneIno(p->snap);
    if (!allocated.ok()) return ErrnoOf(allocated.status());
    snap = p->snap;
    ino = allocated.value();
    type = link_target != nullptr ? S_IFLNK : (mode & S_IFMT);
    CloneInode ci;
    InodeMeta& m = ci.meta;
    m.mode = type | (link_target != nullptr ? 0777 : (mode & 07777));
    if (!InheritAcl(pci.meta.xattrs, &m)) m.mode &= ~static_cast<uint32_t>(caller.umask & 0777);
    // Large inherited ACLs may not fit where a native mkdir or create would
    // fail with ENOSPC too. (An inode number lost here is never reused.)
    if (int r = ProbeXattrs(m.mode, m.xattrs); r != 0) return r;
    m.uid = caller.uid;
    m.gid = caller.gid;
    if (pci.meta.mode & S_ISGID) {
      // A set-group-ID directory hands its group down (and, to
      // directories, the bit itself).
      m.gid = pci.meta.gid;
      if (S_ISDIR(type)) m.mode |= S_ISGID;
    }
    m.nlink = S_ISDIR(type) ? 2 : 1;
    m.rdev = S_ISCHR(type) || S_ISBLK(type) ? rdev : 0;
    if (link_target != nullptr) {
      m.symlink = link_target;
      m.size = m.symlink.size();
    }
    m.atime = m.mtime = m.ctime = Now();
    CloneChange change;
    change.PutInode(ino, std::move(ci));
    if (S_ISDIR(type)) change.PutListing(ino, {});
    std::vector<DirEntry> after = entries;
    after.push_back(DirEntry{name, ino, TypeOf(type), ""});
    PutListing(*p, own, entries, after, &change);
    pci.meta.mtime = pci.meta.ctime = Now();
    if (S_ISDIR(type)) ++pci.meta.nlink;
    change.PutInode(p->ino, std::move(pci));
    if (int r = Apply(snap, change); r != 0) return r;
  }
  std::shared_lock lock(snapshots_mutex_);
  return Enter(snap, ino, type, "", parent, e);
}

int SnapshotView::Link(uint64_t node, uint64_t parent, const char* name, fuse_entry_param* e) {
  if (std::strlen(name) > NAME_MAX) return -ENAMETOOLONG;
  std::shared_ptr<Node> n;
  {
    std::lock_guard writer(clone_mutex_);
    std::shared_lock lock(snapshots_mutex_);
    int err = 0;
    n = WritableNode(node, &err);
    std::shared_ptr<Node> p = n ? WritableNode(parent, &err) : nullptr;
    if (!p) return err;
    if (n->snap != p->snap) return -EXDEV;
    if (S_ISDIR(n->type)) return -EPERM;
    std::vector<DirEntry> entries;
    bool own = false;
    if (int r = CloneEntriesOf(*p, &entries, &own); r != 0) return r;
    if (FindEntry(entries, name) != nullptr) return -EEXIST;
    CloneInode ci, pci;
    if (int r = CloneInodeOf(*n, &ci); r != 0) return r;
    if (int r = CloneInodeOf(*p, &pci); r != 0) return r;
    if (ci.meta.nlink == 0) return -ENOENT;
    CloneChange change;
    ++ci.meta.nlink;
    ci.meta.ctime = Now();
    change.PutInode(n->ino, std::move(ci));
    std::vector<DirEntry> after = entries;
    after.push_back(DirEntry{name, n->ino, TypeOf(n->type), n->handle});
    PutListing(*p, own, entries, after, &change);
    pci.meta.mtime = pci.meta.ctime = Now();
    change.PutInode(p->ino, std::move(pci));
    if (int r = Apply(n->snap, change); r != 0) return r;
  }
  std::shared_lock lock(snapshots_mutex_);
  return Enter(n->snap, n->ino, n->type, n->handle, parent, e);
}

int SnapshotView::Remove(uint64_t parent, const char* name, bool directory) {
  std::lock_guard writer(clone_mutex_);
  std::shared_lock lock(snapshots_mutex_);
  std::shared_ptr<Node> p;
  std::vector<DirEntry> entries;
  bool own = false;
  if (int r = WritableDir(parent, &p, &entries, &own); r != 0) return r;
  const DirEntry* found = FindEntry(entries, name);
  if (found == nullptr) return -ENOENT;
  const Node victim = NodeOf(p->snap, *found);
  if (directory && !S_ISDIR(victim.type)) return -ENOTDIR;
  if (!directory && S_ISDIR(victim.type)) return -EISDIR;
  if (directory) {
    std::vector<DirEntry> inside;
    bool inside_own = false;
    if (int r = CloneEntriesOf(victim, &inside, &inside_own); r != 0) return r;
    if (!inside.empty()) return -ENOTEMPTY;
  }
  CloneInode pci;
  if (int r = CloneInodeOf(*p, &pci); r != 0) return r;
  CloneChange change;
  if (int r = Unlinked(victim, &change); r != 0) return r;
  std::vector<DirEntry> after = entries;
  EraseEntry(&after, name);
  PutListing(*p, own, entries, after, &change);
  pci.meta.mtime = pci.meta.ctime = Now();
  if (directory && pci.meta.nlink > 2) --pci.meta.nlink;
  change.PutInode(p->ino, std::move(pci));
  return Apply(p->snap, change);
}

int SnapshotView::Rename(uint64_t parent, const char* name, uint64_t newparent, const char* newname,
                         unsigned flags) {
  if (flags & ~static_cast<unsigned>(RENAME_NOREPLACE | RENAME_EXCHANGE)) return -EINVAL;
  if (std::strlen(newname) > NAME_MAX) return -ENAMETOOLONG;
  std::lock_guard writer(clone_mutex_);
  std::shared_lock lock(snapshots_mutex_);
  int err = 0;
  std::shared_ptr<Node> p1 = WritableNode(parent, &err);
  std::shared_ptr<Node> p2 = p1 ? WritableNode(newparent, &err) : nullptr;
  if (!p2) return err;
  if (p1->snap != p2->snap) return -EXDEV;
  const bool same_dir = p1->ino == p2->ino;
  std::vector<DirEntry> e1, e2;
  bool own1 = false, own2 = false;
  if (int r = CloneEntriesOf(*p1, &e1, &own1); r != 0) return r;
  if (same_dir) {
    e2 = e1;
    own2 = own1;
  } else if (int r = CloneEntriesOf(*p2, &e2, &own2); r != 0) {
    return r;
  }
  const DirEntry* src_entry = FindEntry(e1, name);
  if (src_entry == nullptr) return -ENOENT;
  const DirEntry src = *src_entry;
  const DirEntry* dst_entry = FindEntry(e2, newname);
  std::optional<DirEntry> dst;
  if (dst_entry != nullptr) dst = *dst_entry;
  if ((flags & RENAME_NOREPLACE) && dst) return -EEXIST;
  if ((flags & RENAME_EXCHANGE) && !dst) return -ENOENT;
  if (dst && dst->ino == src.ino) return 0;  // Two names of one object.
  const bool src_dir = src.type == DT_DIR, dst_dir = dst && dst->type == DT_DIR;
  CloneChange change;
  CloneInode pci1, pci2;
  if (int r = CloneInodeOf(*p1, &pci1); r != 0) return r;
  if (!same_dir) {
    if (int r = CloneInodeOf(*p2, &pci2); r != 0) return r;
  }
  auto node_of = [&](const DirEntry& d) { return NodeOf(p1->snap, d); };
  auto touch = [&](const DirEntry& d) -> int {
    CloneInode ci;
    if (int r = CloneInodeOf(node_of(d), &ci); r != 0) return r;
    ci.meta.ctime = Now();
    change.PutInode(d.ino, std::move(ci));
    return 0;
  };
  std::vector<DirEntry> a1 = e1, a2 = e2;
  std::vector<DirEntry>& to = same_dir ? a1 : a2;  // The new parent's entries.
  int64_t d1 = 0, d2 = 0;                          // Link count changes of the parents.
  if (flags & RENAME_EXCHANGE) {
    DirEntry moved_src = src, moved_dst = *dst;
    moved_src.name = newname;
    moved_dst.name = name;
    SetEntry(&a1, moved_dst);
    SetEntry(&to, moved_src);
    if (!same_dir) {
      d1 = static_cast<int64_t>(dst_dir) - static_cast<int64_t>(src_dir);
      d2 = -d1;
    }
    if (int r = touch(src); r != 0) return r;
    if (int r = touch(*dst); r != 0) return r;
  } else {
    if (dst) {
      if (src_dir && !dst_dir) return -ENOTDIR;
      if (!src_dir && dst_dir) return -EISDIR;
      if (dst_dir) {
        std::vector<DirEntry> inside;
        bool inside_own = false;
        if (int r = CloneEntriesOf(node_of(*dst), &inside, &inside_own); r != 0) return r;
        if (!inside.empty()) return -ENOTEMPTY;
        --d2;
      }
      if (int r = Unlinked(node_of(*dst), &change); r != 0) return r;
    }
    DirEntry moved = src;
    moved.name = newname;
    EraseEntry(&a1, name);
    SetEntry(&to, moved);
    if (!same_dir && src_dir) {
      --d1;
      ++d2;
    }
    if (int r = touch(src); r != 0) return r;
  }
  const struct timespec now = Now();
  if (same_dir) {
    d1 += d2;
    d2 = 0;
  }
  pci1.meta.mtime = pci1.meta.ctime = now;
  pci1.meta.nlink = static_cast<uint64_t>(static_cast<int64_t>(pci1.meta.nlink) + d1);
  PutListing(*p1, own1, e1, a1, &change);
  change.PutInode(p1->ino, std::move(pci1));
  if (!same_dir) {
    pci2.meta.mtime = pci2.meta.ctime = now;
    pci2.meta.nlink = static_cast<uint64_t>(static_cast<int64_t>(pci2.meta.nlink) + d2);
    PutListing(*p2, own2, e2, a2, &change);
    change.PutInode(p2->ino, std::move(pci2));
  }
  if (int r = Apply(p1->snap, change); r != 0) return r;
  // ".." of a moved directory node.
  std::lock_guard nodes(nodes_mutex_);
  if (auto it = nodes_.find(NodeId(p1->snap, src.ino)); it != nodes_.end()) {
    it->second->parent = newparent;
  }
  if (dst && (flags & RENAME_EXCHANGE)) {
    if (auto it = nodes_.find(NodeId(p1->snap, dst->ino)); it != nodes_.end()) {
      it->second->parent = parent;
    }
  }
  return 0;
}

bool SnapshotView::InGroup(const Caller& caller, gid_t gid) {
  return caller.gid == gid ||
         std::find(caller.groups.begin(), caller.groups.end(), gid) != caller.groups.end();
}

int SnapshotView::SetXattr(uint64_t node, const Caller& caller, const char* name,
                           const std::string& value, int flags) {
  if (std::strlen(name) > XATTR_NAME_MAX) return -ERANGE;
  if (int r = XattrNameError(name); r != 0) return r;
  if (value.size() > XATTR_SIZE_MAX) return -E2BIG;
  std::lock_guard writer(clone_mutex_);
  std::shared_lock lock(snapshots_mutex_);
  std::shared_ptr<Node> n;
  CloneInode ci;
  if (int r = WritableInode(node, &n, &ci); r != 0) return r;
  InodeMeta& m = ci.meta;
  const bool acl = std::strcmp(name, kAclAccess) == 0;
  if (acl && !ValidAcl(value)) return -EINVAL;
  auto it = std::find_if(m.xattrs.begin(), m.xattrs.end(),
                         [&](const auto& kv) { return kv.first == name; });
  if ((flags & XATTR_CREATE) && it != m.xattrs.end()) return -EEXIST;
  if ((flags & XATTR_REPLACE) && it == m.xattrs.end()) return -ENODATA;
  if (it != m.xattrs.end()) {
    it->second = value;
  } else {
    m.xattrs.emplace_back(name, value);
  }
  if (int r = ProbeXattrs(m.mode, m.xattrs); r != 0) return r;
  if (acl) {
    m.mode = ModeFromAcl(value, m.mode);
    // As chmod: set-group-ID goes unless the caller is in the group or has
    // CAP_FSETID.
    if (!caller.fsetid && !InGroup(caller, m.gid)) m.mode &= ~static_cast<uint32_t>(S_ISGID);
    // An access ACL that says no more than the mode is not kept (as Linux).
    if (!ExtendedAcl(value)) {
      m.xattrs.erase(std::remove_if(m.xattrs.begin(), m.xattrs.end(),
                                    [](const auto& kv) { return kv.first == kAclAccess; }),
                     m.xattrs.end());
    }
  }
  m.ctime = Now();
  CloneChange change;
  change.PutInode(n->ino, std::move(ci));
  return Apply(n->snap, change);
}

int SnapshotView::RemoveXattr(uint64_t node, const char* name) {
  if (int r = XattrNameError(name); r != 0) return r;
  std::lock_guard writer(clone_mutex_);
  std::shared_lock lock(snapshots_mutex_);
  std::shared_ptr<Node> n;
  CloneInode ci;
  if (int r = WritableInode(node, &n, &ci); r != 0) return r;
  auto it = std::find_if(ci.meta.xattrs.begin(), ci.meta.xattrs.end(),
                         [&](const auto& kv) { return kv.first == name; });
  if (it == ci.meta.xattrs.end()) {
    // Removing an absent ACL succeeds (as the VFS's ACL removal on ext4).
    const bool acl = std::strcmp(name, kAclAccess) == 0 || std::strcmp(name, kAclDefault) == 0;
    return acl ? 0 : -ENODATA;
  }
  ci.meta.xattrs.erase(it);
  ci.meta.ctime = Now();
  CloneChange change;
  change.PutInode(n->ino, std::move(ci));
  return Apply(n->snap, change);
}

}  // namespace vssfs::fs
