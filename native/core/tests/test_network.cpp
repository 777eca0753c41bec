// Whole-network gradients and Hessian-vector products (forward-over-reverse) against
// finite differences, for every architecture at small sizes, in float64.
#include "check.h"
#include "fixtures.h"
#include "network.h"

using namespace maml;
using maml_test::RandomTasks;

namespace {

struct Pass {
  Network<double>& net;
  const PassData<double>& data;
  int64_t P;
  double loss(const std::vector<double>& theta) {
    const double* p = theta.data();
    double l;
    PassResult<double> r;
    r.losses = &l;
    net.run(data, &p, nullptr, r);
    return l;
  }
  std::vector<double> gradient(const std::vector<double>& theta, const std::vector<double>* direction = nullptr,
                               std::vector<double>* hvp = nullptr) {
    std::vector<double> g(P);
    const double* p = theta.data();
    const double* d = direction ? direction->data() : nullptr;
    double* gp = g.data();
    double* hp = hvp ? hvp->data() : nullptr;
    PassResult<double> r;
    r.grads = &gp;
    r.grad_tangents = hvp ? &hp : nullptr;
    net.run(data, &p, direction ? &d : nullptr, r);
    return g;
  }
};

std::vector<double> axpy(const std::vector<double>& x, double a, const std::vector<double>& d) {
  std::vector<double> out(x);
  for (size_t i = 0; i < x.size(); ++i) out[i] += a * d[i];
  return out;
}

}  // namespace

TEST(network_gradients_and_hessian_vector_products_match_finite_differences) {
  for (const ArchitectureOptions& options : maml_test::small_architectures()) {
    const Architecture arch = make_architecture(options);
    Network<double> net(arch);
    RandomTasks<double> tasks(arch, 1, 6, 6, 11, 1.0 / 6, 1.0 / 6);
    PassData<double> data{1, 6, tasks.support_inputs.data(), tasks.support_labels.data(), tasks.support_targets.data(),
                          1.0 / 6};
    Pass pass{net, data, arch.parameter_count};
    std::vector<double> theta = initialize_parameters<double>(arch, 3);
    std::mt19937_64 rng(17);
    // a non-zero batch-norm offset, so its gradient is exercised away from the origin
    for (const ParameterInfo& p : arch.parameters)
      if (!p.adapted)
        for (int64_t i = 0; i < p.size; ++i) theta[p.offset + i] += 0.1 * double(i % 3);
    const std::vector<double> g = pass.gradient(theta);
    int checked = 0;
    for (int attempt = 0; attempt < 20 && checked < 3; ++attempt) {
      const auto d = maml_test::random_vector(theta.size(), rng);
      double gd = 0;
      for (size_t i = 0; i < d.size(); ++i) gd += g[i] * d[i];
      auto fd = maml_test::trusted_derivative([&](double e) { return pass.loss(axpy(theta, e, d)); }, 1e-6);
      if (!fd) continue;
      CHECK_CLOSE(gd, *fd, 1e-6, 1e-9, maml_test::describe(options) + " gradient along a direction");
      // H d by forward-over-reverse against the central difference of the gradient
      std::vector<double> hvp(theta.size());
      const std::vector<double> g_again = pass.gradient(theta, &d, &hvp);
      CHECK_LESS(maml_test::relative_error(g_again, g), 1e-14, "primal gradient of the tangent pass");
      const auto gp = pass.gradient(axpy(theta, 1e-6, d)), gm = pass.gradient(axpy(theta, -1e-6, d));
      std::vector<double> fd_hvp(theta.size());
      for (size_t i = 0; i < fd_hvp.size(); ++i) fd_hvp[i] = (gp[i] - gm[i]) / 2e-6;
      CHECK_LESS(maml_test::relative_error(hvp, fd_hvp), 1e-6, maml_test::describe(options) + " Hessian-vector product");
      ++checked;
    }
    CHECK(checked >= 2);
  }
}

TEST(hessian_vector_product_is_symmetric) {
  // <a, H b> = <b, H a>: the tangent rules compose into a symmetric operator
  const Architecture arch = make_architecture(maml_test::small_architectures()[2]);
  Network<double> net(arch);
  RandomTasks<double> tasks(arch, 1, 5, 5, 2, 0.2, 0.2);
  PassData<double> data{1, 5, tasks.support_inputs.data(), tasks.support_labels.data(), nullptr, 0.2};
  Pass pass{net, data, arch.parameter_count};
  std::vector<double> theta = initialize_parameters<double>(arch, 9);
  std::mt19937_64 rng(4);
  const auto a = maml_test::random_vector(theta.size(), rng), b = maml_test::random_vector(theta.size(), rng);
  std::vector<double> ha(theta.size()), hb(theta.size());
  pass.gradient(theta, &a, &ha);
  pass.gradient(theta, &b, &hb);
  double ahb = 0, bha = 0;
  for (size_t i = 0; i < a.size(); ++i) ahb += a[i] * hb[i], bha += b[i] * ha[i];
  CHECK_CLOSE(ahb, bha, 1e-10, 1e-12, "<a, H b> vs <b, H a>");
}
