// A minimal test registry for the core: each TEST body throws on the first failed check.
// The runner prints one line per test and 'N passed, N failed' at the end.
#pragma once
#include <cmath>
#include <functional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace maml_test {

struct TestCase {
  std::string name;
  std::function<void()> body;
};

inline std::vector<TestCase>& registry() {
  static std::vector<TestCase> tests;
  return tests;
}

struct Register {
  Register(const std::string& name, std::function<void()> body) { registry().push_back({name, std::move(body)}); }
};

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// |a - b| <= tolerance * max(1, |a|, |b|) style relative check, reported with both values.
inline void expect_close(double actual, double expected, double relative, double absolute, const std::string& what,
                         const char* file, int line) {
  const double scale = std::max(std::abs(actual), std::abs(expected));
  if (!(std::abs(actual - expected) <= relative * scale + absolute) || std::isnan(actual)) {
    std::ostringstream s;
    s << file << ":" << line << ": " << what << ": got " << actual << ", expected " << expected << " (difference "
      << std::abs(actual - expected) << ")";
    throw Failure(s.str());
  }
}

// Relative error of two vectors in the max norm: max|a - b| / max(max|b|, floor).
inline double relative_error(const std::vector<double>& a, const std::vector<double>& b, double floor = 1e-12) {
  double diff = 0, scale = floor;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return diff / scale;
}

inline std::vector<double> random_vector(size_t n, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = normal(rng);
  return v;
}

}  // namespace maml_test

#define MAML_CONCAT2(a, b) a##b
#define MAML_CONCAT(a, b) MAML_CONCAT2(a, b)
#define TEST(name)                                                                    \
  static void name();                                                                 \
  static maml_test::Register MAML_CONCAT(register_, name)(#name, name);               \
  static void name()
#define CHECK(condition)                                                                                    \
  do {                                                                                                      \
    if (!(condition)) throw maml_test::Failure(std::string(__FILE__) + ":" + std::to_string(__LINE__) +     \
                                               ": check failed: " #condition);                             \
  } while (0)
#define CHECK_CLOSE(actual, expected, relative, absolute, what) \
  maml_test::expect_close((actual), (expected), (relative), (absolute), (what), __FILE__, __LINE__)
#define CHECK_LESS(value, bound, what)                                                                       \
  do {                                                                                                       \
    const double v_ = (value), b_ = (bound);                                                                 \
    if (!(v_ < b_)) {                                                                                        \
      std::ostringstream s_;                                                                                 \
      s_ << __FILE__ << ":" << __LINE__ << ": " << (what) << ": " << v_ << " is not below " << b_;          \
      throw maml_test::Failure(s_.str());                                                                    \
    }                                                                                                        \
  } while (0)
