// Channel: vssfs's own read/write hooks on the /dev/fuse descriptor
// (libfuse's fuse_custom_io), used for what libfuse 3.14 cannot express.
//
// libfuse 3.14 cannot negotiate FUSE_HANDLE_KILLPRIV_V2 (protocol 7.33).
// Without it the kernel asks the daemon for "security.capability" before
// every write(2) — one extra round trip per write. With it the kernel marks
// inodes S_NOSEC and leaves the clearing of set-id bits and file
// capabilities to the filesystem, telling it when (FUSE_WRITE_KILL_SUIDGID,
// FATTR_KILL_SUIDGID, FUSE_OPEN_KILL_SUIDGID). The channel adds the flag to
// the INIT reply when the kernel offers it, and records the per-request
// kill flags of WRITE and OPEN requests for the handler that runs on the
// same worker thread (libfuse processes each request on the thread that
// read it; splice reception is therefore turned off). It also receives each
// request's body into a page-aligned buffer of its own, so that a WRITE's
// payload sits on a page boundary for direct I/O (WritePayload()).
//
// FUSE over io_uring (Linux 6.14+, when the fuse module's enable_uring is Y):
// the channel also negotiates FUSE_OVER_IO_URING, starts threads pinned to
// each CPU's queue once INIT is done, rebuilds each request the kernel puts
// in a ring entry into the layout read(2) gives, hands it to libfuse
// (fuse_session_process_buf) and stores the reply libfuse writes through the
// writev hook in the entry. Handlers see no difference (docs/LIVE_PATH.md).
//
// Thread-safety: the hooks run concurrently on all worker threads; state is
// atomic or thread-local, except the table of requests in ring entries (one
// mutex, never held while calling out) and the io_uring thread list (its own
// mutex; the watchdog that adds threads is joined before the list is).
#ifndef VSSFS_FS_SRC_CHANNEL_H_
#define VSSFS_FS_SRC_CHANNEL_H_

#include <cstdint>
#include <vector>

struct fuse_session;

namespace vssfs::fs {

// Installs the hooks on a mounted session (after fuse_session_mount()).
// `killpriv_v2`: whether to negotiate FUSE_HANDLE_KILLPRIV_V2. `uring`:
// whether to ask for FUSE over io_uring (used if the kernel offers it), with
// `uring_threads` threads per queue; `sched_idle`: whether ring threads
// answer metadata requests as SCHED_IDLE (idle_rings.h; off if the process
// cannot leave SCHED_IDLE again). `cpu_pickup`: whether /dev/fuse workers
// take requests on the sender's CPU (cpu_pickup.h; SCHED_IDLE with
// `sched_idle` too). Returns 0 or a negative errno.
int InstallChannel(fuse_session* se, bool killpriv_v2, bool uring, unsigned uring_threads,
                   bool sched_idle, bool cpu_pickup);

// Stops CpuPickup's watchdog and logs (at debug level) on which CPUs
// /dev/fuse requests were read. After the session loop (the workers are
// gone).
void StopCpuPickup();

// Called by a READ handler that read through the backing page cache:
// `blocked` when the data was not all cached and the read waited for the
// disk. CpuPickup stops pinning workers while most requests are such reads
// (cpu_pickup.h). Any thread.
void NoteReadBlocked(bool blocked);

// During INIT: whether vssfs will accept FUSE over io_uring (asked for, and
// offered by the kernel). Replies then must not be spliced.
bool UringOffered();

// Called by a handler before it makes the kernel send requests that it then
// waits for (fuse_lowlevel_notify_inval_inode laundering dirty pages): on an
// io_uring thread, makes sure this CPU's queue has a free entry to take
// them. No effect on other threads.
void EnsureIdleUringEntry();

// Stops the io_uring threads (after the session loop ended and the mount is
// gone; requests still queued to them are ended by the kernel).
void StopUring();

// True once the kernel accepted FUSE_HANDLE_KILLPRIV_V2.
bool KillprivV2Negotiated();

// Asks the kernel to drop its unused inodes among `ids` (FUSE_NOTIFY_PRUNE;
// inode_pruner.h). Returns 0, -ENOSYS when the kernel's FUSE protocol is
// older than 7.45 (recorded at INIT by NoteProtocol), or the negative errno
// of the write (-ENODEV once unmounted).
int NotifyPrune(const std::vector<uint64_t>& ids);

// Records the kernel's FUSE protocol minor version (from INIT).
void NoteProtocol(unsigned minor);

// Whether the request being processed on this thread (a WRITE or OPEN) asks
// the filesystem to clear set-id bits.
bool RequestKillsSuidgid();

// The payload of the WRITE request being processed on this thread, on a page
// boundary; nullptr for a WRITE without data. (The copy that libfuse's
// buffer would hold behind the header is not there: handlers must use this.)
const char* WritePayload();

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_CHANNEL_H_
