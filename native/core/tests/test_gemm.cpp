// The GEMM against the triple loop, in every operand orientation the layers use.
#include "check.h"
#include "cpu/gemm.h"

using namespace maml;

template <class T>
static void check_orientation(int m, int n, int k, bool transpose_a, bool transpose_b, double tolerance) {
  std::mt19937_64 rng(m * 131 + n * 17 + k);
  auto a64 = maml_test::random_vector(size_t(m) * k, rng), b64 = maml_test::random_vector(size_t(k) * n, rng);
  auto c64 = maml_test::random_vector(size_t(m) * n, rng);
  std::vector<T> a(a64.begin(), a64.end()), b(b64.begin(), b64.end()), c(c64.begin(), c64.end()), r = c;
  const MatrixView av = transpose_a ? transposed(m) : row_major(k);
  const MatrixView bv = transpose_b ? transposed(k) : row_major(n);
  gemm<T>(m, n, k, T(0.5), a.data(), av, b.data(), bv, T(2), c.data(), n);
  gemm_reference<T>(m, n, k, T(0.5), a.data(), av, b.data(), bv, T(2), r.data(), n);
  std::vector<double> got(c.begin(), c.end()), want(r.begin(), r.end());
  CHECK_LESS(maml_test::relative_error(got, want), tolerance, "gemm " + std::to_string(m) + "x" + std::to_string(n) +
                                                                   "x" + std::to_string(k));
}

TEST(gemm_matches_reference_double) {
  for (int m : {1, 5, 7, 64, 97})
    for (int n : {1, 3, 16, 33, 300})
      for (int k : {1, 9, 27, 300})
        for (int ta = 0; ta < 2; ++ta)
          for (int tb = 0; tb < 2; ++tb) check_orientation<double>(m, n, k, ta, tb, 1e-13);
}

TEST(gemm_matches_reference_float) {
  for (int m : {6, 32, 100})
    for (int n : {8, 17, 2100})
      for (int k : {9, 288, 600}) check_orientation<float>(m, n, k, false, true, 1e-5);
}

TEST(gemm_beta_zero_ignores_garbage_in_c) {
  std::vector<double> a{1, 2, 3, 4}, b{1, 0, 0, 1}, c{NAN, NAN, NAN, NAN};
  gemm<double>(2, 2, 2, 1.0, a.data(), row_major(2), b.data(), row_major(2), 0.0, c.data(), 2);
  CHECK(c[0] == 1 && c[1] == 2 && c[2] == 3 && c[3] == 4);
}

// A packed once (as the conv layers do per task) gives the same product as packing per call,
// in both tile shapes, over several depth blocks and column blocks.
template <class T>
static void check_prepacked(gemm_detail::TileShape shape, int m, int n, int k, bool transpose_a, double tolerance) {
  std::mt19937_64 rng(m * 7 + n * 3 + k);
  auto a64 = maml_test::random_vector(size_t(m) * k, rng), b64 = maml_test::random_vector(size_t(k) * n, rng);
  auto c64 = maml_test::random_vector(size_t(m) * n, rng);
  std::vector<T> a(a64.begin(), a64.end()), b(b64.begin(), b64.end()), c(c64.begin(), c64.end()), r = c;
  const MatrixView av = transpose_a ? transposed(m) : row_major(k);
  std::vector<T> packed(packed_a_size<T>(shape, m, k));
  pack_a_matrix<T>(shape, m, k, a.data(), av, packed.data());
  gemm_packed<T>(shape, m, n, k, T(1), packed.data(), b.data(), row_major(n), T(1), c.data(), n);
  gemm_reference<T>(m, n, k, T(1), a.data(), av, b.data(), row_major(n), T(1), r.data(), n);
  std::vector<double> got(c.begin(), c.end()), want(r.begin(), r.end());
  CHECK_LESS(maml_test::relative_error(got, want), tolerance,
             "prepacked gemm " + std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k));
}

TEST(gemm_with_prepacked_a_matches_reference) {
  using gemm_detail::TileShape;
  for (TileShape shape : {TileShape::tall, TileShape::wide})
    for (int m : {3, 32, 101})
      for (int n : {5, 240, 2100})
        for (int k : {27, 288, 600}) {
          if (n * k > 240 * 600) continue;  // the triple loop would dominate the test time
          check_prepacked<double>(shape, m, n, k, false, 1e-13);
          check_prepacked<double>(shape, m, n, k, true, 1e-13);
          check_prepacked<float>(shape, m, n, k, m == 32, 1e-5);
        }
}

TEST(gemm_picks_the_tile_with_less_padding) {
  using gemm_detail::TileShape;
  CHECK(gemm_tile_shape<float>(32, 240) == TileShape::wide);  // 32 rows: 8 x 4, not 6 x 6 = 36
  CHECK(gemm_tile_shape<float>(64, 112) == TileShape::tall);  // 112 columns: 7 x 16, not 5 x 24 = 120
  CHECK(gemm_tile_shape<float>(32, 27) == TileShape::tall);   // 27 columns: 2 x 16, not 2 x 24
}
