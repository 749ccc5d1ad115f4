// FlushBehind: early writeback of files that are being written as a stream.
//
// With the writeback cache, the kernel sends a FUSE mount's dirty pages to
// the daemon only at fsync/close or once the whole system's dirty pages pass
// the background threshold (10% of memory). A file written sequentially is
// therefore first copied into the mount's page cache and only then, all at
// once, through vssfs to the backing file: the two transfers do not overlap.
// Making the kernel start writeback earlier for the whole mount (per-device
// dirty limits) would also write back the pages of files written at random,
// page by page, which the writeback cache exists to absorb.
//
// FlushBehind tells the two apart per file. A helper process watches every
// live-tree regular file that has a handle open for writing: every 20 ms it
// reads the file's page-cache state through the mount (cachestat(2), Linux
// 6.5+) in 4 MiB chunks, and starts writeback (sync_file_range(2) with
// SYNC_FILE_RANGE_WRITE, which does not wait) of every chunk that went from
// no dirty page to all pages dirty within one second. Streams fill chunks
// that fast; random writes fill a chunk completely only after writing many
// times its size into it, so their pages stay in the cache as before.
//
// The helper is a separate process for the reason MountSyncer's is: a thread
// blocked in writeback of its own mount would keep a killed daemon from
// exiting. It reaches files by handle (open_by_handle_at(2); FUSE file
// handles are node id and generation, and the kernel resolves them from its
// inode cache without asking the daemon) through a private clone of the mount
// (open_tree(2) with OPEN_TREE_CLONE), held only while some file is watched.
// Its descriptors therefore never make `umount MOUNTPOINT` fail with EBUSY;
// if it still holds a file when the mount is detached, the connection ends
// once it lets go, a few milliseconds later. Both calls need root
// (CAP_SYS_ADMIN, CAP_DAC_READ_SEARCH); without them FlushBehind is off.
//
// A watch names the file's generation too: by the time the helper first
// opens the file, its writer may be gone and its node id another file's,
// even a FIFO's. The helper opens regular files of that generation only.
//
// The daemon never waits for the helper: WriterOpened/WriterClosed queue a
// message and a thread forwards the queue to the helper's pipe in batches.
//
// Thread-safety: WriterOpened/WriterClosed may be called from any thread.
// Lock order: mutex_ is a leaf lock.
#ifndef VSSFS_FS_SRC_FLUSH_BEHIND_H_
#define VSSFS_FS_SRC_FLUSH_BEHIND_H_

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "inode_table.h"
#include "vssfs/cow_store/status.h"
#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::fs {

class FlushBehind {
 public:
  // Whether this process and kernel can run the helper: the system calls it
  // needs exist and the process has the capabilities. On false, *why says
  // what is missing.
  static bool Supported(std::string* why);
  // Forks the helper for `mountpoint` (absolute). Call while the process has
  // one thread; it starts a forwarding thread afterwards. Errors: errno of
  // pipe/fork.
  static cow_store::Result<std::unique_ptr<FlushBehind>> Start(const std::string& mountpoint);
  // Stops the forwarding thread, closes the pipe and reaps the helper. Call
  // after the FUSE session is destroyed (the helper may be waiting for the
  // daemon until the connection ends).
  ~FlushBehind();

  // Counts one more handle that may write to `inode` (inode.open_writers)
  // and, for the first one of a regular file, starts watching it.
  void WriterOpened(Inode& inode);
  // Counts one handle fewer; the last one ends the watch (the helper closes
  // its descriptor of the file).
  void WriterClosed(Inode& inode);

  // What the daemon sends the helper through its pipe.
  struct Message {
    uint32_t op;          // kWatch or kUnwatch (flush_behind.cc)
    uint32_t generation;  // The file's FUSE generation (Inode::generation).
    uint64_t nodeid;
  };

 private:
  FlushBehind() = default;
  // Queues a message; an unwatch cancels its file's watch if that is still
  // queued. Caller holds mutex_.
  void Push(uint32_t op, const Inode& inode);
  // The forwarding thread: sends what was queued in batches, one every
  // 10 ms at most.
  void Forward();

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Message> queue_;  // Guarded by mutex_.
  bool stop_ = false;          // Guarded by mutex_.
  // The forwarder waits for a first message (not collecting a batch), so a
  // new message must wake it. Guarded by mutex_.
  bool forwarder_idle_ = false;
  // Set in Start before the forwarding thread exists; read-only after.
  cow_store::UniqueFd to_helper_;
  pid_t pid_ = -1;
  std::thread forwarder_;
};

// Opens for reading, through `tree` (an open directory of the mount), the
// file whose FUSE file handle is `nodeid` and `generation`, as the helper
// does, provided it is a regular file: nothing else is opened at all (a FIFO
// opened for reading would block, and count as a reader while it waits). The
// kernel resolves the handle from its inode cache. Returns 0 and the
// descriptor in *out; -ESTALE when the kernel has no such node (not created
// yet, forgotten, or the node id is a newer file's: another generation) or
// it is not a regular file; another negative errno of open_by_handle_at(2),
// statx(2) or open(2) otherwise (EPERM without CAP_DAC_READ_SEARCH). The
// open is O_NOATIME where the caller may: it leaves the access time alone.
int OpenRegularByHandle(int tree, uint64_t nodeid, uint32_t generation, cow_store::UniqueFd* out);

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_FLUSH_BEHIND_H_
