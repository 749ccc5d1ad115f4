// CowEngine: the live path's copy-on-write side. Before a request changes an
// object that the latest snapshot still shows as it is, the handler asks the
// engine to preserve that state in the store; only then does it change the
// backing object.
//
//   * Every mutating request runs inside an Epoch (a shared hold of the
//     epoch lock). Snapshot creation takes the lock exclusively for the cut,
//     so a request is wholly before or wholly after a snapshot's instant:
//     no block is torn between its preserved copy and new data.
//   * Preservation is durable before it returns (Store::Preserve), so an
//     overwrite can reach the disk only after the old state is safe.
//   * Snapshot readers that fall through to the live object hold the
//     object's stripe shared while they look up records and read; after
//     each preservation the engine waits for such readers (Grace) before
//     the handler mutates, so they never see new data under an old record.
//
// What is preserved for an object at the latest snapshot k is cached on its
// Inode (cow_* fields) and, on a miss, read from the store: an object counts
// as preserved when it has a record at epoch >= k.
//
// Target file lists: while every snapshot is partial, objects none covers
// are not preserved at all (SetCoverage; the check is one atomic load per
// request and a hash lookup per preservation).
//
// Thread-safety: all methods may be called concurrently. Lock order:
// epoch_mutex_ (shared by requests) -> Inode::write_mutex ->
// Inode::cow_mutex -> stripes_ (only briefly, never two at once) -> store.
#ifndef VSSFS_FS_SRC_COW_H_
#define VSSFS_FS_SRC_COW_H_

#include <sys/stat.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "file_handle.h"
#include "inode_table.h"
#include "vssfs/cow_store/store.h"
#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::fs {

class CowEngine {
 public:
  // `store` and the descriptors are borrowed and must outlive the engine.
  // `mount_fd`: an O_RDONLY descriptor of the backing root; `keep_fd`: the
  // keep directory (same filesystem as the backing tree).
  CowEngine(cow_store::Store* store, int mount_fd, int keep_fd, ino_t root_ino);

  // Objects some existing snapshot covers; null: every object (a
  // whole-volume snapshot exists). See SnapshotInfo::covered.
  using Coverage = std::shared_ptr<const std::unordered_set<cow_store::Ino>>;

  class Epoch {
   public:
    cow_store::SnapId latest() const { return latest_; }
    bool active() const { return latest_ != 0; }
    // Whether a snapshot may show `ino`: else nothing of it is preserved
    // (the saving of target file lists).
    bool Covers(cow_store::Ino ino) const {
      return covered_ == nullptr || covered_->count(ino) != 0;
    }

   private:
    friend class CowEngine;
    std::shared_lock<std::shared_mutex> lock_;
    cow_store::SnapId latest_ = 0;
    const std::unordered_set<cow_store::Ino>* covered_ = nullptr;  // Null: everything.
  };
  // Enters a mutating request: holds off snapshot cuts until destroyed.
  Epoch Enter();
  // The cut: no mutating request runs while the returned lock is held.
  std::unique_lock<std::shared_mutex> Cut() { return std::unique_lock(epoch_mutex_); }
  // Sets what the snapshots cover (from the store's snapshot records),
  // for requests entering from now on. Widen it only under the cut;
  // narrowing (after a delete) is safe at any time.
  void SetCoverage(Coverage covered);
  // The coverage the store's snapshots describe now.
  static cow_store::Result<Coverage> CoverageOf(const cow_store::Store& store);

  // Whether anything of `inode` may need preserving in this epoch.
  static bool Needed(const Epoch& e, const Inode* inode) {
    return e.active() && (inode == nullptr || inode->born.load() != e.latest());
  }

  // Each returns 0 or a negative errno; on error nothing was changed and the
  // handler must fail the request without mutating (ENOSPC when the store
  // is full). `inode` may be null (no cache). `fd` is an O_PATH descriptor
  // of the object, `ino` its backing inode number.
  int PreserveInode(const Epoch& e, Inode* inode, int fd, cow_store::Ino ino);
  int PreserveListing(const Epoch& e, Inode* inode, int dir_fd, cow_store::Ino ino);
  // Blocks of a regular file intersecting [off, off + len); len UINT64_MAX
  // means to the end. Also preserves the attributes. Caller holds
  // inode.write_mutex.
  int PreserveData(const Epoch& e, Inode& inode, uint64_t off, uint64_t len);
  // Before a non-directory loses its last name: keeps it alive in the keep
  // directory (a hard link) for the snapshots that show it.
  int Keep(const Epoch& e, int fd, cow_store::Ino ino);

  // Snapshot readers hold this shared while deciding to read a live object
  // and reading it.
  std::shared_mutex& Stripe(cow_store::Ino ino) { return stripes_[ino % kStripes]; }

  // The name of a kept file in the keep directory.
  static std::string KeepName(cow_store::Ino ino);
  int keep_fd() const { return keep_fd_; }
  int mount_fd() const { return mount_fd_; }
  cow_store::Store& store() { return *store_; }

 private:
  // Makes sure inode's cow_* fields describe epoch k. Caller holds
  // inode.cow_mutex.
  int Load(Inode& inode, cow_store::SnapId k, int fd);
  int PreserveInodeLocked(const Epoch& e, int fd, cow_store::Ino ino, uint64_t* size,
                          const std::string& symlink_path = {});
  void Grace(cow_store::Ino ino) { std::unique_lock lock(Stripe(ino)); }

  static constexpr size_t kStripes = 256;
  cow_store::Store* store_;
  int mount_fd_;
  int keep_fd_;
  ino_t root_ino_;
  uint32_t block_size_;
  std::shared_mutex epoch_mutex_;
  // Read lock-free on every request; the sets stay alive in
  // coverage_history_ for the engine's life (one per change of coverage,
  // which only partial snapshots cause).
  std::atomic<const std::unordered_set<cow_store::Ino>*> covered_{nullptr};
  std::mutex coverage_mutex_;  // Leaf; guards coverage_history_.
  std::vector<Coverage> coverage_history_;
  std::array<std::shared_mutex, kStripes> stripes_;
};

// Reads a live directory as a listing: every entry but "." and "..", and at
// the volume root none of the reserved names. Returns 0 or a negative errno.
int ReadLiveListing(int dir_fd, bool is_root, std::vector<cow_store::DirEntry>* out);
// The attributes of a live object as a snapshot records them; without
// `with_xattrs` only the stat fields (no xattrs, no symlink target). A
// symlink's xattrs are read through `symlink_path` when it names the object
// (LiveSymlinkPath), else through the descriptor's own name.
int ReadLiveMeta(int fd, bool with_xattrs, cow_store::InodeMeta* meta,
                 const std::string& symlink_path = {});

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_COW_H_
