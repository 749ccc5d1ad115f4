#include "test_support.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "vssfs/fs/preflight.h"

namespace vssfs::testing {
namespace {

bool WaitChild(pid_t pid, int* status, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid) return true;
    if (r < 0 && errno != EINTR) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

}  // namespace

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/vssfs-test-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    throw std::runtime_error("mkdtemp: " + std::string(std::strerror(errno)));
  }
  path_ = tmpl;
  chmod(path_.c_str(), 0755);
}

TempDir::~TempDir() {
  // Detach anything still mounted below us before removing.
  std::vector<std::string> mounted;
  for (const vssfs::fs::MountEntry& e : vssfs::fs::ReadMountTable()) {
    if (e.mountpoint.rfind(path_ + "/", 0) == 0) mounted.push_back(e.mountpoint);
  }
  for (auto it = mounted.rbegin(); it != mounted.rend(); ++it) {
    umount2(it->c_str(), MNT_DETACH);
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::Sub(const std::string& name) const { return path_ + "/" + name; }

VolumeDirs::VolumeDirs() : backing(tmp.Sub("backing")), mnt(tmp.Sub("mnt")) {
  if (chmod(tmp.path().c_str(), 0755) != 0 || mkdir(backing.c_str(), 0755) != 0 ||
      mkdir(mnt.c_str(), 0755) != 0) {
    throw std::runtime_error("cannot create volume directories in " + tmp.path());
  }
}

bool IsVssfsMounted(const std::string& path) {
  for (const vssfs::fs::MountEntry& e : vssfs::fs::ReadMountTable()) {
    if (e.mountpoint == path && e.fstype == "fuse.vssfs") return true;
  }
  return false;
}

std::string VssfsBinary() {
  const char* env = std::getenv("VSSFS_BINARY");
  if (env && *env) return env;
  return VSSFS_DEFAULT_BINARY;
}

int RunCommand(const std::vector<std::string>& argv, std::string* output) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(pipefd[1], 1);
    dup2(pipefd[1], 2);
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(pipefd[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) out.append(buf, static_cast<size_t>(n));
  }
  close(pipefd[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ScopedMount::ScopedMount(const std::string& backing, const std::string& mountpoint,
                         const std::vector<std::string>& extra_args, unsigned descriptor_limit)
    : mountpoint_(mountpoint) {
  char tmpl[] = "/tmp/vssfs-mount-log-XXXXXX";
  int log_fd = mkstemp(tmpl);
  if (log_fd < 0) throw std::runtime_error("mkstemp failed");
  log_path_ = tmpl;
  std::vector<std::string> argv = {VssfsBinary(), "--foreground"};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  argv.push_back(backing);
  argv.push_back(mountpoint);
  pid_ = fork();
  if (pid_ == 0) {
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    if (descriptor_limit != 0) {
      struct rlimit rl = {descriptor_limit, descriptor_limit};
      if (setrlimit(RLIMIT_NOFILE, &rl) != 0) _exit(126);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(log_fd);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!IsVssfsMounted(mountpoint_)) {
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      std::string log = ReadFile(log_path_);
      unlink(log_path_.c_str());
      throw std::runtime_error("vssfs exited before mounting: " + log);
    }
    if (std::chrono::steady_clock::now() > deadline) {
      Kill();
      throw std::runtime_error("vssfs did not mount within 20 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

std::string ScopedMount::Log() const { return ReadFile(log_path_); }

ScopedMount::~ScopedMount() {
  Unmount();
  if (!log_path_.empty()) unlink(log_path_.c_str());
}

int ScopedMount::Unmount() {
  if (pid_ < 0) return status_;
  // A clean unmount makes the daemon leave its session loop and exit.
  if (IsVssfsMounted(mountpoint_)) {
    if (umount2(mountpoint_.c_str(), 0) != 0) {
      umount2(mountpoint_.c_str(), MNT_DETACH);
    }
  }
  if (!WaitChild(pid_, &status_, std::chrono::seconds(10))) {
    kill(pid_, SIGTERM);
    if (!WaitChild(pid_, &status_, std::chrono::seconds(5))) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status_, 0);
    }
  }
  pid_ = -1;
  return status_;
}

void ScopedMount::Kill() {
  if (pid_ < 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, &status_, 0);
  pid_ = -1;
  umount2(mountpoint_.c_str(), MNT_DETACH);
}

namespace {

constexpr const char* kUringParameter = "/sys/module/fuse/parameters/enable_uring";

std::string ReadUringParameter() {
  int fd = open(kUringParameter, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  char c = 0;
  const ssize_t n = read(fd, &c, 1);
  close(fd);
  return n == 1 ? std::string(1, c) : "";
}

bool WriteUringParameter(const std::string& value) {
  int fd = open(kUringParameter, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = write(fd, value.data(), value.size()) == static_cast<ssize_t>(value.size());
  close(fd);
  return ok;
}

}  // namespace

ScopedUringParameter::ScopedUringParameter() : old_(ReadUringParameter()) {
  if (!old_.empty()) available_ = WriteUringParameter("Y") && ReadUringParameter() == "Y";
}

ScopedUringParameter::~ScopedUringParameter() {
  if (!old_.empty()) WriteUringParameter(old_);
}

void SpinCpu(int ms) {
  auto cpu_ns = [] {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  };
  const int64_t end = cpu_ns() + static_cast<int64_t>(ms) * 1000000;
  while (cpu_ns() < end) {
  }
}

bool PinSelf(int cpu) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  return sched_setaffinity(0, sizeof one, &one) == 0;
}

std::vector<int> AffinityCpus() {
  cpu_set_t set;
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  return cpus;
}

}  // namespace vssfs::testing
