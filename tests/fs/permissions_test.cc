// Permission semantics as an unprivileged user, compared with a plain
// directory: the same scenario runs natively and through vssfs, as uid/gid
// 65534 with supplementary group 100, and every step's result (0 or errno)
// and every created entry's owner, group and mode must match.
#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "test_support.h"

using vssfs::testing::RunCommand;
using vssfs::testing::ScopedMount;
using vssfs::testing::TempDir;

namespace {

constexpr uid_t kUser = 65534;
constexpr gid_t kGroup = 65534;
constexpr gid_t kMemberGroup = 100;  // The user's supplementary group.
constexpr gid_t kOtherGroup = 50;    // A group the user is not in.

int Result(int r) { return r < 0 ? errno : 0; }

void Touch(const std::string& path, mode_t mode, uid_t uid = 0, gid_t gid = 0) {
  std::ofstream(path) << "data";
  REQUIRE(chown(path.c_str(), uid, gid) == 0);
  REQUIRE(chmod(path.c_str(), mode) == 0);
}

void Dir(const std::string& path, mode_t mode, uid_t uid = 0, gid_t gid = 0) {
  REQUIRE(mkdir(path.c_str(), 0700) == 0);
  REQUIRE(chown(path.c_str(), uid, gid) == 0);
  REQUIRE(chmod(path.c_str(), mode) == 0);
}

// Builds the scenario's starting tree under `d` (as root).
void Setup(const std::string& d) {
  Dir(d + "/private", 0700);
  Touch(d + "/private/x", 0644);
  Dir(d + "/grp", 0770, 0, kMemberGroup);
  Dir(d + "/grp_other", 0770, 0, kOtherGroup);
  Dir(d + "/acl", 0700);
  std::string out;
  REQUIRE(RunCommand({"setfacl", "-m", "u:65534:rwx,m::rwx", d + "/acl"}, &out) == 0);
  Dir(d + "/acl_ro", 0700);
  REQUIRE(RunCommand({"setfacl", "-m", "g:100:rx,m::rx", d + "/acl_ro"}, &out) == 0);
  Dir(d + "/acl_default", 0777);
  REQUIRE(RunCommand({"setfacl", "-d", "-m", "u::rwx,g::r-x,o::---,u:1000:rw", d + "/acl_default"},
                     &out) == 0);
  Dir(d + "/sticky", 01777);
  Touch(d + "/sticky/rootf", 0666);
  Dir(d + "/setgid", 02775, 0, kMemberGroup);
  REQUIRE(chmod((d + "/setgid").c_str(), 02777) == 0);
  Dir(d + "/other_gid", 0777, 0, kOtherGroup);
  Dir(d + "/mine", 0755, kUser, kGroup);
  Touch(d + "/mine/f", 0644, kUser, kGroup);
  Touch(d + "/rootfile", 0666);
  Touch(d + "/rootfile_ro", 0644);
  Touch(d + "/secret", 0600);
}

// The steps, run as the user with cwd-independent absolute paths.
std::vector<std::pair<std::string, std::function<int(const std::string&)>>> Steps() {
  return {
      {"stat inside 0700 dir",
       [](const std::string& d) {
         struct stat st;
         return Result(stat((d + "/private/x").c_str(), &st));
       }},
      {"open inside 0700 dir",
       [](const std::string& d) {
         int fd = open((d + "/private/x").c_str(), O_RDONLY);
         if (fd >= 0) close(fd);
         return Result(fd);
       }},
      {"create in group dir (supplementary group)",
       [](const std::string& d) {
         int fd = open((d + "/grp/f").c_str(), O_CREAT | O_WRONLY, 0666);
         if (fd >= 0) close(fd);
         return Result(fd);
       }},
      {"create in other group's dir",
       [](const std::string& d) {
         int fd = open((d + "/grp_other/f").c_str(), O_CREAT | O_WRONLY, 0666);
         if (fd >= 0) close(fd);
         return Result(fd);
       }},
      {"mkdir through user ACL",
       [](const std::string& d) { return Result(mkdir((d + "/acl/sub").c_str(), 0777)); }},
      {"list through group ACL",
       [](const std::string& d) {
         struct stat st;
         return Result(stat((d + "/acl_ro/.").c_str(), &st));
       }},
      {"create through read-only group ACL",
       [](const std::string& d) { return Result(mkdir((d + "/acl_ro/sub").c_str(), 0777)); }},
      {"create under default ACL",
       [](const std::string& d) {
         int fd = open((d + "/acl_default/f").c_str(), O_CREAT | O_WRONLY, 0666);
         if (fd >= 0) close(fd);
         return Result(fd);
       }},
      {"unlink root's file in sticky dir",
       [](const std::string& d) { return Result(unlink((d + "/sticky/rootf").c_str())); }},
      {"rename root's file in sticky dir",
       [](const std::string& d) {
         return Result(rename((d + "/sticky/rootf").c_str(), (d + "/sticky/moved").c_str()));
       }},
      {"create and unlink own file in sticky dir",
       [](const std::string& d) {
         int fd = open((d + "/sticky/own").c_str(), O_CREAT | O_WRONLY, 0644);
         if (fd < 0) return errno;
         close(fd);
         return Result(unlink((d + "/sticky/own").c_str()));
       }},
      {"hard link to root's file (protected_hardlinks)",
       [](const std::string& d) {
         return Result(link((d + "/rootfile").c_str(), (d + "/sticky/hl").c_str()));
       }},
      {"mkdir in setgid dir",
       [](const std::string& d) { return Result(mkdir((d + "/setgid/sub").c_str(), 0755)); }},
      {"create in setgid dir",
       [](const std::string& d) {
         int fd = open((d + "/setgid/f").c_str(), O_CREAT | O_WRONLY, 0644);
         if (fd >= 0) close(fd);
         return Result(fd);
       }},
      {"create setgid file in other group's dir",
       [](const std::string& d) {
         int fd = open((d + "/other_gid/sg").c_str(), O_CREAT | O_WRONLY, 02755);
         if (fd >= 0) close(fd);
         return Result(fd);
       }},
      {"chown own file to another user",
       [](const std::string& d) { return Result(chown((d + "/mine/f").c_str(), 1000, -1)); }},
      {"chgrp own file to member group",
       [](const std::string& d) {
         return Result(chown((d + "/mine/f").c_str(), -1, kMemberGroup));
       }},
      {"chgrp own file to other group",
       [](const std::string& d) {
         return Result(chown((d + "/mine/f").c_str(), -1, kOtherGroup));
       }},
      {"chmod own file with setgid to non-member group",
       [](const std::string& d) { return Result(chmod((d + "/mine/f").c_str(), 02755)); }},
      {"chmod root's file",
       [](const std::string& d) { return Result(chmod((d + "/rootfile").c_str(), 0777)); }},
      {"explicit times on root's writable file",
       [](const std::string& d) {
         struct timespec t[2] = {{1, 0}, {1, 0}};
         return Result(utimensat(AT_FDCWD, (d + "/rootfile").c_str(), t, 0));
       }},
      {"UTIME_NOW on root's writable file",
       [](const std::string& d) {
         struct timespec t[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
         return Result(utimensat(AT_FDCWD, (d + "/rootfile").c_str(), t, 0));
       }},
      {"UTIME_NOW on root's read-only file",
       [](const std::string& d) {
         struct timespec t[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
         return Result(utimensat(AT_FDCWD, (d + "/rootfile_ro").c_str(), t, 0));
       }},
      {"truncate root's read-only file",
       [](const std::string& d) { return Result(truncate((d + "/rootfile_ro").c_str(), 0)); }},
      {"access R_OK on 0600 root file",
       [](const std::string& d) { return Result(access((d + "/secret").c_str(), R_OK)); }},
      {"access W_OK on 0666 root file",
       [](const std::string& d) { return Result(access((d + "/rootfile").c_str(), W_OK)); }},
      {"access X_OK on 0700 dir",
       [](const std::string& d) { return Result(access((d + "/private").c_str(), X_OK)); }},
      {"user xattr on read-only root file",
       [](const std::string& d) {
         return Result(setxattr((d + "/rootfile_ro").c_str(), "user.a", "1", 1, 0));
       }},
      {"user xattr on own file",
       [](const std::string& d) {
         return Result(setxattr((d + "/mine/f").c_str(), "user.DOSATTRIB", "1", 1, 0));
       }},
      {"trusted xattr as user",
       [](const std::string& d) {
         return Result(setxattr((d + "/mine/f").c_str(), "trusted.a", "1", 1, 0));
       }},
      {"read user xattr of 0600 root file",
       [](const std::string& d) {
         char buf[16];
         return Result(static_cast<int>(getxattr((d + "/secret").c_str(), "user.a", buf, 16)));
       }},
      {"rmdir another user's dir in sticky dir",
       [](const std::string& d) { return Result(rmdir((d + "/sticky").c_str())); }},
  };
}

// Runs all steps as the user in a child; returns their results.
std::vector<int> RunAsUser(const std::string& d) {
  int pipefd[2];
  REQUIRE(pipe(pipefd) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    close(pipefd[0]);
    gid_t groups[] = {kGroup, kMemberGroup};
    if (setgroups(2, groups) != 0 || setresgid(kGroup, kGroup, kGroup) != 0 ||
        setresuid(kUser, kUser, kUser) != 0) {
      _exit(99);
    }
    umask(022);
    for (auto& step : Steps()) {
      int r = step.second(d);
      if (write(pipefd[1], &r, sizeof r) != sizeof r) _exit(98);
    }
    _exit(0);
  }
  close(pipefd[1]);
  std::vector<int> results;
  int r;
  while (read(pipefd[0], &r, sizeof r) == sizeof r) results.push_back(r);
  close(pipefd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  return results;
}

std::string Describe(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return "absent";
  char buf[64];
  std::snprintf(buf, sizeof buf, "uid=%u gid=%u mode=%o", st.st_uid, st.st_gid, st.st_mode);
  std::string out = buf;
  std::string acl;
  RunCommand({"getfacl", "-cpn", path}, &acl);
  return out + " acl=" + acl;
}

}  // namespace

TEST_CASE("permissions: an unprivileged user gets native results", "[fs][permissions]") {
  TempDir tmp;
  REQUIRE(chmod(tmp.path().c_str(), 0755) == 0);
  const std::string native = tmp.Sub("native");
  const std::string backing = tmp.Sub("backing");
  const std::string mnt = tmp.Sub("mnt");
  for (const auto& d : {native, backing, mnt}) REQUIRE(mkdir(d.c_str(), 0755) == 0);
  ScopedMount m(backing, mnt, {"-o", "allow_other"});
  Setup(native);
  Setup(mnt);

  std::vector<int> want = RunAsUser(native);
  std::vector<int> got = RunAsUser(mnt);
  auto steps = Steps();
  REQUIRE(want.size() == steps.size());
  REQUIRE(got.size() == steps.size());
  int denied = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    INFO("step: " << steps[i].first << " native=" << want[i] << " vssfs=" << got[i]);
    CHECK(got[i] == want[i]);
    if (want[i] != 0) ++denied;
  }
  // The scenario exercises both outcomes.
  CHECK(denied >= 10);
  CHECK(denied <= static_cast<int>(steps.size()) - 8);

  for (const char* entry : {"grp/f", "acl/sub", "acl_default/f", "sticky/rootf", "setgid/sub",
                            "setgid/f", "other_gid/sg", "mine/f", "rootfile", "rootfile_ro"}) {
    INFO("entry: " << entry);
    CHECK(Describe(mnt + "/" + entry) == Describe(native + "/" + entry));
    CHECK(Describe(backing + "/" + entry) == Describe(native + "/" + entry));
  }
}
