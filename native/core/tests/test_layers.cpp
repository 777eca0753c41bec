// Each op's reverse and tangent rules against central finite differences in float64
// (MATH.md), plus the exact adjoint identity <y_grad, y_tangent> = <x_grad, x_tangent> + ...
#include <functional>

#include "architecture.h"
#include "check.h"
#include "cpu/batch_norm.h"
#include "cpu/batch_norm_pool.h"
#include "cpu/conv.h"
#include "cpu/losses.h"
#include "cpu/simple_layers.h"

using namespace maml;
using Vec = std::vector<double>;

static double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central difference of a vector function along a direction.
static Vec directional_difference(const std::function<Vec(double)>& f, double eps) {
  Vec plus = f(eps), minus = f(-eps), out(plus.size());
  for (size_t i = 0; i < plus.size(); ++i) out[i] = (plus[i] - minus[i]) / (2 * eps);
  return out;
}

static Vec axpy(const Vec& x, double a, const Vec& d) {
  Vec out(x);
  for (size_t i = 0; i < x.size(); ++i) out[i] += a * d[i];
  return out;
}

TEST(conv_geometry_matches_tensorflow_same_and_symmetric) {
  int out, pad;
  conv_geometry(28, 2, Padding::TensorFlowSame, &out, &pad);
  CHECK(out == 14 && pad == 0);
  conv_geometry(7, 2, Padding::TensorFlowSame, &out, &pad);
  CHECK(out == 4 && pad == 1);
  conv_geometry(14, 2, Padding::TensorFlowSame, &out, &pad);
  CHECK(out == 7 && pad == 0);
  conv_geometry(84, 1, Padding::TensorFlowSame, &out, &pad);
  CHECK(out == 84 && pad == 1);
  conv_geometry(28, 2, Padding::Symmetric, &out, &pad);
  CHECK(out == 14 && pad == 1);
  conv_geometry(7, 2, Padding::Symmetric, &out, &pad);
  CHECK(out == 4 && pad == 1);
}

// Direct convolution, written from the definition.
static Vec conv_direct(const ConvGeometry& g, const Vec& x, const Vec& w, const Vec& b) {
  Vec y(g.out_size(), 0);
  for (int co = 0; co < g.cout; ++co)
    for (int oy = 0; oy < g.oh; ++oy)
      for (int ox = 0; ox < g.ow; ++ox) {
        double s = b[co];
        for (int ci = 0; ci < g.cin; ++ci)
          for (int ky = 0; ky < 3; ++ky)
            for (int kx = 0; kx < 3; ++kx) {
              const int iy = oy * g.stride + ky - g.pad_top, ix = ox * g.stride + kx - g.pad_left;
              if (iy >= 0 && iy < g.h && ix >= 0 && ix < g.w)
                s += w[((co * g.cin + ci) * 3 + ky) * 3 + kx] * x[(ci * g.h + iy) * g.w + ix];
            }
        y[(co * g.oh + oy) * g.ow + ox] = s;
      }
  return y;
}

// The sums of y and y^2 per task and channel a forward adds up for the batch norm (summed
// over the examples' slots, as the batch norm does) against the stored y.
template <class T>
static void check_moments(const ConvGeometry& g, int tasks, int batch, const T* x, const T* const* w, const T* const* b,
                          const std::string& name) {
  std::vector<T> y(size_t(tasks) * batch * g.out_size());
  std::vector<double> sums(size_t(tasks) * batch * g.cout * 2, -1.0);
  conv_forward<T>(g, tasks, batch, x, w, b, y.data(), false, sums.data());
  Vec got, want;
  for (int t = 0; t < tasks; ++t)
    for (int c = 0; c < g.cout; ++c) {
      double s = 0, q = 0, gs = 0, gq = 0;
      for (int n = 0; n < batch; ++n) {
        const T* plane = y.data() + (int64_t(t) * batch + n) * g.out_size() + c * g.out_plane();
        for (int64_t i = 0; i < g.out_plane(); ++i) s += plane[i], q += double(plane[i]) * plane[i];
        gs += sums[((int64_t(t) * batch + n) * g.cout + c) * 2];
        gq += sums[((int64_t(t) * batch + n) * g.cout + c) * 2 + 1];
      }
      got.push_back(gs), got.push_back(gq), want.push_back(s), want.push_back(q);
    }
  // float: the kernels sum a block of values in float first
  const double tolerance = std::is_same<T, float>::value ? 1e-6 : 1e-12;
  CHECK_LESS(maml_test::relative_error(got, want), tolerance, "conv output sums for the batch norm, " + name);
}

TEST(conv_forward_and_gradients_match_direct_convolution_and_finite_differences) {
  struct Case { int h, stride; Padding padding; };
  for (Case c : {Case{7, 2, Padding::TensorFlowSame}, Case{8, 2, Padding::TensorFlowSame}, Case{8, 2, Padding::Symmetric},
                 Case{5, 1, Padding::TensorFlowSame}, Case{6, 1, Padding::Symmetric},
                 // output rows over 16, and planes of one example per group
                 Case{20, 1, Padding::TensorFlowSame}, Case{34, 2, Padding::TensorFlowSame},
                 Case{35, 2, Padding::Symmetric}}) {
    ConvGeometry g{2, c.h, c.h, 3, 0, 0, c.stride, 0, 0};
    conv_geometry(c.h, c.stride, c.padding, &g.oh, &g.pad_top);
    conv_geometry(c.h, c.stride, c.padding, &g.ow, &g.pad_left);
    std::mt19937_64 rng(c.h * 10 + c.stride);
    const int tasks = 2, batch = 3;
    Vec x = maml_test::random_vector(tasks * batch * g.in_size(), rng);
    Vec w = maml_test::random_vector(tasks * g.cout * g.depth(), rng), b = maml_test::random_vector(tasks * g.cout, rng);
    Vec r = maml_test::random_vector(tasks * batch * g.out_size(), rng);
    const double* wp[2] = {w.data(), w.data() + g.cout * g.depth()};
    const double* bp[2] = {b.data(), b.data() + g.cout};
    Vec y(r.size());
    conv_forward<double>(g, tasks, batch, x.data(), wp, bp, y.data(), false);
    for (int t = 0; t < tasks; ++t)
      for (int n = 0; n < batch; ++n) {
        Vec xe(x.begin() + (t * batch + n) * g.in_size(), x.begin() + (t * batch + n + 1) * g.in_size());
        Vec we(w.begin() + t * g.cout * g.depth(), w.begin() + (t + 1) * g.cout * g.depth());
        Vec be(b.begin() + t * g.cout, b.begin() + (t + 1) * g.cout);
        Vec want = conv_direct(g, xe, we, be);
        Vec got(y.begin() + (t * batch + n) * g.out_size(), y.begin() + (t * batch + n + 1) * g.out_size());
        CHECK_LESS(maml_test::relative_error(got, want), 1e-13, "conv forward vs direct");
      }
    // reverse rules: L = <r, y>; the gradients must equal finite differences of L
    Vec xg(x.size()), wg(w.size()), bg(b.size());
    double* wgp[2] = {wg.data(), wg.data() + g.cout * g.depth()};
    double* bgp[2] = {bg.data(), bg.data() + g.cout};
    conv_input_grad<double>(g, tasks, batch, r.data(), wp, xg.data(), false);
    conv_weight_grad<double>(g, tasks, batch, x.data(), r.data(), wgp, bgp, false);
    auto loss = [&](const Vec& xx, const Vec& ww, const Vec& bb) {
      const double* wq[2] = {ww.data(), ww.data() + g.cout * g.depth()};
      const double* bq[2] = {bb.data(), bb.data() + g.cout};
      Vec yy(r.size());
      conv_forward<double>(g, tasks, batch, xx.data(), wq, bq, yy.data(), false);
      return dot(r, yy);
    };
    const Vec dx = maml_test::random_vector(x.size(), rng), dw = maml_test::random_vector(w.size(), rng);
    const Vec db = maml_test::random_vector(b.size(), rng);
    const double eps = 1e-4;
    const double fd = (loss(axpy(x, eps, dx), axpy(w, eps, dw), axpy(b, eps, db)) -
                       loss(axpy(x, -eps, dx), axpy(w, -eps, dw), axpy(b, -eps, db))) / (2 * eps);
    CHECK_CLOSE(dot(xg, dx) + dot(wg, dw) + dot(bg, db), fd, 1e-8, 1e-10, "conv gradient along a direction");
    // one coordinate at a time near the padded border
    for (int i : {0, int(x.size()) - 1, 5}) {
      Vec e(x.size(), 0);
      e[i] = 1;
      const double fdi = (loss(axpy(x, eps, e), w, b) - loss(axpy(x, -eps, e), w, b)) / (2 * eps);
      CHECK_CLOSE(xg[i], fdi, 1e-8, 1e-10, "conv input gradient element");
    }
  }
}

// Float layers with few input channels at stride 1 (the miniimagenet input layer) take the
// direct kernels of cpu/conv_direct.h; double takes the indirect GEMM tiles. Both must give the
// same forward (plain and accumulated) and weight and bias gradients, at widths that end in
// a full three-vector tile or a tail of one, two or three vectors, with 3 input channels
// and with 1 and 2 (the forward kernel is unrolled for 1 and 3, looped for the others).
TEST(direct_float_convolution_matches_the_gemm_path) {
  struct Case { int cin, h; };
  for (Case c : {Case{3, 24}, Case{3, 13}, Case{3, 30}, Case{3, 20}, Case{3, 84}, Case{1, 30}, Case{2, 20}}) {
    const int h = c.h;
    ConvGeometry g{c.cin, h, h, 8, 0, 0, 1, 0, 0};
    conv_geometry(h, 1, Padding::TensorFlowSame, &g.oh, &g.pad_top);
    conv_geometry(h, 1, Padding::TensorFlowSame, &g.ow, &g.pad_left);
    const bool direct = conv_is_direct<float>(g);
    const int tasks = 2, batch = 2;
    std::mt19937_64 rng(h * 4 + c.cin);
    const Vec x = maml_test::random_vector(tasks * batch * g.in_size(), rng);
    const Vec w = maml_test::random_vector(tasks * g.cout * g.depth(), rng), b = maml_test::random_vector(tasks * g.cout, rng);
    const Vec r = maml_test::random_vector(tasks * batch * g.out_size(), rng);
    const std::vector<float> xf(x.begin(), x.end()), wf(w.begin(), w.end()), bf(b.begin(), b.end()), rf(r.begin(), r.end());
    const double* wp[2] = {w.data(), w.data() + g.cout * g.depth()};
    const double* bp[2] = {b.data(), b.data() + g.cout};
    const float* wpf[2] = {wf.data(), wf.data() + g.cout * g.depth()};
    const float* bpf[2] = {bf.data(), bf.data() + g.cout};
    // forward, then accumulate a second forward onto it
    Vec y(r.size());
    std::vector<float> yf(r.size());
    conv_forward<double>(g, tasks, batch, x.data(), wp, bp, y.data(), false);
    conv_forward<double>(g, tasks, batch, x.data(), wp, nullptr, y.data(), true);
    conv_forward<float>(g, tasks, batch, xf.data(), wpf, bpf, yf.data(), false);
    conv_forward<float>(g, tasks, batch, xf.data(), wpf, nullptr, yf.data(), true);
    const std::string name = "cin " + std::to_string(c.cin) + ", h " + std::to_string(h);
    CHECK_LESS(maml_test::relative_error(Vec(yf.begin(), yf.end()), y), 1e-5, "direct forward, " + name);
    check_moments<float>(g, tasks, batch, xf.data(), wpf, bpf, "direct, " + name);
    // weight and bias gradients
    Vec wg(w.size()), bg(b.size());
    std::vector<float> wgf(w.size()), bgf(b.size());
    double* wgp[2] = {wg.data(), wg.data() + g.cout * g.depth()};
    double* bgp[2] = {bg.data(), bg.data() + g.cout};
    float* wgpf[2] = {wgf.data(), wgf.data() + g.cout * g.depth()};
    float* bgpf[2] = {bgf.data(), bgf.data() + g.cout};
    conv_weight_grad<double>(g, tasks, batch, x.data(), r.data(), wgp, bgp, false);
    conv_weight_grad<float>(g, tasks, batch, xf.data(), rf.data(), wgpf, bgpf, false);
    CHECK_LESS(maml_test::relative_error(Vec(wgf.begin(), wgf.end()), wg), 1e-5, "direct weight gradient");
    CHECK_LESS(maml_test::relative_error(Vec(bgf.begin(), bgf.end()), bg), 1e-5, "direct bias gradient");
    // accumulate = true adds to what is there
    conv_weight_grad<float>(g, tasks, batch, xf.data(), rf.data(), wgpf, nullptr, true);
    Vec twice(wg.size());
    for (size_t i = 0; i < wg.size(); ++i) twice[i] = 2 * wg[i];
    CHECK_LESS(maml_test::relative_error(Vec(wgf.begin(), wgf.end()), twice), 1e-5, "direct weight gradient, accumulated");
    if (h >= 24) CHECK(direct == direct_conv::available);  // the kernel is really exercised where it exists
  }
}

// Every layer but the direct float input layer takes the indirect tiles of
// cpu/conv_indirect.h. Here with a depth of 180 (two depth blocks) and 20 output channels
// (a partial sliver of 16, or of 8 in double), at stride 1 and at stride 2 with even,
// odd and non-square sizes, both paddings, and groups of several examples (the last one
// short). The forward against the definition, the two gradients as exact adjoints of
// it, the input gradient's second pair, and float against double.
// Few examples are cut into parts of channels, more finely the more threads there are
// (parallel.h, parts_for_balance): each output must still be computed the same way, so
// the results at 2 threads are the bits of 1 thread's, and the weight gradient's too
// (its units own channels; only a task of at most 16 channels on 3 or more threads sums
// per-thread slots, and those only agree to rounding).
TEST(convolution_cut_into_channel_parts_gives_the_same_bits_as_one_thread) {
  struct Case { int cin, cout, h, stride; Padding padding; };
  for (Case c : {Case{3, 32, 12, 1, Padding::Symmetric}, Case{32, 32, 10, 1, Padding::Symmetric},
                 Case{64, 64, 7, 2, Padding::TensorFlowSame}, Case{20, 36, 5, 2, Padding::TensorFlowSame},
                 Case{16, 16, 6, 2, Padding::Symmetric}}) {
    ConvGeometry g{c.cin, c.h, c.h, c.cout, 0, 0, c.stride, 0, 0};
    conv_geometry(c.h, c.stride, c.padding, &g.oh, &g.pad_top);
    conv_geometry(c.h, c.stride, c.padding, &g.ow, &g.pad_left);
    for (int batch : {1, 3, 5}) {
      const std::string name = std::to_string(c.cin) + "->" + std::to_string(c.cout) + " h " + std::to_string(c.h) +
                               " batch " + std::to_string(batch);
      std::mt19937_64 rng(c.cout * 10 + batch);
      const auto random = [&](size_t n) {
        const Vec v = maml_test::random_vector(n, rng);
        return std::vector<float>(v.begin(), v.end());
      };
      const std::vector<float> x = random(batch * g.in_size()), w = random(g.cout * g.depth()), b = random(g.cout);
      const std::vector<float> r = random(batch * g.out_size());
      const float* wp[1] = {w.data()};
      const float* bp[1] = {b.data()};
      struct Results {
        std::vector<float> y, xg, wg, bg;
        std::vector<double> sums;
      };
      const auto run = [&](int threads) {
        ScopedThreadCount scope(threads);
        Results out{std::vector<float>(r.size()), std::vector<float>(x.size()), std::vector<float>(w.size()),
                    std::vector<float>(b.size()), std::vector<double>(size_t(batch) * g.cout * 2)};
        conv_forward<float>(g, 1, batch, x.data(), wp, bp, out.y.data(), false, out.sums.data());
        conv_input_grad<float>(g, 1, batch, r.data(), wp, out.xg.data(), false);
        float* wgp[1] = {out.wg.data()};
        float* bgp[1] = {out.bg.data()};
        conv_weight_grad<float>(g, 1, batch, x.data(), r.data(), wgp, bgp, false);
        return out;
      };
      const Results one = run(1), two = run(2), three = run(3);
      CHECK(one.y == two.y && one.y == three.y);
      CHECK(one.sums == two.sums && one.sums == three.sums);
      CHECK(one.xg == two.xg && one.xg == three.xg);
      CHECK(one.wg == two.wg);
      CHECK(one.bg == two.bg && one.bg == three.bg);
      CHECK_LESS(maml_test::relative_error(Vec(three.wg.begin(), three.wg.end()), Vec(one.wg.begin(), one.wg.end())),
                 1e-6, "weight gradient at 3 threads, " + name);
    }
  }
}

// The pool a conv takes as it stores its planes (conv_pool.h) is the pool of the stored
// planes, for the direct and the indirect kernels, scales of both signs and zero, and
// units cut into channel parts.
template <class T>
static void check_pool_while_storing(int cin, int cout, int h, const std::string& name) {
  ConvGeometry g{cin, h, h, cout, h, h, 1, 1, 1};
  const int tasks = 2, batch = 3;
  std::mt19937_64 rng(cin * 7 + cout);
  const auto random = [&](size_t n) {
    const Vec v = maml_test::random_vector(n, rng);
    return std::vector<T>(v.begin(), v.end());
  };
  const std::vector<T> x = random(tasks * batch * g.in_size()), w = random(tasks * cout * g.depth());
  std::vector<T> scale = random(tasks * cout);
  scale[1] = 0;
  scale[2] = -std::abs(scale[2]);
  const T* wp[2] = {w.data(), w.data() + cout * g.depth()};
  const T* sp[2] = {scale.data(), scale.data() + cout};
  const size_t pooled = size_t(tasks) * batch * cout * (h / 2) * (h / 2);
  std::vector<T> y(size_t(tasks) * batch * g.out_size()), x_at(pooled), want_x_at(pooled);
  std::vector<int32_t> argmax(pooled, -1), want_argmax(pooled);
  PoolByScale<T> pool{sp, argmax.data(), x_at.data()};
  conv_forward<T>(g, tasks, batch, x.data(), wp, nullptr, y.data(), false, nullptr, &pool);
  const int64_t out_pooled = int64_t(h / 2) * (h / 2);
  for (int t = 0; t < tasks; ++t)
    for (int n = 0; n < batch; ++n)
      for (int c = 0; c < cout; ++c) {
        const int64_t plane = (int64_t(t) * batch + n) * cout + c;
        pool_plane_by_sign(y.data() + plane * g.out_plane(), h, h, scale[t * cout + c], want_x_at.data() + plane * out_pooled,
                           want_argmax.data() + plane * out_pooled);
      }
  int64_t wrong = 0;
  for (size_t i = 0; i < pooled; ++i) wrong += argmax[i] != want_argmax[i] || x_at[i] != want_x_at[i];
  CHECK_LESS(double(wrong), 0.5, "pooled entries unlike the pool of the stored planes, " + name);
}

TEST(a_conv_pools_its_planes_while_storing_them_as_the_pool_of_the_stored_planes) {
  for (int threads : {1, 2}) {
    ScopedThreadCount scope(threads);
    check_pool_while_storing<float>(3, 8, 12, "direct float");
    check_pool_while_storing<float>(5, 40, 10, "indirect float, three slivers");
    check_pool_while_storing<double>(4, 6, 9, "indirect double, odd size");
  }
}

TEST(indirect_convolution_matches_the_definition_and_its_adjoints) {
  struct Case { int h, w, stride; Padding padding; };
  for (Case c : {Case{17, 17, 1, Padding::TensorFlowSame}, Case{16, 16, 2, Padding::TensorFlowSame},
                 Case{7, 7, 2, Padding::TensorFlowSame}, Case{15, 15, 2, Padding::Symmetric},
                 Case{11, 6, 2, Padding::TensorFlowSame}, Case{4, 4, 2, Padding::Symmetric}}) {
    ConvGeometry g{20, c.h, c.w, 20, 0, 0, c.stride, 0, 0};
    conv_geometry(c.h, c.stride, c.padding, &g.oh, &g.pad_top);
    conv_geometry(c.w, c.stride, c.padding, &g.ow, &g.pad_left);
    const std::string name = std::to_string(c.h) + "x" + std::to_string(c.w) + " stride " + std::to_string(c.stride);
    CHECK(!conv_is_direct<float>(g));
    const int tasks = 2, batch = 5;
    std::mt19937_64 rng(c.h * 100 + c.w);
    const Vec x = maml_test::random_vector(tasks * batch * g.in_size(), rng);
    const Vec w = maml_test::random_vector(tasks * g.cout * g.depth(), rng), b = maml_test::random_vector(tasks * g.cout, rng);
    const Vec w2 = maml_test::random_vector(w.size(), rng);
    const Vec r = maml_test::random_vector(tasks * batch * g.out_size(), rng), r2 = maml_test::random_vector(r.size(), rng);
    const int64_t ws = int64_t(g.cout) * g.depth();
    const double* wp[2] = {w.data(), w.data() + ws};
    const double* w2p[2] = {w2.data(), w2.data() + ws};
    const double* bp[2] = {b.data(), b.data() + g.cout};
    // forward, then a second forward accumulated onto it, against the definition
    Vec y(r.size());
    conv_forward<double>(g, tasks, batch, x.data(), wp, bp, y.data(), false);
    conv_forward<double>(g, tasks, batch, x.data(), w2p, nullptr, y.data(), true);
    double worst = 0;
    for (int t = 0; t < tasks; ++t)
      for (int n = 0; n < batch; ++n) {
        const Vec xe(x.begin() + (t * batch + n) * g.in_size(), x.begin() + (t * batch + n + 1) * g.in_size());
        const Vec we(w.begin() + t * ws, w.begin() + (t + 1) * ws), w2e(w2.begin() + t * ws, w2.begin() + (t + 1) * ws);
        const Vec be(b.begin() + t * g.cout, b.begin() + (t + 1) * g.cout);
        Vec want = conv_direct(g, xe, we, be);
        const Vec second = conv_direct(g, xe, w2e, Vec(g.cout, 0.0));
        for (size_t i = 0; i < want.size(); ++i) want[i] += second[i];
        const Vec got(y.begin() + (t * batch + n) * g.out_size(), y.begin() + (t * batch + n + 1) * g.out_size());
        worst = std::max(worst, maml_test::relative_error(got, want));
      }
    CHECK_LESS(worst, 1e-13, "indirect forward vs the definition, " + name);
    check_moments<double>(g, tasks, batch, x.data(), wp, bp, name);
    // adjoints: <r, conv(x; W)> = <x_grad(r; W), x> = <W_grad(x, r), W>, with the second pair;
    // x_grad starts as garbage: every input position must be written
    Vec y0(r.size()), y02(r.size()), xg(x.size(), 1e300), wg(w.size(), 1e300), bg(b.size());
    conv_forward<double>(g, tasks, batch, x.data(), wp, nullptr, y0.data(), false);
    conv_forward<double>(g, tasks, batch, x.data(), w2p, nullptr, y02.data(), false);
    conv_input_grad<double>(g, tasks, batch, r.data(), wp, xg.data(), false, r2.data(), w2p);
    double* wgp[2] = {wg.data(), wg.data() + ws};
    double* bgp[2] = {bg.data(), bg.data() + g.cout};
    conv_weight_grad<double>(g, tasks, batch, x.data(), r.data(), wgp, bgp, false);
    CHECK_CLOSE(dot(xg, x), dot(r, y0) + dot(r2, y02), 1e-12, 1e-12, "input gradient (two pairs) is the adjoint, " + name);
    CHECK_CLOSE(dot(wg, w), dot(r, y0), 1e-12, 1e-12, "weight gradient is the adjoint, " + name);
    // one input coordinate and one weight at a time (a sum over all could hide a swap)
    for (int64_t i : {int64_t(0), int64_t(x.size()) - 1, int64_t(g.in_size()) + g.w + 1}) {
      Vec e(x.size(), 0);
      e[i] = 1;
      Vec ye(r.size()), ye2(r.size());
      conv_forward<double>(g, tasks, batch, e.data(), wp, nullptr, ye.data(), false);
      conv_forward<double>(g, tasks, batch, e.data(), w2p, nullptr, ye2.data(), false);
      CHECK_CLOSE(xg[i], dot(r, ye) + dot(r2, ye2), 1e-12, 1e-12, "input gradient element " + std::to_string(i) + ", " + name);
    }
    for (int64_t i : {int64_t(0), ws - 1, ws + 7}) {
      Vec e(w.size(), 0);
      e[i] = 1;
      const double* ep[2] = {e.data(), e.data() + ws};
      Vec ye(r.size());
      conv_forward<double>(g, tasks, batch, x.data(), ep, nullptr, ye.data(), false);
      CHECK_CLOSE(wg[i], dot(r, ye), 1e-12, 1e-12, "weight gradient element " + std::to_string(i) + ", " + name);
    }
    double rsum = 0;
    for (int t = 0; t < tasks; ++t)
      for (int n = 0; n < batch; ++n)
        for (int64_t i = 0; i < g.out_plane(); ++i) rsum += r[(t * batch + n) * g.out_size() + 3 * g.out_plane() + i];
    CHECK_CLOSE(bg[3] + bg[g.cout + 3], rsum, 1e-12, 1e-12, "bias gradient of one channel, " + name);
    // float against double
    const std::vector<float> xf(x.begin(), x.end()), wf(w.begin(), w.end()), rf(r.begin(), r.end());
    const float* wpf[2] = {wf.data(), wf.data() + ws};
    std::vector<float> yf(r.size()), xgf(x.size()), wgf(w.size());
    float* wgpf[2] = {wgf.data(), wgf.data() + ws};
    conv_forward<float>(g, tasks, batch, xf.data(), wpf, nullptr, yf.data(), false);
    const std::vector<float> bf(b.begin(), b.end());
    const float* bpf[2] = {bf.data(), bf.data() + g.cout};
    check_moments<float>(g, tasks, batch, xf.data(), wpf, bpf, "float, " + name);
    conv_input_grad<float>(g, tasks, batch, rf.data(), wpf, xgf.data(), false);
    conv_weight_grad<float>(g, tasks, batch, xf.data(), rf.data(), wgpf, nullptr, false);
    Vec xg1(x.size());
    conv_input_grad<double>(g, tasks, batch, r.data(), wp, xg1.data(), false);
    CHECK_LESS(maml_test::relative_error(Vec(yf.begin(), yf.end()), y0), 1e-5, "float indirect forward, " + name);
    CHECK_LESS(maml_test::relative_error(Vec(xgf.begin(), xgf.end()), xg1), 1e-5, "float indirect input gradient, " + name);
    CHECK_LESS(maml_test::relative_error(Vec(wgf.begin(), wgf.end()), wg), 1e-5, "float indirect weight gradient, " + name);
  }
}

// Batch norm over [tasks, batch, channels, plane], with the learned scale present.
struct BatchNormCase {
  BatchNormShape shape{2, 3, 2, 5};
  double epsilon = 1e-3;
  Vec forward(const Vec& x, const Vec& gamma, const Vec& beta, Vec* stats_out = nullptr) const {
    (void)stats_out;
    Vec y(x.size());
    BatchNormStatistics<double> stats;
    const double* gp[2] = {gamma.data(), gamma.data() + shape.channels};
    const double* bp[2] = {beta.data(), beta.data() + shape.channels};
    batch_norm_forward<double>(shape, epsilon, x.data(), gp, bp, y.data(), stats, nullptr, nullptr, nullptr, nullptr);
    return y;
  }
  // returns x_grad, gamma_grad, beta_grad concatenated
  Vec backward(const Vec& x, const Vec& gamma, const Vec& beta, const Vec& y_grad) const {
    Vec y(x.size()), xg(x.size()), gg(gamma.size()), bg(beta.size());
    BatchNormStatistics<double> stats;
    const double* gp[2] = {gamma.data(), gamma.data() + shape.channels};
    const double* bp[2] = {beta.data(), beta.data() + shape.channels};
    double* ggp[2] = {gg.data(), gg.data() + shape.channels};
    double* bgp[2] = {bg.data(), bg.data() + shape.channels};
    batch_norm_forward<double>(shape, epsilon, x.data(), gp, bp, y.data(), stats, nullptr, nullptr, nullptr, nullptr);
    batch_norm_backward<double>(shape, x.data(), gp, stats, y_grad.data(), xg.data(), ggp, bgp, nullptr, nullptr,
                                nullptr, nullptr, nullptr, nullptr);
    Vec out = xg;
    out.insert(out.end(), gg.begin(), gg.end());
    out.insert(out.end(), bg.begin(), bg.end());
    return out;
  }
};

TEST(batch_norm_reverse_and_tangent_rules_match_finite_differences) {
  BatchNormCase c;
  std::mt19937_64 rng(7);
  const size_t n = size_t(c.shape.tasks) * c.shape.batch * c.shape.channels * c.shape.plane;
  const size_t p = size_t(c.shape.tasks) * c.shape.channels;
  Vec x = maml_test::random_vector(n, rng, 2.0), gamma = maml_test::random_vector(p, rng),
      beta = maml_test::random_vector(p, rng);
  Vec yg = maml_test::random_vector(n, rng);
  Vec dx = maml_test::random_vector(n, rng), dgamma = maml_test::random_vector(p, rng),
      dbeta = maml_test::random_vector(p, rng), dyg = maml_test::random_vector(n, rng);
  const double eps = 1e-6;
  // reverse rule: <gradients, direction> equals the directional derivative of <y_grad, y>
  Vec grads = c.backward(x, gamma, beta, yg);
  auto loss = [&](double e) { return Vec{dot(yg, c.forward(axpy(x, e, dx), axpy(gamma, e, dgamma), axpy(beta, e, dbeta)))}; };
  Vec direction = dx;
  direction.insert(direction.end(), dgamma.begin(), dgamma.end());
  direction.insert(direction.end(), dbeta.begin(), dbeta.end());
  CHECK_CLOSE(dot(grads, direction), directional_difference(loss, eps)[0], 1e-7, 1e-10, "batch norm reverse rule");

  // tangents of forward and reverse in one call
  Vec y(n), yt(n), xg(n), xgt(n), gg(p), bg(p), ggt(p), bgt(p);
  BatchNormStatistics<double> stats;
  const int C = c.shape.channels;
  const double* gp[2] = {gamma.data(), gamma.data() + C};
  const double* bp[2] = {beta.data(), beta.data() + C};
  const double* gtp[2] = {dgamma.data(), dgamma.data() + C};
  const double* btp[2] = {dbeta.data(), dbeta.data() + C};
  double* ggp[2] = {gg.data(), gg.data() + C};
  double* bgp[2] = {bg.data(), bg.data() + C};
  double* ggtp[2] = {ggt.data(), ggt.data() + C};
  double* bgtp[2] = {bgt.data(), bgt.data() + C};
  batch_norm_forward<double>(c.shape, c.epsilon, x.data(), gp, bp, y.data(), stats, dx.data(), gtp, btp, yt.data());
  batch_norm_backward<double>(c.shape, x.data(), gp, stats, yg.data(), xg.data(), ggp, bgp, dx.data(), gtp, dyg.data(),
                              xgt.data(), ggtp, bgtp);
  Vec fd_y = directional_difference(
      [&](double e) { return c.forward(axpy(x, e, dx), axpy(gamma, e, dgamma), axpy(beta, e, dbeta)); }, eps);
  CHECK_LESS(maml_test::relative_error(yt, fd_y), 1e-7, "batch norm forward tangent");
  Vec fd_grads = directional_difference(
      [&](double e) { return c.backward(axpy(x, e, dx), axpy(gamma, e, dgamma), axpy(beta, e, dbeta), axpy(yg, e, dyg)); },
      eps);
  Vec tangent_grads = xgt;
  tangent_grads.insert(tangent_grads.end(), ggt.begin(), ggt.end());
  tangent_grads.insert(tangent_grads.end(), bgt.begin(), bgt.end());
  CHECK_LESS(maml_test::relative_error(tangent_grads, fd_grads), 1e-7, "batch norm reverse-rule tangent");
}

// The fused batch norm + 2x2 max pool of cpu/batch_norm_pool.h against the two layers
// run apart: an odd width (the last column is dropped), a negative scale (the max of y is
// the min of x there) and ties in the windows, both directions and their tangents.
TEST(fused_batch_norm_and_max_pool_match_the_separate_layers) {
  const int h = 6, w = 7, C = 2;
  const BatchNormShape shape{2, 3, C, int64_t(h) * w};
  const size_t n = size_t(shape.tasks) * shape.batch * C * h * w, pn = n / (h * w) * (h / 2) * (w / 2);
  const size_t p = size_t(shape.tasks) * C;
  std::mt19937_64 rng(11);
  Vec x = maml_test::random_vector(n, rng, 2.0), gamma = maml_test::random_vector(p, rng), beta = maml_test::random_vector(p, rng);
  for (size_t i = 0; i < n; i += 5) x[i + 1 < n ? i + 1 : i] = x[i];  // ties
  gamma[1] = -std::abs(gamma[1]);
  gamma[2] = 0;  // every y equal: the pool's first candidate
  const Vec dx = maml_test::random_vector(n, rng), dgamma = maml_test::random_vector(p, rng), dbeta = maml_test::random_vector(p, rng);
  const Vec pg = maml_test::random_vector(pn, rng), pgt = maml_test::random_vector(pn, rng);
  const double* gp[2] = {gamma.data(), gamma.data() + C};
  const double* bp[2] = {beta.data(), beta.data() + C};
  const double* gtp[2] = {dgamma.data(), dgamma.data() + C};
  const double* btp[2] = {dbeta.data(), dbeta.data() + C};
  const int64_t planes = int64_t(n / (h * w));
  // apart
  Vec y(n), yt(n), pooled(pn), pooled_t(pn), xg(n), xgt(n), yg(n), ygt(n);
  std::vector<int32_t> argmax(pn);
  Vec gg(p), bg(p), ggt(p), bgt(p);
  double* ggp[2] = {gg.data(), gg.data() + C};
  double* bgp[2] = {bg.data(), bg.data() + C};
  double* ggtp[2] = {ggt.data(), ggt.data() + C};
  double* bgtp[2] = {bgt.data(), bgt.data() + C};
  BatchNormStatistics<double> stats;
  batch_norm_forward<double>(shape, 1e-3, x.data(), gp, bp, y.data(), stats, dx.data(), gtp, btp, yt.data());
  max_pool_forward<double>(planes, h, w, y.data(), pooled.data(), argmax.data());
  max_pool_gather<double>(planes, h, w, yt.data(), argmax.data(), pooled_t.data());
  max_pool_scatter<double>(planes, h, w, pg.data(), argmax.data(), yg.data());
  max_pool_scatter<double>(planes, h, w, pgt.data(), argmax.data(), ygt.data());
  batch_norm_backward<double>(shape, x.data(), gp, stats, yg.data(), xg.data(), ggp, bgp, dx.data(), gtp, ygt.data(),
                              xgt.data(), ggtp, bgtp);
  // fused
  Vec fpooled(pn), fpooled_t(pn), fxg(n, 1e300), fxgt(n, 1e300), fgg(p), fbg(p), fggt(p), fbgt(p);
  std::vector<int32_t> fargmax(pn);
  double* fggp[2] = {fgg.data(), fgg.data() + C};
  double* fbgp[2] = {fbg.data(), fbg.data() + C};
  double* fggtp[2] = {fggt.data(), fggt.data() + C};
  double* fbgtp[2] = {fbgt.data(), fbgt.data() + C};
  BatchNormStatistics<double> fstats;
  Vec x_at(pn);
  batch_norm_pool_forward<double>(shape, h, w, 1e-3, x.data(), gp, bp, fpooled.data(), fargmax.data(), x_at.data(), fstats,
                                  dx.data(), gtp, btp, fpooled_t.data());
  CHECK(fargmax == argmax);
  CHECK_LESS(maml_test::relative_error(fpooled, pooled), 1e-15, "fused pooled values");
  CHECK_LESS(maml_test::relative_error(fpooled_t, pooled_t), 1e-13, "fused pooled tangent");
  batch_norm_pool_backward<double>(shape, h, w, x.data(), gp, fstats, pg.data(), fargmax.data(), x_at.data(), fxg.data(),
                                   fggp, fbgp,
                                   dx.data(), gtp, pgt.data(), fxgt.data(), fggtp, fbgtp);
  CHECK_LESS(maml_test::relative_error(fxg, xg), 1e-13, "fused x_grad");
  CHECK_LESS(maml_test::relative_error(fxgt, xgt), 1e-13, "fused x_grad tangent");
  CHECK_LESS(maml_test::relative_error(fgg, gg) + maml_test::relative_error(fbg, bg), 1e-13, "fused gamma, beta grads");
  CHECK_LESS(maml_test::relative_error(fggt, ggt) + maml_test::relative_error(fbgt, bgt), 1e-13, "fused their tangents");
}

// The float forward, wide enough for the vector pool (8 outputs at a time) and its tail.
TEST(fused_batch_norm_and_max_pool_forward_in_float_matches_the_separate_layers) {
  const int h = 4, w = 22, C = 3;
  const BatchNormShape shape{1, 2, C, int64_t(h) * w};
  const size_t n = size_t(shape.batch) * C * h * w, pn = n / 4;
  std::mt19937_64 rng(5);
  const Vec xd = maml_test::random_vector(n, rng, 2.0);
  std::vector<float> x(xd.begin(), xd.end());
  for (size_t i = 0; i + 1 < n; i += 7) x[i + 1] = x[i];  // ties
  const float gamma[C] = {0.7f, -1.3f, 0.0f}, beta[C] = {0.1f, -0.2f, 0.3f};
  const float* gp[1] = {gamma};
  const float* bp[1] = {beta};
  std::vector<float> y(n), pooled(pn), fpooled(pn), x_at(pn);
  std::vector<int32_t> argmax(pn), fargmax(pn);
  BatchNormStatistics<float> stats, fstats;
  batch_norm_forward<float>(shape, 1e-3f, x.data(), gp, bp, y.data(), stats, nullptr, nullptr, nullptr, nullptr);
  max_pool_forward<float>(int64_t(n / (h * w)), h, w, y.data(), pooled.data(), argmax.data());
  batch_norm_pool_forward<float>(shape, h, w, 1e-3f, x.data(), gp, bp, fpooled.data(), fargmax.data(), x_at.data(),
                                 fstats, nullptr, nullptr, nullptr, nullptr);
  CHECK(fargmax == argmax);
  double worst = 0;
  for (size_t i = 0; i < pn; ++i) {
    worst = std::max(worst, double(std::abs(fpooled[i] - pooled[i])));
    CHECK(x_at[i] == x[size_t(i / (w / 2 * h / 2)) * h * w + fargmax[i]]);
  }
  CHECK_LESS(worst, 1e-6, "float fused pooled values");
}

TEST(softmax_cross_entropy_and_squared_error_rules_match_finite_differences) {
  std::mt19937_64 rng(3);
  const int n = 4, classes = 5;
  Vec z = maml_test::random_vector(n * classes, rng, 2.0), dz = maml_test::random_vector(n * classes, rng);
  std::vector<int32_t> labels{0, 3, 4, 1};
  const double w = 0.25, eps = 1e-6;
  Vec zg(z.size()), zgt(z.size());
  int correct;
  softmax_cross_entropy<double>(n, classes, w, z.data(), labels.data(), zg.data(), dz.data(), zgt.data(), &correct);
  auto loss = [&](double e) {
    Vec zz = axpy(z, e, dz);
    return Vec{softmax_cross_entropy<double>(n, classes, w, zz.data(), labels.data(), nullptr, nullptr, nullptr, nullptr)};
  };
  CHECK_CLOSE(dot(zg, dz), directional_difference(loss, eps)[0], 1e-8, 1e-12, "cross-entropy gradient");
  auto grad = [&](double e) {
    Vec zz = axpy(z, e, dz), g(z.size());
    softmax_cross_entropy<double>(n, classes, w, zz.data(), labels.data(), g.data(), nullptr, nullptr, nullptr);
    return g;
  };
  CHECK_LESS(maml_test::relative_error(zgt, directional_difference(grad, eps)), 1e-7, "cross-entropy gradient tangent");
  // hand-computed: logits (0, ln 3) with label 1 -> loss = ln(1 + 3) - ln 3
  Vec two{0.0, std::log(3.0)};
  int32_t one = 1;
  CHECK_CLOSE(softmax_cross_entropy<double>(1, 2, 1.0, two.data(), &one, nullptr, nullptr, nullptr, nullptr),
              std::log(4.0 / 3.0), 1e-14, 0, "cross-entropy by hand");

  Vec t = maml_test::random_vector(n, rng), y = maml_test::random_vector(n, rng), dy = maml_test::random_vector(n, rng);
  Vec yg(n), ygt(n);
  squared_error<double>(n, 1, w, y.data(), t.data(), yg.data(), dy.data(), ygt.data());
  auto se = [&](double e) {
    Vec yy = axpy(y, e, dy);
    return Vec{squared_error<double>(n, 1, w, yy.data(), t.data(), nullptr, nullptr, nullptr)};
  };
  CHECK_CLOSE(dot(yg, dy), directional_difference(se, eps)[0], 1e-8, 1e-12, "squared error gradient");
  for (int i = 0; i < n; ++i) CHECK_CLOSE(ygt[i], 2 * w * dy[i], 1e-15, 0, "squared error tangent");
}

TEST(max_pool_sends_ties_to_the_first_maximum_and_is_its_own_adjoint) {
  // one 4x4 plane: the top-left window is a four-way tie, the top-right a tie of two
  Vec x{1, 1, 0, 5, 1, 1, 5, 2, 3, 9, 4, 4, -1, 2, 4, 4};
  Vec y(4);
  std::vector<int32_t> index(4);
  max_pool_forward<double>(1, 4, 4, x.data(), y.data(), index.data());
  CHECK(y[0] == 1 && y[1] == 5 && y[2] == 9 && y[3] == 4);
  CHECK(index[0] == 0 && index[1] == 3 && index[2] == 9 && index[3] == 10);
  Vec yg{1, 2, 3, 4}, xg(16);
  max_pool_scatter<double>(1, 4, 4, yg.data(), index.data(), xg.data());
  CHECK(xg[0] == 1 && xg[1] == 0 && xg[4] == 0 && xg[3] == 2 && xg[6] == 0 && xg[9] == 3 && xg[10] == 4);
  // adjoint identity <y_grad, gather(x_tangent)> = <scatter(y_grad), x_tangent>
  std::mt19937_64 rng(1);
  Vec xt = maml_test::random_vector(16, rng), yt(4);
  max_pool_gather<double>(1, 4, 4, xt.data(), index.data(), yt.data());
  CHECK_CLOSE(dot(yg, yt), dot(xg, xt), 1e-14, 1e-14, "max pool adjoint");
}

// The float path compares eight windows at a time (AVX2 builds): same maxima and the
// same first-maximum indices as the window-by-window definition, ties and odd sizes included.
TEST(float_max_pool_matches_the_window_definition_with_ties) {
  for (int h : {21, 42, 38}) {
    const int w = h, oh = h / 2, ow = w / 2, planes = 3;
    std::mt19937_64 rng(h);
    std::vector<float> x(size_t(planes) * h * w);
    for (float& v : x) v = float(int(rng() % 4));  // few distinct values: many ties
    std::vector<float> y(size_t(planes) * oh * ow);
    std::vector<int32_t> index(y.size());
    max_pool_forward<float>(planes, h, w, x.data(), y.data(), index.data());
    for (int p = 0; p < planes; ++p)
      for (int oy = 0; oy < oh; ++oy)
        for (int ox = 0; ox < ow; ++ox) {
          const float* in = x.data() + size_t(p) * h * w;
          int best = 2 * oy * w + 2 * ox;
          for (int c : {best + 1, best + w, best + w + 1})
            if (in[c] > in[best]) best = c;
          const size_t o = (size_t(p) * oh + oy) * ow + ox;
          CHECK(y[o] == in[best] && index[o] == best);
        }
  }
}

TEST(linear_and_spatial_mean_reverse_rules_are_adjoints_of_their_tangents) {
  std::mt19937_64 rng(5);
  const LinearShape s{2, 3, 4, 5};
  Vec x = maml_test::random_vector(2 * 3 * 4, rng), w = maml_test::random_vector(2 * 5 * 4, rng);
  Vec xt = maml_test::random_vector(x.size(), rng), wt = maml_test::random_vector(w.size(), rng);
  Vec yg = maml_test::random_vector(2 * 3 * 5, rng);
  const double* wp[2] = {w.data(), w.data() + 20};
  const double* wtp[2] = {wt.data(), wt.data() + 20};
  Vec yt(yg.size()), xg(x.size()), wg(w.size());
  double* wgp[2] = {wg.data(), wg.data() + 20};
  // y_tangent = x_tangent W^T + x W_tangent^T
  linear_forward<double>(s, xt.data(), wp, nullptr, yt.data(), false);
  linear_forward<double>(s, x.data(), wtp, nullptr, yt.data(), true);
  linear_input_grad<double>(s, yg.data(), wp, xg.data(), false);
  linear_weight_grad<double>(s, x.data(), yg.data(), wgp, nullptr, false);
  CHECK_CLOSE(dot(yg, yt), dot(xg, xt) + dot(wg, wt), 1e-13, 1e-13, "linear adjoint identity");
  // hand-computed linear: x = (1, 2), W = [[3, 4]], b = 0.5 -> 11.5
  Vec x1{1, 2}, w1{3, 4}, b1{0.5}, y1(1);
  const double* w1p[1] = {w1.data()};
  const double* b1p[1] = {b1.data()};
  linear_forward<double>(LinearShape{1, 1, 2, 1}, x1.data(), w1p, b1p, y1.data(), false);
  CHECK_CLOSE(y1[0], 11.5, 1e-15, 0, "linear by hand");
  Vec m = maml_test::random_vector(12, rng), mg = maml_test::random_vector(3, rng), my(3), mx(12);
  spatial_mean_forward<double>(3, 4, m.data(), my.data());
  spatial_mean_backward<double>(3, 4, mg.data(), mx.data());
  CHECK_CLOSE(dot(mg, my), dot(mx, m), 1e-13, 1e-13, "spatial mean adjoint");
}
