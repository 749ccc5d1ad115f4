// vssfs-difftest: differential tester comparing a file system under test
// (DIR_B, e.g. a vssfs mount) with a plain directory (DIR_A). See difftest.h.
#include <cstdio>
#include <string>
#include <vector>

#include "difftest.h"

int main(int argc, char** argv) {
  namespace dt = vssfs::difftest;
  dt::Options options;
  std::string error;
  const std::vector<std::string> args(argv + 1, argv + argc);
  switch (dt::ParseArgs(args, &options, &error)) {
    case dt::ParseResult::kHelp:
      fputs(dt::Usage().c_str(), stdout);
      return 0;
    case dt::ParseResult::kError:
      fprintf(stderr, "vssfs-difftest: %s\n%s", error.c_str(), dt::Usage().c_str());
      return dt::kExitUsage;
    case dt::ParseResult::kOk:
      break;
  }
  return options.verify_only ? dt::VerifySnapshots(options) : dt::RunDifftest(options);
}
