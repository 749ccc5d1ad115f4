// Help texts of vssctl commands, shared by the client (which answers --help
// without a daemon) and RunCommand.
#ifndef VSSFS_SNAPSHOT_CTL_SRC_COMMANDS_H_
#define VSSFS_SNAPSHOT_CTL_SRC_COMMANDS_H_

#include <string>
#include <vector>

#include "vssfs/cow_store/store.h"

namespace vssfs::snapshot_ctl {

// Help for the command named by the leading words of `args` ("" = top level).
std::string HelpFor(const std::vector<std::string>& words);
// Whether `args` asks for help anywhere.
bool WantsHelp(const std::vector<std::string>& args);

// JSON string literal for `s`.
std::string JsonString(const std::string& s);
// "2026-11-25 10:27:53 UTC"
std::string FormatTime(int64_t ns);
// Bytes as "1.5 GiB".
std::string HumanBytes(uint64_t bytes);
std::string FsckText(const cow_store::FsckReport& r, bool json);
// Reads a target file list (--files LIST): one path per line, blank lines
// and lines starting with '#' skipped; relative paths are taken from
// `base` (kept relative when it is empty). Errors: errno of reading LIST,
// EINVAL when it lists nothing.
cow_store::Result<std::vector<std::string>> ReadFileList(const std::string& list,
                                                         const std::string& base);

}  // namespace vssfs::snapshot_ctl

#endif  // VSSFS_SNAPSHOT_CTL_SRC_COMMANDS_H_
