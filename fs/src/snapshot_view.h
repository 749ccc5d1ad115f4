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
// slip between the decision and the read.
//
// A snapshot with a clone (Remote VSS auto-recovery, cow_store::CloneChange)
// shows the clone: the clone's own objects, listings and blocks first, the
// snapshot underneath. While the clone is writable, modifications go into
// the store (snapshot_clone.cc), durable when the request returns; objects
// born in the clone get numbers from 2^40-1 down. Every modification of a
// snapshot without a writable clone is EROFS, root included, also through
// descriptors opened before a freeze.
//
// Thread-safety: all methods may be called concurrently. Lock order:
// clone_mutex_ (writers of clones; serialises them) -> snapshots_mutex_
// (shared by readers, exclusive to delete) -> nodes_mutex_ / files_mutex_
// (leaf) ; a CowEngine stripe is taken with neither of the latter held.
#ifndef VSSFS_FS_SRC_SNAPSHOT_VIEW_H_
#define VSSFS_FS_SRC_SNAPSHOT_VIEW_H_

#include <fuse_lowlevel.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cow.h"
#include "inode_table.h"
#include "vssfs/cow_store/store.h"

namespace vssfs::fs {

// 0 if `name` is an xattr name Linux accepts (user.*, trusted.*, security.*,
// the two POSIX ACLs), EOPNOTSUPP for another namespace, EINVAL for a bare
// prefix.
int XattrNameError(const char* name);

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
  // The entries of MOUNT/.snapshot: every snapshot except those whose clone
  // is writable (LookupSnapshot still finds them).
  int ListSnapshotNames(std::vector<Listed>* out);

  int Lookup(uint64_t parent, const char* name, fuse_entry_param* e);
  int GetAttr(uint64_t node, struct stat* st);
  int ReadLink(uint64_t node, std::string* target);
  // The entries of a snapshot directory, "." and ".." first.
  int List(uint64_t node, std::vector<Listed>* out);
  struct Caller;
  // Opens a file of a snapshot; write access (and O_TRUNC) only in a
  // writable clone, else EROFS.
  int Open(uint64_t node, int flags, const Caller& caller, uint64_t* fh);
  int Read(uint64_t node, uint64_t fh, size_t size, off_t off, std::string* out);
  void Release(uint64_t fh);
  int GetXattr(uint64_t node, const char* name, size_t size, std::string* value);
  // Every xattr name (NUL-terminated each) into *list; returns its length.
  int ListXattr(uint64_t node, std::string* list);
  void Forget(uint64_t node, uint64_t n);
  // Entry and attribute cache lifetime for nodes of `node`'s snapshot: 0
  // when it has a clone (it changes), else the mount's.
  double TimeoutFor(uint64_t node) const;

  // ---- writable clones (snapshot_clone.cc) ----
  // Who asks: the FUSE request's caller. The kernel has checked permissions
  // (default_permissions); these set ownership of new objects and clear
  // set-id bits as the live path does.
  struct Caller {
    uid_t uid = 0;
    gid_t gid = 0;
    mode_t umask = 0;
    bool kill_suidgid = false;  // FUSE asked to drop set-id bits.
    std::vector<gid_t> groups;  // Supplementary groups.
    bool fsetid = false;        // Has CAP_FSETID.
  };
  // Errors common to all: EROFS (no writable clone), ESTALE (node gone),
  // ENOSPC/EIO (store).
  int SetAttr(uint64_t node, const Caller& caller, const struct stat& attr, int to_set,
              struct stat* out);
  // Returns bytes written or -errno.
  int Write(uint64_t node, uint64_t fh, const Caller& caller, const char* data, size_t size,
            off_t off);
  // mknod/mkdir/symlink (link_target non-null) in a clone directory.
  int MakeNode(uint64_t parent, const Caller& caller, const char* name, mode_t mode, dev_t rdev,
               const char* link_target, fuse_entry_param* e);
  int Link(uint64_t node, uint64_t parent, const char* name, fuse_entry_param* e);
  int Remove(uint64_t parent, const char* name, bool directory);
  int Rename(uint64_t parent, const char* name, uint64_t newparent, const char* newname,
             unsigned flags);
  // Allocation (size only), punch-hole and zero-range; collapse and insert
  // are EOPNOTSUPP in a clone.
  int Fallocate(uint64_t node, uint64_t fh, const Caller& caller, int mode, off_t offset,
                off_t length);
  int SetXattr(uint64_t node, const Caller& caller, const char* name, const std::string& value,
               int flags);
  int RemoveXattr(uint64_t node, const char* name);

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
    uint64_t size = 0;  // The snapshot's size (clones re-read theirs).
    std::string handle;
    std::mutex mutex;  // Guards live_fd's opening.
    cow_store::UniqueFd live_fd;
    bool live_tried = false;
  };

  bool SnapshotExists(cow_store::SnapId snap) const { return live_.count(snap) != 0; }
  // Caller holds snapshots_mutex_.
  cow_store::CloneState CloneOf(cow_store::SnapId snap) const {
    auto it = live_.find(snap);
    return it == live_.end() ? cow_store::CloneState::kNone : it->second;
  }
  // Bytes [start, end) of file `f` as its snapshot (and clone) shows them,
  // into out (resized to end - start). `limit`: see CloneInode::base_limit
  // (the snapshot's size when the clone has no record). Caller holds
  // snapshots_mutex_.
  int ReadRange(File& f, bool clone, uint64_t limit, uint64_t start, uint64_t end,
                std::string* out);
  // Clone writers (clone_mutex_ and snapshots_mutex_ held):
  // The object as the clone stores it: its record, or the snapshot's
  // attributes (with xattrs) and base_limit = size.
  int CloneInodeOf(const Node& n, cow_store::CloneInode* out);
  // The directory's entries as the clone shows them; *own: the clone has
  // its own listing (else a change must copy the whole listing in).
  int CloneEntriesOf(const Node& dir, std::vector<cow_store::DirEntry>* out, bool* own);
  std::shared_ptr<File> FindFile(uint64_t fh);
  static Node NodeOf(cow_store::SnapId snap, const cow_store::DirEntry& entry);
  // The clone's record of open file `f` (copied in if new); ESTALE, EROFS.
  int WritableFile(const File& f, cow_store::CloneInode* ci);
  // Node `nodeid` of a writable clone and its record (CloneInodeOf).
  int WritableInode(uint64_t nodeid, std::shared_ptr<Node>* node, cow_store::CloneInode* ci);
  // Directory `nodeid` of a writable clone and its entries (CloneEntriesOf).
  int WritableDir(uint64_t nodeid, std::shared_ptr<Node>* dir,
                  std::vector<cow_store::DirEntry>* entries, bool* own);
  // Node `nodeid` if its snapshot has a writable clone; *error otherwise.
  std::shared_ptr<Node> WritableNode(uint64_t nodeid, int* error);
  // Adds to `change` what truncating `n` (stored as *ci) to `size` needs.
  int Truncate(File& f, cow_store::CloneInode* ci, uint64_t size, cow_store::CloneChange* change);
  // Adds to `change` the blocks of [start, end) with `data` written there
  // (zeros when null), growing *ci's size to `end` if shorter.
  int Overwrite(File& f, cow_store::CloneInode* ci, uint64_t start, uint64_t end, const char* data,
                cow_store::CloneChange* change);
  // Drops one link of the object `victim` (already removed from its
  // directory) in `change`.
  int Unlinked(const Node& victim, cow_store::CloneChange* change);
  // Adds the new listing of `dir` to `change`.
  static void PutListing(const Node& dir, bool own, const std::vector<cow_store::DirEntry>& before,
                         const std::vector<cow_store::DirEntry>& after,
                         cow_store::CloneChange* change);
  int Apply(cow_store::SnapId snap, cow_store::CloneChange& change);
  static void DropSetid(cow_store::InodeMeta* m, const Caller& caller);
  static bool InGroup(const Caller& caller, gid_t gid);
  // Whether the backing filesystem would take this xattr set, ACLs
  // included, on one inode of type `mode` (tried, when it is larger than
  // kXattrProbeFrom bytes, on a nameless file or a scratch directory in the
  // keep directory; other types on a nameless regular file). Returns 0 or
  // the backing filesystem's negative errno (-ENOSPC on ext4); 0 too when no
  // probe can be made. Names the probe may not set are left out. Caller
  // holds clone_mutex_.
  static constexpr size_t kXattrProbeFrom = 1024;
  int ProbeXattrs(mode_t mode, const cow_store::XattrList& xattrs);
  bool IsOpen(cow_store::SnapId snap, cow_store::Ino ino);
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
  int EntriesUnfiltered(const Node& n, std::vector<cow_store::DirEntry>* out);
  void FillStat(uint64_t nodeid, const cow_store::InodeMeta& m, struct stat* st) const;

  CowEngine* cow_;
  ino_t root_ino_;
  std::string root_handle_;
  double timeout_;

  std::mutex clone_mutex_;
  mutable std::shared_mutex snapshots_mutex_;
  // Existing snapshots and their clone states. Guarded by snapshots_mutex_.
  std::map<cow_store::SnapId, cow_store::CloneState> live_;
  // Target-file-list snapshots: the objects they show. Guarded by
  // snapshots_mutex_.
  std::map<cow_store::SnapId, std::shared_ptr<const std::unordered_set<cow_store::Ino>>> partial_;
  // Whether snapshot `snap` shows object `ino` (a partial snapshot shows
  // only what it covers, and what its clone created). Caller holds
  // snapshots_mutex_.
  bool Shows(cow_store::SnapId snap, cow_store::Ino ino) const;

  std::mutex nodes_mutex_;
  std::unordered_map<uint64_t, std::shared_ptr<Node>> nodes_;  // Guarded by nodes_mutex_.

  std::mutex files_mutex_;
  uint64_t next_file_ = 1;                                     // Guarded by files_mutex_.
  std::unordered_map<uint64_t, std::shared_ptr<File>> files_;  // Guarded by files_mutex_.
};

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_SNAPSHOT_VIEW_H_
