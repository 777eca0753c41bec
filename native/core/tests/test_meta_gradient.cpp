// Whole meta-gradients against finite differences of the meta-loss (float64), the
// first-order rule, float32 against float64, and the scalar case of MATH.md.
#include "check.h"
#include "fixtures.h"

using namespace maml;
using maml_test::RandomTasks;

namespace {

std::vector<double> axpy(const std::vector<double>& x, double a, const std::vector<double>& d) {
  std::vector<double> out(x);
  for (size_t i = 0; i < x.size(); ++i) out[i] += a * d[i];
  return out;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / double(v.size());
}

// The meta-loss: mean over tasks of the query loss after the inner loop.
double meta_loss(MetaLearner<double>& learner, const std::vector<double>& theta, const TaskBatch<double>& batch,
                 InnerLoop loop) {
  loop.second_order = false;
  loop.measure_before = false;
  return mean(learner.meta_gradient(theta.data(), batch, loop).query_loss_after);
}

}  // namespace

TEST(second_order_meta_gradients_match_finite_differences_of_the_meta_loss) {
  for (const ArchitectureOptions& options : maml_test::small_architectures())
    for (int steps : {1, 3})
      for (bool sum_over_shots : {false, true}) {
        const Architecture arch = make_architecture(options);
        MetaLearner<double> learner(arch);
        const int shots = 2, support = arch.outputs * shots, query = arch.outputs * 2;
        // 'mean' weighs by 1/examples, 'sum-over-shots' by 1/shots (MATH.md)
        const double ws = sum_over_shots ? 1.0 / shots : 1.0 / support, wq = sum_over_shots ? 1.0 / shots : 1.0 / query;
        RandomTasks<double> tasks(arch, 3, support, query, 100 + steps, ws, wq);
        InnerLoop loop;
        loop.steps = steps;
        loop.step_sizes = {arch.name == "sinusoid" ? 0.01 : 0.1};
        loop.second_order = true;
        std::vector<double> theta = initialize_parameters<double>(arch, 5);
        const MetaGradient<double> meta = learner.meta_gradient(theta.data(), tasks.batch, loop);
        std::mt19937_64 rng(23 + steps);
        int checked = 0;
        for (int attempt = 0; attempt < 20 && checked < 2; ++attempt) {
          const auto d = maml_test::random_vector(theta.size(), rng);
          double gd = 0;
          for (size_t i = 0; i < d.size(); ++i) gd += meta.gradient[i] * d[i];
          auto fd = maml_test::trusted_derivative(
              [&](double e) { return meta_loss(learner, axpy(theta, e, d), tasks.batch, loop); }, 1e-6);
          if (!fd) continue;
          CHECK_CLOSE(gd, *fd, 1e-6, 1e-9,
                      maml_test::describe(options) + " K=" + std::to_string(steps) +
                          (sum_over_shots ? " sum-over-shots" : " mean") + " meta-gradient along a direction");
          ++checked;
        }
        CHECK(checked >= 1);
      }
}

TEST(first_order_is_the_query_gradient_at_the_adapted_weights_and_differs_from_second_order) {
  for (const ArchitectureOptions& options : maml_test::small_architectures()) {
    const Architecture arch = make_architecture(options);
    MetaLearner<double> learner(arch);
    const int support = arch.outputs * 2, query = arch.outputs * 3;
    RandomTasks<double> tasks(arch, 2, support, query, 7, 1.0 / support, 1.0 / query);
    InnerLoop loop;
    loop.steps = 3;
    loop.step_sizes = {0.1};
    loop.second_order = false;
    std::vector<double> theta = initialize_parameters<double>(arch, 8);
    const MetaGradient<double> first = learner.meta_gradient(theta.data(), tasks.batch, loop);
    const Adaptation<double> adapted = learner.adapt_and_evaluate(theta.data(), tasks.batch, loop, true, false);
    // gradient of the query loss at each task's theta_K: zero inner steps with the query as support
    std::vector<double> expected(theta.size(), 0.0);
    for (int t = 0; t < 2; ++t) {
      TaskBatch<double> one;
      one.tasks = 1;
      one.support = one.query = tasks.batch.query;
      one.query.inputs += int64_t(t) * query * arch.input.size();
      one.query.labels += t * query;
      one.query.targets += int64_t(t) * query * arch.outputs;
      one.support = one.query;
      InnerLoop none;
      none.steps = 0;
      none.second_order = false;
      const auto g = learner.meta_gradient(adapted.adapted.data() + t * arch.parameter_count, one, none).gradient;
      for (size_t i = 0; i < g.size(); ++i) expected[i] += g[i] / 2;
    }
    CHECK_LESS(maml_test::relative_error(first.gradient, expected), 1e-12, maml_test::describe(options) + " first order");
    loop.second_order = true;
    const MetaGradient<double> second = learner.meta_gradient(theta.data(), tasks.batch, loop);
    CHECK(maml_test::relative_error(first.gradient, second.gradient) > 1e-3);
    // the query loss after adaptation agrees between the two entry points
    CHECK_CLOSE(first.query_loss_after[1], adapted.query_loss[1 * 4 + 3], 1e-12, 0, "query loss after 3 steps");
    CHECK_CLOSE(first.query_loss_before[0], adapted.query_loss[0], 1e-12, 0, "query loss before adaptation");
  }
}

TEST(scalar_linear_model_of_math_md_first_order_minus_0_8_second_order_minus_0_64) {
  ArchitectureOptions o;
  o.name = "sinusoid";
  o.ways = 1;
  o.hidden_given = true;  // no hidden layer: y = w x + b
  const Architecture arch = make_architecture(o);
  CHECK(arch.parameter_count == 2);
  MetaLearner<double> learner(arch);
  std::vector<double> x{1}, t{1};
  TaskBatch<double> batch;
  batch.tasks = 1;
  batch.support = {1, x.data(), nullptr, t.data(), 1.0};
  batch.query = batch.support;
  std::vector<double> theta{0.5, 0.0};  // head.weight, head.bias
  InnerLoop loop;
  loop.steps = 1;
  loop.step_sizes = {0.1, 0.0};  // per tensor: the bias stays at 0, as in the scalar model
  loop.second_order = false;
  CHECK_CLOSE(learner.meta_gradient(theta.data(), batch, loop).gradient[0], -0.8, 1e-14, 0, "first order");
  loop.second_order = true;
  const auto second = learner.meta_gradient(theta.data(), batch, loop);
  CHECK_CLOSE(second.gradient[0], -0.64, 1e-14, 0, "second order");
  // d/d alpha: -<v_1, g_0> = -(-0.8)(-1) = -0.8 for the weight's step size
  CHECK_CLOSE(second.step_size_gradient[0], -0.8, 1e-14, 0, "step size gradient");
}

TEST(per_tensor_step_size_gradient_matches_finite_differences) {
  const Architecture arch = make_architecture(maml_test::small_architectures()[0]);
  MetaLearner<double> learner(arch);
  RandomTasks<double> tasks(arch, 2, 6, 6, 31, 1.0 / 6, 1.0 / 6);
  std::vector<double> theta = initialize_parameters<double>(arch, 2);
  InnerLoop loop;
  loop.steps = 2;
  loop.step_sizes.assign(2 * arch.parameters.size(), 0.1);
  loop.second_order = true;
  const auto meta = learner.meta_gradient(theta.data(), tasks.batch, loop);
  const size_t tensor = arch.parameters.size() - 2;  // head.weight at step 0
  auto f = [&](double e) {
    InnerLoop moved = loop;
    moved.step_sizes[tensor] += e;
    return meta_loss(learner, theta, tasks.batch, moved);
  };
  auto fd = maml_test::trusted_derivative(f, 1e-6);
  CHECK(fd.has_value());
  CHECK_CLOSE(meta.step_size_gradient[tensor], *fd, 1e-6, 1e-10, "step-size gradient of head.weight");
}

TEST(float32_meta_gradient_agrees_with_float64) {
  for (const ArchitectureOptions& options : maml_test::small_architectures()) {
    const Architecture arch = make_architecture(options);
    MetaLearner<double> learner64(arch);
    MetaLearner<float> learner32(arch);
    const int support = arch.outputs * 2, query = arch.outputs * 2;
    RandomTasks<double> t64(arch, 2, support, query, 77, 0.5, 0.5);
    RandomTasks<float> t32(arch, 2, support, query, 77, 0.5, 0.5);
    InnerLoop loop;
    loop.steps = 2;
    loop.step_sizes = {0.05};
    for (bool second : {false, true}) {
      loop.second_order = second;
      const auto theta64 = initialize_parameters<double>(arch, 1);
      const auto theta32 = initialize_parameters<float>(arch, 1);
      const auto g64 = learner64.meta_gradient(theta64.data(), t64.batch, loop).gradient;
      const auto g32f = learner32.meta_gradient(theta32.data(), t32.batch, loop).gradient;
      std::vector<double> g32(g32f.begin(), g32f.end());
      CHECK_LESS(maml_test::relative_error(g32, g64), 1e-4, maml_test::describe(options) + " float32 vs float64");
    }
  }
}

TEST(meta_gradient_is_independent_of_the_task_group_size) {
  const Architecture arch = make_architecture(maml_test::small_architectures()[2]);
  MetaLearner<double> all_at_once(arch, 1e-3, 1e12), one_by_one(arch, 1e-3, 1.0);
  RandomTasks<double> tasks(arch, 4, 6, 6, 3, 0.5, 0.5);
  InnerLoop loop;
  loop.steps = 2;
  loop.step_sizes = {0.1};
  const auto theta = initialize_parameters<double>(arch, 4);
  const auto a = all_at_once.meta_gradient(theta.data(), tasks.batch, loop);
  const auto b = one_by_one.meta_gradient(theta.data(), tasks.batch, loop);
  CHECK(a.task_group == 4 && b.task_group == 1);
  CHECK_LESS(maml_test::relative_error(a.gradient, b.gradient), 1e-13, "grouped vs one task at a time");
  // room for 3 of the 4 tasks (second order: 6 query + 6 support examples each) runs 2 + 2
  const double per_task = Network<double>::bytes_per_example(arch, false) * (6 + 6);
  MetaLearner<double> room_for_three(arch, 1e-3, 3.5 * per_task);
  const auto c = room_for_three.meta_gradient(theta.data(), tasks.batch, loop);
  CHECK(c.task_group == 2);
  CHECK_LESS(maml_test::relative_error(c.gradient, b.gradient), 1e-13, "groups of two vs one task at a time");
}

TEST(initialisation_is_seeded_glorot_with_the_normal_omniglot_head) {
  ArchitectureOptions o;
  o.name = "omniglot";
  o.ways = 5;
  const Architecture arch = make_architecture(o);
  const auto a = initialize_parameters<double>(arch, 1), b = initialize_parameters<double>(arch, 1);
  const auto c = initialize_parameters<double>(arch, 2);
  CHECK(a == b && a != c);
  const ParameterInfo* conv2 = arch.find("conv2.weight");
  const ParameterInfo* head = arch.find("head.weight");
  const ParameterInfo* bias = arch.find("conv1.bias");
  CHECK(conv2 && head && bias && arch.find("bn4.bias"));
  CHECK(conv2->shape == std::vector<int64_t>({64, 64, 3, 3}) && head->shape == std::vector<int64_t>({5, 64}));
  const double limit = std::sqrt(6.0 / (64 * 9 + 64 * 9));
  double max_abs = 0, sum_sq = 0;
  for (int64_t i = 0; i < conv2->size; ++i) max_abs = std::max(max_abs, std::abs(a[conv2->offset + i]));
  CHECK(max_abs <= limit && max_abs > 0.98 * limit);
  for (int64_t i = 0; i < head->size; ++i) sum_sq += a[head->offset + i] * a[head->offset + i];
  CHECK_CLOSE(std::sqrt(sum_sq / head->size), 1.0, 0.3, 0, "head std");
  for (int64_t i = 0; i < bias->size; ++i) CHECK(a[bias->offset + i] == 0);
  CHECK(!arch.find("bn1.bias")->adapted && arch.find("conv1.weight")->adapted);
}
