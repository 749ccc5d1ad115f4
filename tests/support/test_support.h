// Test support: private temporary directories and real vssfs mounts that are
// always torn down, even when a test fails.
//
// Thread-safety: none; use each object from one thread.
#ifndef VSSFS_TESTS_SUPPORT_TEST_SUPPORT_H_
#define VSSFS_TESTS_SUPPORT_TEST_SUPPORT_H_

#include <sys/types.h>

#include <string>
#include <vector>

namespace vssfs::testing {

// A fresh directory under $TMPDIR (default /tmp), removed recursively with
// everything in it on destruction (after any mount inside it is detached).
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string Sub(const std::string& name) const;

 private:
  std::string path_;
};

// A private TempDir holding an empty backing directory and an empty mount
// point (both mode 0755, the TempDir itself 0755 so other users can reach
// them), the usual starting point of a mount test.
struct VolumeDirs {
  VolumeDirs();
  TempDir tmp;
  std::string backing;  // tmp/backing
  std::string mnt;      // tmp/mnt
};

// Runs `vssfs --foreground [args...] BACKING MOUNTPOINT` as a child process and
// waits until the mount is live. `descriptor_limit` non-zero: the child's
// RLIMIT_NOFILE, soft and hard (it can raise it only with CAP_SYS_RESOURCE). The destructor
// unmounts (lazily if busy), stops the daemon by PID and reaps it. Mount failure throws
// std::runtime_error with the daemon's stderr.
class ScopedMount {
 public:
  ScopedMount(const std::string& backing, const std::string& mountpoint,
              const std::vector<std::string>& extra_args = {}, unsigned descriptor_limit = 0);
  ~ScopedMount();
  ScopedMount(const ScopedMount&) = delete;
  ScopedMount& operator=(const ScopedMount&) = delete;

  const std::string& mountpoint() const { return mountpoint_; }
  pid_t pid() const { return pid_; }
  // What the daemon has written to stdout and stderr so far.
  std::string Log() const;
  // Unmounts and waits for the daemon; returns its exit status (as from
  // waitpid). Idempotent.
  int Unmount();
  // SIGKILLs the daemon and detaches the dead mount (crash simulation).
  void Kill();

 private:
  std::string mountpoint_;
  std::string log_path_;
  pid_t pid_ = -1;
  int status_ = 0;
};

// Sets the fuse module's enable_uring parameter to Y for the scope (the
// kernel offers FUSE over io_uring only while it is Y, read at mount time)
// and restores the old value after. Needs root; available() says whether
// the parameter exists and took the value.
class ScopedUringParameter {
 public:
  ScopedUringParameter();
  ~ScopedUringParameter();
  ScopedUringParameter(const ScopedUringParameter&) = delete;
  ScopedUringParameter& operator=(const ScopedUringParameter&) = delete;
  bool available() const { return available_; }

 private:
  std::string old_;
  bool available_ = false;
};

// True when `path` is a mount point of type fuse.vssfs (per /proc/self/mountinfo).
bool IsVssfsMounted(const std::string& path);

// Path of the vssfs binary under test (VSSFS_BINARY env var, else the build's).
std::string VssfsBinary();

// Runs a command (argv[0] looked up in PATH), returns exit status (-1 on
// signal); stdout+stderr captured into *output when given.
int RunCommand(const std::vector<std::string>& argv, std::string* output = nullptr);

// Reads a whole file; throws on error.
std::string ReadFile(const std::string& path);

// Spins until the calling thread has used `ms` more milliseconds of CPU time.
void SpinCpu(int ms);

// Pins the calling thread to CPU `cpu`; false if the kernel refuses.
bool PinSelf(int cpu);

// The CPUs in the calling thread's affinity mask, in ascending order; empty
// if it cannot be read.
std::vector<int> AffinityCpus();

}  // namespace vssfs::testing

#endif  // VSSFS_TESTS_SUPPORT_TEST_SUPPORT_H_
