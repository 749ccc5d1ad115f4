// SnapshotView: the read-only trees under MOUNT/.snapshot/<name>/.
//
// A snapshot node is (snapshot id, backing inode number). Its FUSE node id
// is kReservedNodeIdBase | id << 40 | ino: unique across the live tree and
// every snapshot, and the same after a remount. Objects with inode numbers
// of 2^40 or more cannot be shown (EOVERFLOW); ext4 numbers are 32-bit.
//
// Every read resolves through the store: the first record at an epoch >= the
// snapshot's id, else the live object (by file handle), read while holding
// the object's CowEngine stripe so that no preservation-then-overwrite can
// slip between the decision and the read. Every modification is EROFS.
//
// Thread-safety: all methods may be called concurrently. Lock order:
// snapshots_mutex_ (shared by readers, exclusive to delete) -> nodes_mutex_
// / files_mutex_ (leaf) ; a CowEngine stripe is taken with neither of the
// latter held.
#ifndef VSSFS_FS_SRC_SNAPSHOT_VIEW_H_
#define VSSFS_FS_SRC_SNAPSHOT_VIEW_H_

#include <fuse_lowlevel.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cow.h"
#include "inode_table.h"
#include "vssfs/cow_store/store.h"

namespace vssfs::fs {

class SnapshotView {
 public:
  // `cow` is borrowed. `root_ino`/`root_handle`: the backing root.
  SnapshotView(CowEngine* cow, ino_t root_ino, std::string root_handle, double timeout);

  static bool IsSnapshotNode(uint64_t nodeid) {
    return nodeid >= kReservedNodeIdBase && nodeid != kSnapshotDirNodeId;
  }
  // Node id of `ino` in snapshot `snap`; 0 if it does not fit.
  static uint64_t NodeId(cow_store::SnapId snap, cow_store::Ino ino);

  // Reloads the set of snapshots after a create. Deleting takes the
  // exclusive lock returned by LockForDelete() around the store call, then
  // calls RefreshLocked().
  void Refresh();
  void RefreshLocked();
  std::unique_lock<std::shared_mutex> LockForDelete() { return std::unique_lock(snapshots_mutex_); }

  // MOUNT/.snapshot itself.
  int LookupSnapshot(const char* name, fuse_entry_param* e);
  struct Listed {
    std::string name;
    uint64_t nodeid;
    mode_t type;
  };
  int ListSnapshotNames(std::vector<Listed>* out);

  int Lookup(uint64_t parent, const char* name, fuse_entry_param* e);
  int GetAttr(uint64_t node, struct stat* st);
  int ReadLink(uint64_t node, std::string* target);
  // The entries of a snapshot directory, "." and ".." first.
  int List(uint64_t node, std::vector<Listed>* out);
  int Open(uint64_t node, int flags, uint64_t* fh);
  int Read(uint64_t node, uint64_t fh, size_t size, off_t off, std::string* out);
  void Release(uint64_t fh);
  int GetXattr(uint64_t node, const char* name, size_t size, std::string* value);
  int ListXattr(uint64_t node, size_t size, std::string* list);
  void Forget(uint64_t node, uint64_t n);

 private:
  struct Node {
    cow_store::SnapId snap = 0;
    cow_store::Ino ino = 0;
    mode_t type = 0;
    std::string handle;
    uint64_t parent = 0;  // Node id of the directory it was first found in.
    uint64_t nlookup = 0;
  };
  struct File {
    cow_store::SnapId snap = 0;
    cow_store::Ino ino = 0;
    uint64_t size = 0;
    std::string handle;
    std::mutex mutex;  // Guards live_fd's opening.
    cow_store::UniqueFd live_fd;
    bool live_tried = false;
  };

  bool SnapshotExists(cow_store::SnapId snap) const { return live_.count(snap) != 0; }
  std::shared_ptr<Node> Find(uint64_t nodeid);
  // Find(), but null when the node's snapshot was deleted. Caller holds
  // snapshots_mutex_.
  std::shared_ptr<Node> FindLive(uint64_t nodeid);
  // Registers a kernel lookup of (snap, ino) and fills *e.
  int Enter(cow_store::SnapId snap, cow_store::Ino ino, mode_t type, const std::string& handle,
            uint64_t parent, fuse_entry_param* e);
  // The attributes of `n` at its snapshot; with_xattrs also reads xattrs
  // of a live object.
  int Resolve(const Node& n, bool with_xattrs, cow_store::InodeMeta* meta);
  // The entries of directory `n` at its snapshot.
  int Entries(const Node& n, std::vector<cow_store::DirEntry>* out);
  void FillStat(uint64_t nodeid, const cow_store::InodeMeta& m, struct stat* st) const;

  CowEngine* cow_;
  ino_t root_ino_;
  std::string root_handle_;
  double timeout_;

  mutable std::shared_mutex snapshots_mutex_;
  std::set<cow_store::SnapId> live_;  // Guarded by snapshots_mutex_.

  std::mutex nodes_mutex_;
  std::unordered_map<uint64_t, std::shared_ptr<Node>> nodes_;  // Guarded by nodes_mutex_.

  std::mutex files_mutex_;
  uint64_t next_file_ = 1;                                     // Guarded by files_mutex_.
  std::unordered_map<uint64_t, std::shared_ptr<File>> files_;  // Guarded by files_mutex_.
};

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_SNAPSHOT_VIEW_H_
