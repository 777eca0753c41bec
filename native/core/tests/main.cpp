// Runs every registered core test, or those whose name contains argv[1].
#include <chrono>
#include <cstdio>
#include <cstring>

#include "check.h"

int main(int argc, char** argv) {
  int passed = 0, failed = 0;
  for (const auto& test : maml_test::registry()) {
    if (argc > 1 && !std::strstr(test.name.c_str(), argv[1])) continue;
    const auto start = std::chrono::steady_clock::now();
    try {
      test.body();
      ++passed;
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      std::printf("ok   %-52s %8.1f ms\n", test.name.c_str(), ms);
    } catch (const std::exception& e) {
      ++failed;
      std::printf("FAIL %s\n     %s\n", test.name.c_str(), e.what());
    }
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 && passed > 0 ? 0 : 1;
}
