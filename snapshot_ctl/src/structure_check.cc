#include "vssfs/snapshot_ctl/structure_check.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <memory>

#include "vssfs/cow_store/unique_fd.h"

namespace vssfs::snapshot_ctl {

using cow_store::Result;
using cow_store::Status;
using cow_store::UniqueFd;

namespace {

const char* TypeName(mode_t mode) {
  switch (mode & S_IFMT) {
    case S_IFLNK:
      return "a symbolic link";
    case S_IFCHR:
      return "a character device";
    case S_IFBLK:
      return "a block device";
    case S_IFIFO:
      return "a fifo";
    case S_IFSOCK:
      return "a socket";
    default:
      return "not a regular file or directory";
  }
}

struct Walker {
  int max_depth;
  dev_t dev;
  std::vector<StructureProblem>* out;

  void Add(const std::string& path, const char* rule, std::string what, std::string hint) {
    out->push_back(StructureProblem{path, rule, std::move(what), std::move(hint)});
  }

  Status Walk(int dir_fd, const std::string& rel, int depth) {
    UniqueFd fd(openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd) return Status::FromErrno(errno, "open " + (rel.empty() ? "." : rel));
    std::unique_ptr<DIR, int (*)(DIR*)> d(fdopendir(fd.get()), closedir);
    if (!d) return Status::FromErrno(errno, "read " + (rel.empty() ? "." : rel));
    const int dfd = fd.release();
    std::vector<std::string> names;
    while (dirent* e = readdir(d.get())) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(std::move(n));
    }
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      if (depth == 0 && (name == ".snapshot" || name == ".vssfs")) continue;
      const std::string path = rel.empty() ? name : rel + "/" + name;
      struct stat st;
      if (fstatat(dfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;
        return Status::FromErrno(errno, "stat " + path);
      }
      const int level = depth + 1;
      if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
        Add(path, "type", std::string("is ") + TypeName(st.st_mode),
            "replace it by the file or directory it stands for, or move it out of the share");
        continue;
      }
      if (level > max_depth) {
        Add(path, "depth",
            "is " + std::to_string(level) +
                " levels below the share root (the shadow-copy "
                "directory depth is " +
                std::to_string(max_depth) + ")",
            "move it closer to the share root, or raise the depth (--depth)");
      }
      if (S_ISREG(st.st_mode)) {
        if (st.st_nlink > 1) {
          Add(path, "link", "has " + std::to_string(st.st_nlink) + " hard links",
              "keep one name: copy the file instead of linking it");
        }
        if (depth == 0 && !IsVmFileName(name)) {
          Add(path, "root", "is a file at the share root that is not a VM file",
              "move it into a VM directory or out of the share");
        }
        continue;
      }
      if (st.st_dev != dev) {
        Add(path, "mount", "is a mount point (another filesystem)",
            "share that filesystem separately");
        continue;
      }
      if (level <= max_depth) {
        UniqueFd sub(openat(dfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!sub) return Status::FromErrno(errno, "open " + path);
        if (Status s = Walk(sub.get(), path, level); !s.ok()) return s;
      } else {
        // Everything below is deeper still: report the directory once.
      }
    }
    return Status();
  }
};

}  // namespace

bool IsVmFileName(const std::string& name) {
  static const char* const kExtensions[] = {
      ".vhd", ".vhdx", ".avhd", ".avhdx", ".vhds", ".vmcx", ".vmrs", ".vmgs",  ".vsv", ".bin",
      ".xml", ".vmc",  ".iso",  ".mdf",   ".ndf",  ".ldf",  ".vmdk", ".qcow2", ".img", ".raw"};
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* ext : kExtensions) {
    const std::string e = ext;
    if (lower.size() > e.size() && lower.compare(lower.size() - e.size(), e.size(), e) == 0) {
      return true;
    }
  }
  return false;
}

Result<std::vector<StructureProblem>> CheckStructure(const std::string& share, int depth) {
  UniqueFd root(open(share.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root) return Status::FromErrno(errno, "open share " + share);
  struct stat st;
  if (fstat(root.get(), &st) != 0) return Status::FromErrno(errno, "stat share " + share);
  std::vector<StructureProblem> problems;
  Walker w{depth, st.st_dev, &problems};
  if (Status s = w.Walk(root.get(), "", 0); !s.ok()) return s;
  return problems;
}

}  // namespace vssfs::snapshot_ctl
