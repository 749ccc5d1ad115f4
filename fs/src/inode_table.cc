#include "inode_table.h"

#include <fuse_lowlevel.h>

#include <mutex>

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
    it->second = std::move(inode);
  }
  ++it->second->nlookup;
  return it->second;
}

std::shared_ptr<Inode> InodeTable::Find(uint64_t nodeid) const {
  std::shared_lock lock(mutex_);
  auto it = inodes_.find(nodeid);
  return it == inodes_.end() ? nullptr : it->second;
}

void InodeTable::Forget(uint64_t nodeid, uint64_t n) {
  std::unique_lock lock(mutex_);
  auto it = inodes_.find(nodeid);
  if (it == inodes_.end() || it->second == root_) return;
  Inode& inode = *it->second;
  inode.nlookup = n >= inode.nlookup ? 0 : inode.nlookup - n;
  if (inode.nlookup == 0) inodes_.erase(it);
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
