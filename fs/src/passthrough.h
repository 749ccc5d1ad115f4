// Filesystem: the vssfs FUSE request handlers for one mounted volume.
//
// The live tree is an exact passthrough of the backing directory: every
// request is answered by the same system call on the backing inode, so the
// backing filesystem's semantics (errors, sizes, holes, xattrs, ACLs) are
// what users see. The kernel checks permissions as the caller
// (default_permissions + POSIX ACLs); new files are created with the
// caller's fsuid/fsgid and umask (creds.h). Two names at the volume root are
// reserved: the store directory ".vssfs" (invisible and unreachable) and
// ".snapshot" (a read-only directory; empty until snapshots exist).
//
// Thread-safety: handlers run concurrently on libfuse worker threads; all
// shared state is in InodeTable (internally locked) and the directory-handle
// registry (dir_mutex_). Lock order: dir_mutex_ before InodeTable::mutex_
// (never held together today).
#ifndef VSSFS_FS_SRC_PASSTHROUGH_H_
#define VSSFS_FS_SRC_PASSTHROUGH_H_

#include <fuse_lowlevel.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "access_time.h"
#include "cow.h"
#include "flush_behind.h"
#include "inode_pruner.h"
#include "inode_table.h"
#include "mount_sync.h"
#include "snapshot_view.h"
#include "vssfs/cow_store/status.h"
#include "vssfs/cow_store/store.h"
#include "vssfs/cow_store/unique_fd.h"
#include "vssfs/fs/options.h"
#include "vssfs/snapshot_ctl/control.h"

namespace vssfs::fs {

struct FilesystemConfig {
  std::string backing_dir;  // Resolved absolute path.
  std::string mountpoint;   // Resolved absolute path.
  double timeout = 60.0;    // Entry and attribute cache lifetime, seconds.
  double negative_timeout = 60.0;
  unsigned read_ahead_kb = 1024;  // 0: leave the kernel's default.
  // Share (percent) of the system's dirty-page limit the mount may use under
  // the writeback cache; 0 keeps FUSE's strict 1%.
  unsigned max_dirty_ratio = 100;
  // Early writeback of streamed files (flush_behind.h).
  bool flush_behind = true;
  // Most inodes the kernel may cache before vssfs asks it to forget some
  // (inode_pruner.h); 0: three quarters of the descriptor limit.
  size_t max_inodes = 0;
  InodeRelease inode_release = InodeRelease::kAuto;
  // True when the store is BACKING_DIR/.vssfs (hidden, so not counted in
  // the root's link count).
  bool store_in_backing = true;
  // Connection options from the command line (fuse_parse_conn_info_opts);
  // may be null. Not owned.
  struct fuse_conn_info_opts* conn_opts = nullptr;
};

class Filesystem : public snapshot_ctl::Volume {
 public:
  // Opens the backing root. Errors: ENOENT/ENOTDIR/EACCES from open(2).
  static cow_store::Result<std::unique_ptr<Filesystem>> Create(const FilesystemConfig& config);
  // Connects the block store (borrowed; must outlive the Filesystem) before
  // the session loop starts, while the process has one thread (it forks the
  // syncfs helper, mount_sync.h, and the flush-behind one, flush_behind.h):
  // opens the keep directory (BACKING/.vssfs/keep, created if absent) and
  // reconciles kept files with the store.
  cow_store::Status AttachStore(cow_store::Store* store);

  // ---- snapshots (called from the control thread, never a FUSE worker) ----
  // Takes a snapshot: flushes the kernel's writeback cache (syncfs on the
  // mount) and the backing filesystem, then cuts. `name` empty: the
  // @GMT-... name of the current second (waiting for the next second if a
  // snapshot already has it).
  // `files` non-empty: a target-file-list snapshot of those paths (absolute
  // under the mount point, or relative to it) and their directories; a
  // listed directory brings its whole subtree. Errors: ENOENT/ENOTDIR/EINVAL
  // for a listed path.
  cow_store::Result<cow_store::SnapshotInfo> CreateSnapshot(
      const std::string& name, std::optional<cow_store::Guid> guid,
      const std::vector<std::string>& files) override;
  // Deletes a snapshot (by name, id or GUID) and frees what it alone held.
  cow_store::Result<cow_store::GcResult> DeleteSnapshot(const std::string& key) override;
  cow_store::Result<cow_store::SnapshotInfo> CloneSnapshot(const std::string& key) override;
  // The backing inode numbers a target file list covers (the root first).
  cow_store::Result<std::vector<cow_store::Ino>> ResolveTargets(
      const std::vector<std::string>& files) const;
  cow_store::Result<cow_store::SnapshotInfo> FreezeSnapshot(const std::string& key) override;
  std::string MountPoint() const override { return config_.mountpoint; }
  cow_store::Result<std::vector<std::string>> ApplyRetention(bool dry_run) override;
  cow_store::Status HoldWrites(int timeout_ms) override;
  bool HoldActive() const override { return held_.owns_lock(); }
  void ReleaseHold() override;
  void ExpireHold() override;
  cow_store::Store& store() override { return *store_; }

  // The handler table for fuse_session_new(); userdata must be this object.
  static const fuse_lowlevel_ops& Operations();

  const FilesystemConfig& config() const { return config_; }
  InodeTable& inodes() { return *inodes_; }
  bool writeback() const { return writeback_; }

  // Handler bodies (public for the C trampolines in passthrough.cc). Each
  // returns 0 or a negative errno and fills its out-parameters.
  int Lookup(fuse_ino_t parent, const char* name, fuse_entry_param* e);
  int GetAttr(fuse_ino_t ino, fuse_file_info* fi, struct stat* st);
  int SetAttr(fuse_req_t req, fuse_ino_t ino, const struct stat& attr, int to_set,
              fuse_file_info* fi, struct stat* out);
  int ReadLink(fuse_ino_t ino, std::string* target);
  int MakeNode(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev,
               const char* link_target, fuse_entry_param* e);
  int Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi,
             fuse_entry_param* e);
  int Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  int Link(fuse_ino_t ino, fuse_ino_t parent, const char* name, fuse_entry_param* e);
  int Remove(fuse_ino_t parent, const char* name, bool directory);
  int Rename(fuse_ino_t parent, const char* name, fuse_ino_t newparent, const char* newname,
             unsigned flags);
  int OpenDir(fuse_ino_t ino, fuse_file_info* fi);
  int ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info* fi,
              bool plus, std::string* out);
  int ReleaseDir(fuse_file_info* fi);
  int FsyncDir(int datasync, fuse_file_info* fi);
  int StatFs(struct statvfs* st);
  int GetXattr(fuse_ino_t ino, const char* name, size_t size, std::string* value);
  int ListXattr(fuse_req_t req, fuse_ino_t ino, size_t size, std::string* list);
  // Every xattr name of live node `ino` into *all; its length or -errno.
  int ListLiveXattr(fuse_ino_t ino, std::string* all);
  int SetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
               int flags);
  int RemoveXattr(fuse_ino_t ino, const char* name);
  int Lseek(fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi, off_t* result);
  void Release(fuse_ino_t ino, fuse_file_info* fi);
  int Read(fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi, std::string* out);
  // A write to a snapshot file (a writable clone's, else EROFS): bytes
  // written or -errno.
  int CloneWrite(fuse_ino_t ino, uint64_t fh, const SnapshotView::Caller& caller, const char* data,
                 size_t size, off_t off) {
    return snaps_->Write(ino, fh, caller, data, size, off);
  }
  // Attribute cache lifetime for replies about `ino`.
  double AttrTimeout(fuse_ino_t ino) const {
    return SnapshotView::IsSnapshotNode(ino) ? snaps_->TimeoutFor(ino) : config_.timeout;
  }
  int Fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                fuse_file_info* fi);
  ssize_t CopyFileRange(fuse_req_t req, fuse_ino_t ino_in, off_t off_in, fuse_file_info* fi_in,
                        fuse_ino_t ino_out, off_t off_out, fuse_file_info* fi_out, size_t len,
                        int flags);
  // Preserves what a WRITE of [off, off+len) to `ino` will overwrite; the
  // caller holds inode.write_mutex and `epoch`.
  int PreserveForWrite(const CowEngine::Epoch& epoch, Inode* inode, off_t off, size_t len);
  CowEngine& cow() { return *cow_; }
  void Forget(fuse_ino_t ino, uint64_t n);
  void Init(fuse_conn_info* conn);
  // Stops the inode pruner; call once the session loop has ended, before
  // the session's /dev/fuse descriptor is closed.
  void StopPruner();
  // The session, for notifications to the kernel; set once before the
  // session loop starts.
  void SetSession(fuse_session* se, bool multithreaded) {
    session_ = se;
    multithreaded_ = multithreaded;
  }
  // Called on the first request after INIT; applies read_ahead_kb.
  void AfterInit();
  std::atomic<bool> after_init_done{false};

 private:
  explicit Filesystem(const FilesystemConfig& config) : config_(config) {}

  struct DirHandle;
  std::shared_ptr<DirHandle> FindDir(uint64_t fh);
  // Fills *e for `name` under `parent` and counts one kernel lookup.
  int LookupIn(const Inode& parent, const char* name, fuse_entry_param* e);
  // Fills *e for node `nodeid` of FUSE generation `generation` (Inode).
  void FillEntry(fuse_entry_param* e, uint64_t nodeid, uint32_t generation,
                 const struct stat& st) const;
  void SnapshotDirStat(struct stat* st) const;
  // With the writeback cache, data written to a file open for writing may
  // still be dirty in the kernel; has the kernel write it back to vssfs.
  // Needs a multithreaded session. Returns 0 or a negative errno.
  int WriteBackKernelCache(const Inode& inode);
  // Counts a handle of `inode` opened with `flags` opening (+1) or closing
  // (-1): Inode::open_files, and for one that may write, the writers
  // (FlushBehind's when it is on and the writeback cache is used).
  void CountOpen(Inode& inode, int flags, int delta);
  // The inode for `ino`, reopened if evicted (InodeTable::Find; when that
  // runs out of descriptors, the pruner frees some and it is tried once
  // more). nullptr with errno set if unknown or not reopened: the caller
  // returns MissingInode().
  std::shared_ptr<Inode> Get(fuse_ino_t ino);
  // The error for a failed Get, from errno: running out of descriptors or
  // memory, or an I/O error, as such; anything else (unknown node, the file
  // gone) as ESTALE.
  static int MissingInode();
  // After a call that failed with errno: if it ran out of descriptors
  // (EMFILE/ENFILE), has the pruner release some, waiting up to 200 ms, and
  // returns whether it did (the call is worth trying once more). Otherwise,
  // or without a pruner or other threads to take the kernel's FORGETs,
  // false; errno is kept when false.
  bool MadeRoom();

  // Starts the inode pruner (at INIT) with the budget for the descriptor
  // limit and config_.max_inodes.
  void StartPruner(unsigned proto_minor);
  // Runs `open()` (a descriptor, or -1 with errno set); when the process is
  // out of descriptors, has the pruner free some and runs it once more.
  // A template: it wraps lookups, creates and opens, which need no
  // std::function (and its allocation) each.
  template <typename OpenFn>
  int OpenWithRoom(OpenFn open);

  // Opens a live file (the body of Open). With O_TRUNC and snapshots, the
  // file's data is preserved first.
  int OpenLive(fuse_req_t req, Inode& inode, const CowEngine::Epoch& epoch, fuse_file_info* fi);
  // Updates a live object's access time as a read would (access_time.h),
  // after preserving its attributes for the latest snapshot; `epoch` may be
  // null (one is entered if needed). Failures leave the time as it was.
  void UpdateAccessTime(Inode& inode, const CowEngine::Epoch* epoch);
  // Preserves a directory's entries and attributes before they change.
  int PreserveParent(const CowEngine::Epoch& epoch, Inode& dir);
  // The entry of file `name` in `dir` (nullptr if none, or nothing is
  // evicted), holding its descriptor, reopened if it was evicted: held over
  // a call that may delete the file's last name, it keeps the inode number
  // taken until the kernel forgets the node (inode_table.h). Errors are
  // left to the call.
  std::shared_ptr<Inode> PinVictim(const Inode& dir, const char* name);
  // Preserves the object `name` in `dir` before a request changes it;
  // `loses_name`: the request removes or replaces that name (a directory's
  // entries are preserved, a file's last link is kept).
  int PreserveVictim(const CowEngine::Epoch& epoch, Inode& dir, const char* name, bool loses_name);
  // Records that `nodeid` was created in this epoch (nothing to preserve).
  void MarkBorn(uint64_t nodeid, const CowEngine::Epoch& epoch);
  // Kept files and the store agree after a crash: missing keep links are
  // restored, links no record names are removed.
  void ReconcileKept();
  // Drops kernel caches of the .snapshot listing and of `name` in it.
  void InvalidateSnapshotDir(const std::string& name);

  FilesystemConfig config_;
  std::unique_ptr<InodeTable> inodes_;
  // Started at INIT; declared after inodes_, so stopped before it goes.
  std::unique_ptr<InodePruner> pruner_;
  cow_store::Store* store_ = nullptr;
  cow_store::UniqueFd mount_fd_;  // O_RDONLY backing root, for handles.
  cow_store::UniqueFd keep_fd_;   // BACKING/.vssfs/keep
  std::unique_ptr<CowEngine> cow_;
  std::unique_ptr<SnapshotView> snaps_;
  std::unique_ptr<MountSyncer> syncer_;
  std::unique_ptr<FlushBehind> flush_behind_;  // Null when off.
  // The cross-volume write barrier: the cut lock, held by the control
  // thread between HoldWrites and CreateSnapshot (control thread only).
  std::unique_lock<std::shared_mutex> held_;
  std::chrono::steady_clock::time_point held_until_;
  bool writeback_ = false;
  AtimePolicy atime_policy_ = AtimePolicy::kRelative;  // The backing mount's.
  fuse_session* session_ = nullptr;
  bool multithreaded_ = true;
  struct timespec mount_time_ {};
  std::atomic<bool> warned_cross_device_{false};

  std::mutex dir_mutex_;
  uint64_t next_dir_handle_ = 1;                                   // Guarded by dir_mutex_.
  std::unordered_map<uint64_t, std::shared_ptr<DirHandle>> dirs_;  // Guarded by dir_mutex_.
};

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_PASSTHROUGH_H_
