// Helper processes of the daemon: forked children that work on the daemon's
// own mount (syncfs, flush-behind), where a daemon thread blocked in
// writeback of its own mount would keep a killed daemon from exiting.
//
// Thread-safety: ForkHelper must be called while the process has one thread
// (a plain fork); ReapHelper from any thread.
#ifndef VSSFS_FS_SRC_HELPER_PROCESS_H_
#define VSSFS_FS_SRC_HELPER_PROCESS_H_

#include <sys/types.h>

#include <functional>

#include "vssfs/cow_store/status.h"

namespace vssfs::fs {

// Forks a helper. In the child, `in` becomes descriptor 0 and `out`, if not
// -1, descriptor 1; descriptor 2 stays open if `keep_stderr` (log messages
// in the foreground). Every other descriptor is closed, the /dev/fuse one
// above all, so that a helper never keeps the FUSE connection alive. The
// child is killed when the daemon dies, then runs `body` and exits.
// Returns the child's pid; errors: errno of fork.
cow_store::Result<pid_t> ForkHelper(int in, int out, bool keep_stderr,
                                    const std::function<void()>& body);

// Waits for helper `pid` to end (the caller has made it end: end of its
// input, or a signal).
void ReapHelper(pid_t pid);

}  // namespace vssfs::fs

#endif  // VSSFS_FS_SRC_HELPER_PROCESS_H_
