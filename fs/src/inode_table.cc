#include "inode_table.h"

#include <fuse_lowlevel.h>

#include <algorithm>
#include <mutex>
#include <utility>

#include "backing_xattr.h"

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

std::shared_ptr<Inode> InodeTable::Acquire(cow_store::UniqueFd fd, const struct stat& st) {
  uint64_t id = NodeIdFor(st.st_ino);
  if (id == 0) return nullptr;
  std::unique_lock lock(mutex_);
  const uint64_t now = lookups_.fetch_add(1, std::memory_order_relaxed) + 1;
  auto [it, inserted] = inodes_.try_emplace(id);
  if (inserted) {
    auto inode = std::make_shared<Inode>();
    inode->nodeid = id;
    inode->backing_ino = st.st_ino;
    inode->type = st.st_mode & S_IFMT;
    // 0 is the root's (the kernel gives its root inode generation 0).
    if (++last_generation_ == 0) ++last_generation_;
    inode->generation = last_generation_;
    inode->fd = std::move(fd);
    if (auto birth = births_.find(id); birth != births_.end()) {
      inode->born = birth->second;
      births_.erase(birth);
    }
    it->second = std::move(inode);
  }
  ++it->second->nlookup;
  it->second->last_use.store(now, std::memory_order_relaxed);
  std::shared_ptr<Inode> inode = it->second;
  const bool pressed = inserted && inodes_.size() > pressure_limit_;
  lock.unlock();
  if (pressed) pressure_hook_();
  return inode;
}

std::shared_ptr<Inode> InodeTable::Find(uint64_t nodeid) const {
  std::shared_lock lock(mutex_);
  auto it = inodes_.find(nodeid);
  if (it == inodes_.end()) return nullptr;
  // Written only when it changes: a directory all requests go through
  // would otherwise bounce between CPUs' caches.
  const uint64_t now = lookups_.load(std::memory_order_relaxed);
  if (it->second->last_use.load(std::memory_order_relaxed) != now) {
    it->second->last_use.store(now, std::memory_order_relaxed);
  }
  return it->second;
}

void InodeTable::Forget(uint64_t nodeid, uint64_t n) {
  std::unique_lock lock(mutex_);
  auto it = inodes_.find(nodeid);
  if (it == inodes_.end() || it->second == root_) return;
  Inode& inode = *it->second;
  inode.nlookup = n >= inode.nlookup ? 0 : inode.nlookup - n;
  if (inode.nlookup == 0) {
    if (const uint64_t born = inode.born.load(); born != Inode::kNoEpoch) births_[nodeid] = born;
    inodes_.erase(it);
    forgotten_.fetch_add(1, std::memory_order_relaxed);
  }
}

std::vector<uint64_t> InodeTable::LeastRecentlyUsed(size_t count) const {
  std::vector<std::pair<uint64_t, uint64_t>> uses;  // (last use, node id)
  {
    std::shared_lock lock(mutex_);
    uses.reserve(inodes_.size());
    for (const auto& [id, inode] : inodes_) {
      if (inode == root_ || inode->open_files.load(std::memory_order_relaxed) > 0) continue;
      uses.emplace_back(inode->last_use.load(std::memory_order_relaxed), id);
    }
  }
  count = std::min(count, uses.size());
  std::partial_sort(uses.begin(), uses.begin() + static_cast<std::ptrdiff_t>(count), uses.end());
  std::vector<uint64_t> ids;
  ids.reserve(count);
  for (size_t i = 0; i < count; ++i) ids.push_back(uses[i].second);
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
