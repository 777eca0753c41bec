// Networks as data: an architecture is a list of layers plus the table of parameters
// they read from one flat vector. Nothing else in the engine knows which data set a
// network belongs to.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace maml {

enum class LayerKind { Conv3x3, BatchNorm, ReLU, MaxPool2, SpatialMean, Linear };
enum class Padding { TensorFlowSame, Symmetric };
enum class LossKind { SoftmaxCrossEntropy, SquaredError };

struct Shape3 {
  int channels, height, width;
  int64_t size() const { return int64_t(channels) * height * width; }
};

struct Layer {
  LayerKind kind;
  Shape3 in, out;
  int stride = 1;           // conv
  int pad_top = 0, pad_left = 0;  // conv: rows/columns of zeros before the image
  bool has_scale = false;   // batch norm: learned gamma (the original has none)
  // offsets into the flat parameter vector, -1 where absent
  int64_t weight = -1, bias = -1;
};

struct ParameterInfo {
  std::string name;           // PyTorch style: conv1.weight, bn1.bias, head.weight
  std::vector<int64_t> shape;
  int64_t offset = 0, size = 0;
  bool adapted = true;        // updated by the inner loop (batch-norm parameters are not)
  enum class Init { GlorotUniform, Zero, One, Normal } init = Init::Zero;
  double fan_in = 0, fan_out = 0, init_std = 1;
};

struct ArchitectureOptions {
  std::string name = "omniglot";  // omniglot | miniimagenet | mlp | sinusoid
  int ways = 5;                   // output classes (sinusoid: outputs, 1)
  Padding padding = Padding::TensorFlowSame;
  int filters = -1;               // -1: the paper's (64 omniglot, 32 miniimagenet)
  bool batch_norm_scale = false;
  bool glorot_head = false;       // omniglot's paper head is normal(0, 1); this switches to Glorot
  int image_size = -1;            // -1: the paper's (28, 84); smaller for tests
  int channels = -1;              // -1: the paper's (1, 3)
  std::vector<int> hidden;        // mlp / sinusoid hidden widths, used when hidden_given
  bool hidden_given = false;      // false: the paper's widths (an empty list given means no hidden layer)
};

struct Architecture {
  std::string name;
  Shape3 input;
  int outputs = 0;
  LossKind loss = LossKind::SoftmaxCrossEntropy;
  std::vector<Layer> layers;
  std::vector<ParameterInfo> parameters;
  int64_t parameter_count = 0;
  std::vector<uint8_t> adapted_mask;  // per element of the flat vector

  const ParameterInfo* find(const std::string& parameter_name) const;
  // Multiply-adds of one forward pass of one example (conv, linear); the bench counts FLOPs from it.
  double forward_multiply_adds() const;
};

Architecture make_architecture(const ArchitectureOptions& options);

// TensorFlow 'SAME': out = ceil(in / stride), total padding split with the smaller half before.
// Symmetric (PyTorch padding=1): one row/column of zeros on each side.
void conv_geometry(int in_size, int stride, Padding padding, int* out_size, int* pad_before);

}  // namespace maml
