#include "vssfs/snapshot_ctl/control.h"

#include <grp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "sets.h"

namespace vssfs::snapshot_ctl {

using cow_store::Result;
using cow_store::Status;
using cow_store::UniqueFd;

namespace {

constexpr size_t kMaxRequest = 1 << 20;

std::string RunDir() {
  const char* env = std::getenv("VSSFS_RUN_DIR");
  return env != nullptr && env[0] != '\0' ? env : "/run/vssfs";
}

// FNV-1a: a stable name for a mount point's socket.
uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

bool WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

bool ReadAll(int fd, std::string* out, size_t limit) {
  char buf[65536];
  while (true) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) return true;
    out->append(buf, static_cast<size_t>(n));
    if (out->size() > limit) return false;
  }
}

void PutU32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t GetU32(const std::string& s, size_t pos) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i)
    v |= static_cast<uint32_t>(static_cast<uint8_t>(s[pos + i])) << (8 * i);
  return v;
}

sockaddr_un Address(const std::string& path, bool* ok) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  *ok = path.size() < sizeof addr.sun_path;
  if (*ok) std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

}  // namespace

std::vector<std::string> VssfsMounts() {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/mounts");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string dev, mnt, type;
    fields >> dev >> mnt >> type;
    if (type != "fuse.vssfs") continue;
    std::string decoded;  // Octal escapes (\040 for a space) decoded.
    for (size_t i = 0; i < mnt.size(); ++i) {
      if (mnt[i] == '\\' && i + 3 < mnt.size()) {
        decoded.push_back(static_cast<char>(std::stoi(mnt.substr(i + 1, 3), nullptr, 8)));
        i += 3;
      } else {
        decoded.push_back(mnt[i]);
      }
    }
    out.push_back(decoded);
  }
  return out;
}

std::string VolumeContaining(const std::string& path) {
  std::string best;
  for (const std::string& m : VssfsMounts()) {
    if ((path == m || path.rfind(m + "/", 0) == 0) && m.size() > best.size()) best = m;
  }
  return best;
}

std::string ControlSocketPath(const std::string& mountpoint) {
  char name[40];
  std::snprintf(name, sizeof name, "/ctl-%016llx.sock",
                static_cast<unsigned long long>(Fnv1a(mountpoint)));
  return RunDir() + name;
}

Result<gid_t> GroupId(const std::string& name) {
  if (!name.empty() && name.find_first_not_of("0123456789") == std::string::npos &&
      name.size() < 10) {
    return static_cast<gid_t>(std::stoul(name));
  }
  std::vector<char> buf(16384);
  group gr{};
  group* found = nullptr;
  if (getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return Status::Error(ENOENT, "no group '" + name + "'");
  }
  return found->gr_gid;
}

bool ControlServer::Allowed(const struct ucred& peer) const {
  if (peer.uid == 0) return true;
  if (!group_) return false;
  if (peer.gid == *group_) return true;
  // Supplementary groups: from the peer's /proc status ("Groups: 1 2 3").
  std::ifstream status("/proc/" + std::to_string(peer.pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Groups:", 0) != 0) continue;
    std::istringstream groups(line.substr(7));
    unsigned long g = 0;
    while (groups >> g) {
      if (g == *group_) return true;
    }
  }
  return false;
}

Result<std::unique_ptr<ControlServer>> ControlServer::Start(
    const std::string& path, Volume* volume, std::optional<gid_t> group,
    std::function<void(const std::string&)> log) {
  std::unique_ptr<ControlServer> server(new ControlServer());
  server->log_ = log ? std::move(log)
                     : [](const std::string& m) { std::fprintf(stderr, "vssfs: %s", m.c_str()); };
  server->path_ = path;
  server->volume_ = volume;
  server->group_ = group;
  const std::string dir = path.substr(0, path.rfind('/'));
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "create " + dir);
  }
  // Members of the group must reach the socket; they cannot list the
  // directory.
  if (group && chmod(dir.c_str(), 0711) != 0) return Status::FromErrno(errno, "chmod " + dir);
  bool ok = false;
  sockaddr_un addr = Address(path, &ok);
  if (!ok) return Status::Error(ENAMETOOLONG, "control socket path too long: " + path);
  // A daemon that still answers owns the path; a dead one left it stale.
  {
    UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      return Status::Error(EADDRINUSE, "another vssfs daemon serves " + path);
    }
  }
  unlink(path.c_str());
  server->listen_fd_.reset(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!server->listen_fd_) return Status::FromErrno(errno, "socket");
  if (bind(server->listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Status::FromErrno(errno, "bind " + path);
  }
  if (group) {
    if (chown(path.c_str(), 0, *group) != 0 || chmod(path.c_str(), 0660) != 0) {
      return Status::FromErrno(errno, "give " + path + " to its group");
    }
  } else {
    chmod(path.c_str(), 0600);
  }
  if (listen(server->listen_fd_.get(), 16) != 0) return Status::FromErrno(errno, "listen " + path);
  server->stop_fd_.reset(eventfd(0, EFD_CLOEXEC));
  if (!server->stop_fd_) return Status::FromErrno(errno, "eventfd");
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  server->sweeper_ = std::thread([s = server.get()] {
    std::unique_lock lock(s->sweep_mutex_);
    while (!s->sweep_cv_.wait_for(lock, std::chrono::seconds(1), [s] { return s->stopping_; })) {
      lock.unlock();
      const std::string report = SweepExpiredSets();
      if (!report.empty()) s->log_(report);
      lock.lock();
    }
  });
  return server;
}

ControlServer::~ControlServer() {
  if (sweeper_.joinable()) {
    {
      std::lock_guard lock(sweep_mutex_);
      stopping_ = true;
    }
    sweep_cv_.notify_all();
    sweeper_.join();
  }
  if (thread_.joinable()) {
    uint64_t one = 1;
    (void)!write(stop_fd_.get(), &one, sizeof one);
    thread_.join();
  }
  if (!path_.empty()) unlink(path_.c_str());
}

void ControlServer::Serve() {
  while (true) {
    pollfd fds[2] = {{listen_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    const int n = poll(fds, 2, volume_->HoldActive() ? 50 : -1);
    volume_->ExpireHold();
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    UniqueFd conn(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) continue;
    timeval tv{30, 0};
    setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    CommandResult result;
    ucred cred{};
    socklen_t len = sizeof cred;
    std::string request;
    if (getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || !Allowed(cred)) {
      result.exit_code = kExitPermission;
      result.err = group_ ? "vssctl: permission denied: the control socket serves root and "
                            "members of group " +
                                std::to_string(*group_) + " only\n"
                          : "vssctl: permission denied: the control socket serves root only\n";
    } else if (!ReadAll(conn.get(), &request, kMaxRequest)) {
      result.exit_code = kExitUsage;
      result.err = "vssctl: request too large or unreadable\n";
    } else {
      std::vector<std::string> args;
      size_t pos = 0;
      while (pos < request.size()) {
        size_t end = request.find('\0', pos);
        if (end == std::string::npos) end = request.size();
        args.push_back(request.substr(pos, end - pos));
        pos = end + 1;
      }
      try {
        result = RunCommand(*volume_, args);
      } catch (const std::exception& e) {
        result.exit_code = kExitFailed;
        result.err = std::string("vssctl: internal error: ") + e.what() + "\n";
      }
    }
    std::string reply;
    PutU32(&reply, static_cast<uint32_t>(result.exit_code));
    PutU32(&reply, static_cast<uint32_t>(result.out.size()));
    reply += result.out;
    reply += result.err;
    WriteAll(conn.get(), reply);
  }
}

Result<CommandResult> CallDaemon(const std::string& path, const std::vector<std::string>& args) {
  bool ok = false;
  sockaddr_un addr = Address(path, &ok);
  if (!ok) return Status::Error(ENAMETOOLONG, "control socket path too long: " + path);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Status::FromErrno(errno, "socket");
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Status::FromErrno(errno, "connect to " + path);
  }
  std::string request;
  for (size_t i = 0; i < args.size(); ++i) {
    if (i > 0) request.push_back('\0');
    request += args[i];
  }
  if (!WriteAll(fd.get(), request)) return Status::FromErrno(errno, "send request");
  shutdown(fd.get(), SHUT_WR);
  std::string reply;
  if (!ReadAll(fd.get(), &reply, SIZE_MAX / 2)) return Status::FromErrno(errno, "read reply");
  if (reply.size() < 8) return Status::Error(EIO, "the daemon closed the connection");
  CommandResult result;
  result.exit_code = static_cast<int>(GetU32(reply, 0));
  const size_t out_len = GetU32(reply, 4);
  if (reply.size() - 8 < out_len) return Status::Error(EIO, "short reply from the daemon");
  result.out = reply.substr(8, out_len);
  result.err = reply.substr(8 + out_len);
  return result;
}

}  // namespace vssfs::snapshot_ctl
