#include "inode_table.h"

#include <fuse_lowlevel.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <optional>
#include <utility>

#include "backing_xattr.h"
#include "file_handle.h"

namespace vssfs::fs {

InodeTable::InodeTable(cow_store::UniqueFd root_fd, const struct stat& root)
    : root_backing_ino_(root.st_ino), dev_(root.st_dev) {
  root_ = std::make_shared<Inode>();
  root_->nodeid = FUSE_ROOT_ID;
  root_->backing_ino = root.st_ino;
  root_->type = S_IFDIR;
  root_->fd = std::move(root_fd);
  root_->nlookup = 1;  // Never forgotten.
  inodes_.emplace(FUSE_ROOT_ID, root_);
}

uint64_t InodeTable::NodeIdFor(ino_t backing_ino) const {
  if (backing_ino == root_backing_ino_) return FUSE_ROOT_ID;
  if (backing_ino == FUSE_ROOT_ID) return root_backing_ino_;
  if (backing_ino >= kReservedNodeIdBase || backing_ino == 0) return 0;
  return backing_ino;
}

namespace {

// Evictions per hold of the table's lock, so that requests are not held up
// behind a long round.
constexpr size_t kEvictionsPerLock = 64;

}  // namespace

std::shared_ptr<Inode> InodeTable::Acquire(cow_store::UniqueFd fd, const struct stat& st) {
  uint64_t id = NodeIdFor(st.st_ino);
  if (id == 0) return nullptr;
  // Whether an evicted entry under this number is this file: the handles
  // tell. Taken outside the lock, and only for an evicted entry.
  std::optional<std::string> handle;
  std::unique_lock lock(mutex_);
  auto it = inodes_.find(id);
  while (it != inodes_.end() && !it->second->fd && !handle) {
    lock.unlock();
    handle.emplace();
    if (HandleAt(fd.get(), "", AT_EMPTY_PATH, &*handle) != 0) handle->clear();
    lock.lock();
    it = inodes_.find(id);
  }
  const uint64_t now = lookups_.fetch_add(1, std::memory_order_relaxed) + 1;
  bool fresh = it == inodes_.end();
  bool reopened = false;
  uint64_t nlookup = 0;
  if (!fresh && !it->second->fd) {
    Inode& old = *it->second;
    if (!handle->empty() && *handle == old.handle && (st.st_mode & S_IFMT) == old.type) {
      ReviveLocked(old, std::move(fd));
      reopened = true;
    } else {
      // Another file took the number (the old one was deleted behind the
      // mount's back). A new entry and generation: on seeing them the
      // kernel drops its old inode, whose FORGET then comes to the new
      // entry, which counts its lookups.
      nlookup = old.nlookup;
      --evicted_;  // The evicted entry goes.
      fresh = true;
    }
  }
  if (fresh) {
    auto inode = std::make_shared<Inode>();
    inode->nodeid = id;
    inode->backing_ino = st.st_ino;
    inode->type = st.st_mode & S_IFMT;
    // 0 is the root's (the kernel gives its root inode generation 0).
    if (++last_generation_ == 0) ++last_generation_;
    inode->generation = last_generation_;
    inode->fd = std::move(fd);
    inode->nlookup = nlookup;
    if (auto birth = births_.find(id); birth != births_.end()) {
      inode->born = birth->second;
      births_.erase(birth);
    }
    if (it == inodes_.end()) {
      it = inodes_.emplace(id, std::move(inode)).first;
    } else {
      it->second = std::move(inode);
    }
  }
  ++it->second->nlookup;
  it->second->last_use.store(now, std::memory_order_relaxed);
  std::shared_ptr<Inode> inode = it->second;
  const bool pressed = (fresh || reopened) && PressedLocked();
  lock.unlock();
  if (pressed) pressure_hook_();
  return inode;
}

std::shared_ptr<Inode> InodeTable::Find(uint64_t nodeid) const {
  std::string handle;
  {
    std::shared_lock lock(mutex_);
    auto it = inodes_.find(nodeid);
    if (it == inodes_.end()) {
      errno = ESTALE;
      return nullptr;
    }
    // Written only when it changes: a directory all requests go through
    // would otherwise bounce between CPUs' caches.
    const uint64_t now = lookups_.load(std::memory_order_relaxed);
    if (it->second->last_use.load(std::memory_order_relaxed) != now) {
      it->second->last_use.store(now, std::memory_order_relaxed);
    }
    if (it->second->fd) return it->second;
    handle = it->second->handle;
  }
  // Evicted: reopened without the lock (it may read the inode from disk),
  // installed under it unless another request was first.
  cow_store::UniqueFd fd =
      OpenByHandle(handle_mount_.load(std::memory_order_relaxed), handle, O_PATH | O_NOFOLLOW);
  if (!fd) return nullptr;  // errno: ESTALE if the file is gone, EMFILE, ...
  std::unique_lock lock(mutex_);
  auto it = inodes_.find(nodeid);
  if (it == inodes_.end()) {
    errno = ESTALE;
    return nullptr;
  }
  Inode& inode = *it->second;
  bool pressed = false;
  // The handle is the file's own: the entry is the same file unless
  // Acquire replaced it (then it holds a descriptor).
  if (!inode.fd && inode.handle == handle) {
    ReviveLocked(inode, std::move(fd));
    pressed = PressedLocked();
  }
  std::shared_ptr<Inode> found = it->second;
  lock.unlock();
  if (pressed) pressure_hook_();
  if (!found->fd) {
    errno = ESTALE;  // Evicted again under another handle: cannot happen.
    return nullptr;
  }
  return found;
}

int InodeTable::EnableEviction(int mount_fd) {
  std::string handle;
  if (int r = HandleAt(mount_fd, "", AT_EMPTY_PATH, &handle); r != 0) return r;
  cow_store::UniqueFd probe = OpenByHandle(mount_fd, handle, O_PATH);
  if (!probe) return -errno;
  handle_mount_ = mount_fd;
  return 0;
}

void InodeTable::ReviveLocked(Inode& inode, cow_store::UniqueFd fd) const {
  inode.fd = std::move(fd);
  inode.handle.clear();
  --evicted_;
}

bool InodeTable::EvictLocked(const std::shared_ptr<Inode>& slot) const {
  Inode& inode = *slot;
  if (!inode.fd || !S_ISREG(inode.type) || slot == root_ || inode.kept.load() ||
      inode.open_files.load(std::memory_order_relaxed) > 0 || slot.use_count() != 1) {
    return false;
  }
  // No request holds the entry (and none can take it without this lock):
  // pair with the release of the last holder's reference before touching
  // what it used.
  std::atomic_thread_fence(std::memory_order_acquire);
  struct stat st;
  // A file without a link would be freed by the close, and its number
  // could be reused while the kernel still names it.
  if (fstat(inode.fd.get(), &st) != 0 || st.st_nlink == 0 || !S_ISREG(st.st_mode)) return false;
  std::string handle;
  if (HandleAt(inode.fd.get(), "", AT_EMPTY_PATH, &handle) != 0) return false;
  inode.handle = std::move(handle);
  inode.fd.reset();
  inode.direct_fd.reset();
  if (int fd = inode.direct_read_fd.load(); fd >= 0) {
    ::close(fd);
    inode.direct_read_fd = -2;  // Opened again on first use.
  }
  ++evicted_;
  evictions_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

template <typename Pred>
std::vector<InodeTable::Use> InodeTable::Uses(Pred eligible) const {
  std::vector<Use> uses;
  std::shared_lock lock(mutex_);
  uses.reserve(inodes_.size());
  for (const auto& [id, inode] : inodes_) {
    if (inode == root_ || inode->open_files.load(std::memory_order_relaxed) > 0 ||
        !eligible(*inode)) {
      continue;
    }
    uses.push_back({inode->last_use.load(std::memory_order_relaxed), id, bool(inode->fd)});
  }
  return uses;
}

template <typename Pred>
std::vector<uint64_t> InodeTable::Oldest(size_t count, Pred eligible) const {
  std::vector<Use> uses = Uses(eligible);
  count = std::min(count, uses.size());
  std::partial_sort(uses.begin(), uses.begin() + static_cast<std::ptrdiff_t>(count), uses.end());
  std::vector<uint64_t> ids;
  ids.reserve(count);
  for (size_t i = 0; i < count; ++i) ids.push_back(uses[i].id);
  return ids;
}

size_t InodeTable::EvictDescriptors(size_t count) {
  if (!eviction_enabled() || count == 0) return 0;
  // Twice as many candidates: some turn out held, or without a link.
  const std::vector<uint64_t> ids = Oldest(2 * count, [](const Inode& inode) {
    return inode.fd && S_ISREG(inode.type) && !inode.kept.load();
  });
  size_t evicted = 0;
  for (size_t i = 0; i < ids.size() && evicted < count; i += kEvictionsPerLock) {
    std::unique_lock lock(mutex_);
    for (size_t j = i; j < std::min(ids.size(), i + kEvictionsPerLock) && evicted < count; ++j) {
      auto it = inodes_.find(ids[j]);
      if (it != inodes_.end() && EvictLocked(it->second)) ++evicted;
    }
  }
  return evicted;
}

void InodeTable::Forget(uint64_t nodeid, uint64_t n) {
  std::shared_ptr<Inode> dropped;
  {
    std::unique_lock lock(mutex_);
    auto it = inodes_.find(nodeid);
    if (it == inodes_.end() || it->second == root_) return;
    Inode& inode = *it->second;
    inode.nlookup = n >= inode.nlookup ? 0 : inode.nlookup - n;
    if (inode.nlookup == 0) {
      if (const uint64_t born = inode.born.load(); born != Inode::kNoEpoch) births_[nodeid] = born;
      if (!inode.fd) --evicted_;
      dropped = std::move(it->second);
      inodes_.erase(it);
      forgotten_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  // Its descriptor may be the last of a deleted file, whose close frees the
  // file (see deferred_release.h). Held elsewhere, it is closed there.
  if (dropped && dropped.use_count() == 1 && dropped->fd) release_.Add(std::move(dropped));
}

void InodeTable::CloseLater(cow_store::UniqueFd fd) {
  if (!fd) return;
  try {
    auto owned = std::make_shared<cow_store::UniqueFd>(std::move(fd));
    release_.Add(std::move(owned));
  } catch (const std::bad_alloc&) {
    // `fd` was moved only if the allocation succeeded: closed here otherwise.
  }
}

std::vector<uint64_t> InodeTable::LeastRecentlyUsed(size_t count, bool evicted) const {
  return Oldest(count, [evicted](const Inode& inode) { return !inode.fd == evicted; });
}

std::vector<uint64_t> InodeTable::OldestHolding(size_t count) const {
  std::vector<Use> uses = Uses([](const Inode&) { return true; });
  // Sorted as far as needed: first four times `count`, then all.
  auto end = uses.begin() + static_cast<std::ptrdiff_t>(std::min(uses.size(), 4 * count));
  std::partial_sort(uses.begin(), end, uses.end());
  std::vector<uint64_t> ids;
  size_t held = 0;
  for (auto it = uses.begin(); it != uses.end() && held < count; ++it) {
    if (it == end) {
      std::sort(end, uses.end());
      end = uses.end();
    }
    ids.push_back(it->id);
    held += it->held ? 1 : 0;
  }
  return ids;
}

void InodeTable::MarkUsed(const std::vector<uint64_t>& ids) {
  std::shared_lock lock(mutex_);
  const uint64_t now = lookups_.load(std::memory_order_relaxed);
  for (uint64_t id : ids) {
    if (auto it = inodes_.find(id); it != inodes_.end()) {
      it->second->last_use.store(now, std::memory_order_relaxed);
    }
  }
}

void InodeTable::ClearBirths() {
  std::unique_lock lock(mutex_);
  births_.clear();
}

void InodeTable::SetPressureHook(size_t limit, std::function<void()> hook) {
  std::unique_lock lock(mutex_);
  pressure_limit_ = limit;
  pressure_hook_ = std::move(hook);
}

size_t InodeTable::size() const {
  std::shared_lock lock(mutex_);
  return inodes_.size();
}

size_t InodeTable::descriptors() const {
  std::shared_lock lock(mutex_);
  return inodes_.size() - evicted_.load(std::memory_order_relaxed);
}

int LiveSymlinkPath(const Inode& inode, std::string* path) {
  path->clear();
  if (!S_ISLNK(inode.type)) return 0;
  // Where the kernel last looked it up, through the parent's descriptor.
  std::shared_ptr<Inode> parent;
  std::string name;
  {
    std::lock_guard lock(inode.location_mutex);
    parent = inode.location_parent.lock();
    name = inode.location_name;
  }
  if (parent) {
    *path = std::string(ProcPath(parent->fd.get()).path) + "/" + name;
    if (SameInode(inode.fd.get(), *path) == 0) return 0;
  }
  // Where the descriptor's own name is now.
  return DescriptorPath(inode.fd.get(), path);
}

}  // namespace vssfs::fs
