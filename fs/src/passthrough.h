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
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "inode_table.h"
#include "vssfs/cow_store/status.h"
#include "vssfs/cow_store/unique_fd.h"

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
  // True when the store is BACKING_DIR/.vssfs (hidden, so not counted in
  // the root's link count).
  bool store_in_backing = true;
  // Connection options from the command line (fuse_parse_conn_info_opts);
  // may be null. Not owned.
  struct fuse_conn_info_opts* conn_opts = nullptr;
};

class Filesystem {
 public:
  // Opens the backing root. Errors: ENOENT/ENOTDIR/EACCES from open(2).
  static cow_store::Result<std::unique_ptr<Filesystem>> Create(const FilesystemConfig& config);

  // The handler table for fuse_session_new(); userdata must be this object.
  static const fuse_lowlevel_ops& Operations();

  const FilesystemConfig& config() const { return config_; }
  InodeTable& inodes() { return *inodes_; }
  bool writeback() const { return writeback_; }

  // Handler bodies (public for the C trampolines in passthrough.cc). Each
  // returns 0 or a negative errno and fills its out-parameters.
  int Lookup(fuse_ino_t parent, const char* name, fuse_entry_param* e);
  int GetAttr(fuse_ino_t ino, fuse_file_info* fi, struct stat* st);
  int SetAttr(fuse_req_t req, fuse_ino_t ino, const struct stat& attr, int to_set, fuse_file_info* fi,
              struct stat* out);
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
  int SetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size, int flags);
  int RemoveXattr(fuse_ino_t ino, const char* name);
  int Lseek(fuse_ino_t ino, off_t off, int whence, fuse_file_info* fi, off_t* result);
  void Release(fuse_ino_t ino, fuse_file_info* fi);
  void Init(fuse_conn_info* conn);
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
  void FillEntry(fuse_entry_param* e, uint64_t nodeid, const struct stat& st) const;
  void SnapshotDirStat(struct stat* st) const;
  // With the writeback cache, data written to a file open for writing may
  // still be dirty in the kernel; has the kernel write it back to vssfs.
  // Needs a multithreaded session. Returns 0 or a negative errno.
  int WriteBackKernelCache(const Inode& inode);
  // A backing path naming symlink `inode` (checked), or "" for other types;
  // -ESTALE if none can be found.
  int SymlinkPath(const Inode& inode, std::string* path) const;
  // The inode for `ino`; nullptr if unknown (reported as ESTALE).
  std::shared_ptr<Inode> Get(fuse_ino_t ino) const { return inodes_->Find(ino); }

  FilesystemConfig config_;
  std::unique_ptr<InodeTable> inodes_;
  bool writeback_ = false;
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
