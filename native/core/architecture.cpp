#include "architecture.h"

#include <stdexcept>

namespace maml {

void conv_geometry(int in_size, int stride, Padding padding, int* out_size, int* pad_before) {
  if (padding == Padding::TensorFlowSame) {
    const int out = (in_size + stride - 1) / stride;
    const int total = std::max((out - 1) * stride + 3 - in_size, 0);
    *out_size = out;
    *pad_before = total / 2;
  } else {
    *out_size = (in_size + 2 - 3) / stride + 1;
    *pad_before = 1;
  }
}

namespace {

struct Builder {
  Architecture arch;
  Shape3 current;

  int64_t add_parameter(const std::string& name, std::vector<int64_t> shape, bool adapted, ParameterInfo::Init init,
                        double fan_in = 0, double fan_out = 0) {
    ParameterInfo p;
    p.name = name;
    p.shape = shape;
    p.size = 1;
    for (int64_t d : shape) p.size *= d;
    p.offset = arch.parameter_count;
    p.adapted = adapted;
    p.init = init;
    p.fan_in = fan_in;
    p.fan_out = fan_out;
    arch.parameter_count += p.size;
    arch.parameters.push_back(p);
    return p.offset;
  }

  void conv(int index, int filters, int stride, Padding padding) {
    Layer l{LayerKind::Conv3x3, current, current};
    int out_h, out_w;
    conv_geometry(current.height, stride, padding, &out_h, &l.pad_top);
    conv_geometry(current.width, stride, padding, &out_w, &l.pad_left);
    l.stride = stride;
    l.out = {filters, out_h, out_w};
    const std::string prefix = "conv" + std::to_string(index);
    l.weight = add_parameter(prefix + ".weight", {filters, current.channels, 3, 3}, true,
                             ParameterInfo::Init::GlorotUniform, current.channels * 9.0, filters * 9.0);
    l.bias = add_parameter(prefix + ".bias", {filters}, true, ParameterInfo::Init::Zero);
    arch.layers.push_back(l);
    current = l.out;
  }

  void batch_norm(int index, bool scale) {
    Layer l{LayerKind::BatchNorm, current, current};
    l.has_scale = scale;
    const std::string prefix = "bn" + std::to_string(index);
    if (scale) l.weight = add_parameter(prefix + ".weight", {current.channels}, false, ParameterInfo::Init::One);
    l.bias = add_parameter(prefix + ".bias", {current.channels}, false, ParameterInfo::Init::Zero);
    arch.layers.push_back(l);
  }

  void simple(LayerKind kind) {
    Layer l{kind, current, current};
    if (kind == LayerKind::MaxPool2) l.out = {current.channels, current.height / 2, current.width / 2};
    if (kind == LayerKind::SpatialMean) l.out = {current.channels, 1, 1};
    arch.layers.push_back(l);
    current = l.out;
  }

  void linear(const std::string& name, int outputs, ParameterInfo::Init weight_init, double init_std = 1) {
    Layer l{LayerKind::Linear, current, {outputs, 1, 1}};
    const int64_t features = current.size();
    l.weight = add_parameter(name + ".weight", {outputs, features}, true, weight_init, double(features), double(outputs));
    arch.parameters.back().init_std = init_std;
    l.bias = add_parameter(name + ".bias", {outputs}, true, ParameterInfo::Init::Zero);
    arch.layers.push_back(l);
    current = l.out;
  }
};

}  // namespace

Architecture make_architecture(const ArchitectureOptions& o) {
  Builder b;
  Architecture& a = b.arch;
  a.name = o.name;
  a.outputs = o.ways;
  if (o.ways < 1) throw std::invalid_argument("ways must be at least 1, got " + std::to_string(o.ways));
  if (o.name == "omniglot" || o.name == "miniimagenet") {
    const bool omniglot = o.name == "omniglot";
    const int size = o.image_size > 0 ? o.image_size : (omniglot ? 28 : 84);
    const int channels = o.channels > 0 ? o.channels : (omniglot ? 1 : 3);
    const int filters = o.filters > 0 ? o.filters : (omniglot ? 64 : 32);
    a.input = {channels, size, size};
    b.current = a.input;
    for (int block = 1; block <= 4; ++block) {
      // Omniglot downsamples by stride-2 convolutions, MiniImagenet by 2x2 max pooling.
      b.conv(block, filters, omniglot ? 2 : 1, o.padding);
      b.batch_norm(block, o.batch_norm_scale);
      b.simple(LayerKind::ReLU);
      if (!omniglot) b.simple(LayerKind::MaxPool2);
    }
    if (omniglot) b.simple(LayerKind::SpatialMean);
    const bool normal_head = omniglot && !o.glorot_head;
    b.linear("head", o.ways, normal_head ? ParameterInfo::Init::Normal : ParameterInfo::Init::GlorotUniform);
  } else if (o.name == "mlp" || o.name == "sinusoid") {
    const bool sinusoid = o.name == "sinusoid";
    std::vector<int> hidden = o.hidden;
    if (!o.hidden_given) hidden = sinusoid ? std::vector<int>{40, 40} : std::vector<int>{256, 128, 64, 64};
    const int size = o.image_size > 0 ? o.image_size : 28;
    a.input = sinusoid ? Shape3{1, 1, 1} : Shape3{o.channels > 0 ? o.channels : 1, size, size};
    b.current = a.input;
    for (size_t i = 0; i < hidden.size(); ++i) {
      b.linear("fc" + std::to_string(i + 1), hidden[i], ParameterInfo::Init::GlorotUniform);
      if (!sinusoid) b.batch_norm(int(i + 1), o.batch_norm_scale);
      b.simple(LayerKind::ReLU);
    }
    b.linear("head", o.ways, ParameterInfo::Init::GlorotUniform);
    if (sinusoid) a.loss = LossKind::SquaredError;
  } else {
    throw std::invalid_argument("unknown architecture '" + o.name +
                                "': expected omniglot, miniimagenet, mlp or sinusoid");
  }
  a.adapted_mask.assign(a.parameter_count, 0);
  for (const ParameterInfo& p : a.parameters)
    if (p.adapted)
      for (int64_t i = 0; i < p.size; ++i) a.adapted_mask[p.offset + i] = 1;
  return a;
}

const ParameterInfo* Architecture::find(const std::string& parameter_name) const {
  for (const ParameterInfo& p : parameters)
    if (p.name == parameter_name) return &p;
  return nullptr;
}

double Architecture::forward_multiply_adds() const {
  double total = 0;
  for (const Layer& l : layers) {
    if (l.kind == LayerKind::Conv3x3) total += double(l.out.size()) * l.in.channels * 9;
    if (l.kind == LayerKind::Linear) total += double(l.in.size()) * l.out.channels;
  }
  return total;
}

}  // namespace maml
