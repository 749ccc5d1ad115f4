// CachedRead: a read through the page cache that says whether it had to wait
// for the disk.
//
// The READ handler reads small requests into its own buffer with this, and
// reports the answer to CpuPickup (cpu_pickup.h), which stops pinning
// workers while most requests are reads from the disk.
//
// Thread-safety: a free function; concurrent calls on one descriptor are as
// safe as pread(2).
#ifndef VSSFS_FS_SRC_CACHED_READ_H_
#define VSSFS_FS_SRC_CACHED_READ_H_

#include <sys/types.h>

#include <cstddef>

namespace vssfs::fs {

// Reads up to `len` bytes at `off` from `fd` into `buf` (which must hold
// `len`), as many as the file has: the count is short only at the end of
// the file, or after an error once some data was read. Returns the count,
// or a negative errno (from pread(2)).
//
// *blocked: whether the data was not all in the page cache, so that the
// read waited for the disk. It asks first with RWF_NOWAIT, which answers
// EAGAIN, or a short count, where data is missing (since Linux 5.8 after
// starting the disk read and its read-ahead), then reads the rest with a
// plain pread(2). Where the file refuses RWF_NOWAIT (EOPNOTSUPP) the read
// counts as cached. Interrupted calls (EINTR) are retried.
ssize_t CachedRead(int fd, char* buf, size_t len, off_t off, bool* blocked);

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_CACHED_READ_H_
