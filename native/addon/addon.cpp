// The N-API binding: a thin, validating layer over native/core. One Engine per network;
// metaGradient and adaptAndEvaluate run on a worker thread (the event loop keeps going)
// and resolve a Promise. Typed arrays in, typed arrays out; every shape or value problem
// becomes a JS error that says what was expected and what came.
#include <napi.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "architecture.h"
#include "compute_thread.h"
#include "cpu/parallel.h"
#include "image_gather.h"
#include "meta_learner.h"

#ifdef MAML_HAVE_CUDA
#include "cuda/cuda_network.h"
#include "cuda/device.h"
#endif

namespace {

using maml::Architecture;

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string expected_got(const std::string& what, const std::string& expected, const std::string& got) {
  return what + ": expected " + expected + ", got " + got;
}

std::string type_of(const Napi::Value& v) {
  if (v.IsTypedArray()) {
    switch (v.As<Napi::TypedArray>().TypedArrayType()) {
      case napi_float32_array: return "Float32Array";
      case napi_float64_array: return "Float64Array";
      case napi_int32_array: return "Int32Array";
      case napi_uint8_array: return "Uint8Array";
      default: return "another typed array";
    }
  }
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsNumber()) return "a number";
  if (v.IsString()) return "a string";
  if (v.IsArray()) return "an array";
  if (v.IsObject()) return "an object";
  return "something else";
}

double number_field(const Napi::Object& o, const char* name, double fallback, bool required = false) {
  Napi::Value v = o.Get(name);
  if (v.IsUndefined()) {
    if (required) throw Failure(std::string("option '") + name + "' is required");
    return fallback;
  }
  if (!v.IsNumber()) throw Failure(expected_got(std::string("option '") + name + "'", "a number", type_of(v)));
  return v.As<Napi::Number>().DoubleValue();
}

// Copies a float typed array (either precision) into T, checking its length.
template <class T>
std::vector<T> float_array(const Napi::Value& v, size_t expected, const std::string& what) {
  if (!v.IsTypedArray()) throw Failure(expected_got(what, "a Float32Array or Float64Array", type_of(v)));
  auto ta = v.As<Napi::TypedArray>();
  if (ta.ElementLength() != expected)
    throw Failure(expected_got(what, std::to_string(expected) + " values", std::to_string(ta.ElementLength())));
  std::vector<T> out(expected);
  if (ta.TypedArrayType() == napi_float32_array) {
    const float* p = v.As<Napi::Float32Array>().Data();
    for (size_t i = 0; i < expected; ++i) out[i] = T(p[i]);
  } else if (ta.TypedArrayType() == napi_float64_array) {
    const double* p = v.As<Napi::Float64Array>().Data();
    for (size_t i = 0; i < expected; ++i) out[i] = T(p[i]);
  } else {
    throw Failure(expected_got(what, "a Float32Array or Float64Array", type_of(v)));
  }
  return out;
}

template <class I, napi_typedarray_type kind>
std::vector<I> integer_array(const Napi::Value& v, size_t expected, const std::string& what, const char* type_name) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kind)
    throw Failure(expected_got(what, std::string("an ") + type_name, type_of(v)));
  auto ta = v.As<Napi::TypedArrayOf<I>>();
  if (ta.ElementLength() != expected)
    throw Failure(expected_got(what, std::to_string(expected) + " values", std::to_string(ta.ElementLength())));
  return std::vector<I>(ta.Data(), ta.Data() + expected);
}

template <class T>
Napi::Value to_js(Napi::Env env, const std::vector<T>& v) {
  if constexpr (std::is_same_v<T, float>) {
    auto out = Napi::Float32Array::New(env, v.size());
    std::copy(v.begin(), v.end(), out.Data());
    return out;
  } else {
    auto out = Napi::Float64Array::New(env, v.size());
    std::copy(v.begin(), v.end(), out.Data());
    return out;
  }
}

template <class T>
Napi::Value to_js_double(Napi::Env env, const std::vector<T>& v) {
  auto out = Napi::Float64Array::New(env, v.size());
  std::copy(v.begin(), v.end(), out.Data());
  return out;
}

// One set (support or query) of a meta-batch, owned, in the engine's precision.
template <class T>
struct OwnedSet {
  int size = 0;
  T loss_weight = 1;
  std::vector<T> images;              // given directly
  std::vector<int32_t> indices;       // or gathered from the cache in the worker
  std::vector<uint8_t> rotations;
  std::vector<int32_t> labels;
  std::vector<T> targets;

  maml::ExampleSet<T> view() const {
    return {size, images.data(), labels.empty() ? nullptr : labels.data(), targets.empty() ? nullptr : targets.data(),
            loss_weight};
  }
};

template <class T>
OwnedSet<T> read_set(const Napi::Object& o, const Architecture& a, int tasks, const char* name, bool have_cache) {
  OwnedSet<T> s;
  const std::string where = std::string("batch.") + name;
  s.size = int(number_field(o, "size", 0, true));
  if (s.size <= 0) throw Failure(expected_got(where + ".size", "a positive number of examples per task", std::to_string(s.size)));
  s.loss_weight = T(number_field(o, "lossWeight", 1.0 / s.size));
  const size_t examples = size_t(tasks) * s.size;
  if (!o.Get("images").IsUndefined()) {
    s.images = float_array<T>(o.Get("images"), examples * a.input.size(),
                              where + ".images ([tasks x size x " + std::to_string(a.input.channels) + " x " +
                                  std::to_string(a.input.height) + " x " + std::to_string(a.input.width) + "])");
  } else if (!o.Get("indices").IsUndefined()) {
    if (!have_cache) throw Failure(where + ".indices given but no image cache is set: call setImageCache first");
    s.indices = integer_array<int32_t, napi_int32_array>(o.Get("indices"), examples, where + ".indices", "Int32Array");
    if (!o.Get("rotations").IsUndefined())
      s.rotations = integer_array<uint8_t, napi_uint8_array>(o.Get("rotations"), examples, where + ".rotations", "Uint8Array");
  } else {
    throw Failure(where + ": give either images (Float32Array) or indices into the image cache (Int32Array)");
  }
  if (a.loss == maml::LossKind::SoftmaxCrossEntropy) {
    s.labels = integer_array<int32_t, napi_int32_array>(o.Get("labels"), examples, where + ".labels", "Int32Array");
  } else {
    s.targets = float_array<T>(o.Get("targets"), examples * a.outputs, where + ".targets");
  }
  return s;
}

// (..., count, channels, height, width, invert): the arguments both cache setters share.
void read_cache_shape(const Napi::CallbackInfo& info, maml::ImageCache& cache) {
  cache.count = info[1].ToNumber().Int64Value();
  cache.channels = info[2].ToNumber().Int32Value();
  cache.height = info[3].ToNumber().Int32Value();
  cache.width = info[4].ToNumber().Int32Value();
  cache.invert = info[5].ToBoolean().Value();
}

struct CacheHolder {
  maml::ImageCache cache;
  Napi::Reference<Napi::Uint8Array> pixels;  // in memory, or
  std::unique_ptr<maml::PixelFile> file;     // read by position from disk
};

maml::InnerLoop read_loop(const Napi::Value& value, const Architecture& a) {
  if (!value.IsObject()) throw Failure(expected_got("inner-loop options", "an object {steps, stepSizes, order}", type_of(value)));
  const Napi::Object o = value.As<Napi::Object>();
  maml::InnerLoop loop;
  loop.steps = int(number_field(o, "steps", 1));
  if (loop.steps < 0) throw Failure(expected_got("steps", "0 or more inner steps", std::to_string(loop.steps)));
  const int order = int(number_field(o, "order", 2));
  if (order != 1 && order != 2) throw Failure(expected_got("order", "1 or 2", std::to_string(order)));
  loop.second_order = order == 2;
  const Napi::Value measure = o.Get("measureBefore");
  loop.measure_before = measure.IsUndefined() ? true : measure.ToBoolean().Value();
  const Napi::Value steps = o.Get("stepSizes");
  loop.step_sizes.clear();
  if (steps.IsNumber()) {
    loop.step_sizes.push_back(steps.As<Napi::Number>().DoubleValue());
  } else if (steps.IsTypedArray() || steps.IsArray()) {
    const size_t expected = size_t(loop.steps) * a.parameters.size();
    std::vector<double> values;
    if (steps.IsArray()) {
      auto arr = steps.As<Napi::Array>();
      for (uint32_t i = 0; i < arr.Length(); ++i) values.push_back(arr.Get(i).ToNumber().DoubleValue());
    } else {
      values = float_array<double>(steps, steps.As<Napi::TypedArray>().ElementLength(), "stepSizes");
    }
    if (values.size() != 1 && values.size() != expected)
      throw Failure(expected_got("stepSizes", "1 value or steps x tensors = " + std::to_string(expected) + " values",
                                 std::to_string(values.size())));
    loop.step_sizes = values;
  } else {
    throw Failure(expected_got("stepSizes", "a number or steps x tensors values", type_of(steps)));
  }
  return loop;
}

template <class T>
void gather_set(OwnedSet<T>& s, const CacheHolder* cache, int tasks, const Architecture& a) {
  if (s.indices.empty()) return;
  const maml::ImageCache& c = cache->cache;
  if (c.channels != a.input.channels || c.height != a.input.height || c.width != a.input.width)
    throw std::invalid_argument("the image cache holds " + std::to_string(c.channels) + "x" + std::to_string(c.height) +
                                "x" + std::to_string(c.width) + " images but the network expects " +
                                std::to_string(a.input.channels) + "x" + std::to_string(a.input.height) + "x" +
                                std::to_string(a.input.width));
  s.images.resize(size_t(tasks) * s.size * a.input.size());
  maml::gather_images<T>(c, int64_t(tasks) * s.size, s.indices.data(), s.rotations.empty() ? nullptr : s.rotations.data(),
                         s.images.data());
}

class Engine;

// The learner a call runs on: the CPU engine, or the CUDA one where the build has it.
template <class T>
struct LearnerRef {
  maml::MetaLearner<T>* cpu = nullptr;
#ifdef MAML_HAVE_CUDA
  maml::cuda::CudaMetaLearner<T>* gpu = nullptr;
#endif
  const Architecture& architecture() const {
#ifdef MAML_HAVE_CUDA
    if (gpu) return gpu->architecture();
#endif
    return cpu->architecture();
  }
};

#ifdef MAML_HAVE_CUDA
template <class T>
maml::cuda::IndexedExampleSet<T> indexed_view(const OwnedSet<T>& s) {
  maml::cuda::IndexedExampleSet<T> v;
  v.size = s.size;
  v.indices = s.indices.data();
  v.rotations = s.rotations.empty() ? nullptr : s.rotations.data();
  v.labels = s.labels.data();
  v.loss_weight = s.loss_weight;
  return v;
}
#endif

// Runs one meta-gradient or adaptation on a worker thread.
template <class T>
class BatchWorker : public Napi::AsyncWorker {
 public:
  enum class Job { MetaGradient, Adapt };
  BatchWorker(Napi::Env env, Engine* engine, LearnerRef<T> learner, std::vector<T> params, int tasks,
              OwnedSet<T> support, OwnedSet<T> query, maml::InnerLoop loop, Job job, bool keep_adapted, bool keep_logits,
              std::atomic<bool>* busy, const CacheHolder* cache, Napi::Object keep_alive)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        learner_(learner),
        params_(std::move(params)),
        tasks_(tasks),
        support_(std::move(support)),
        query_(std::move(query)),
        loop_(std::move(loop)),
        job_(job),
        keep_adapted_(keep_adapted),
        keep_logits_(keep_logits),
        busy_(busy),
        cache_(cache) {
    keep_alive_ = Napi::Persistent(keep_alive);
    (void)engine;
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      maml_addon::ComputeThread::instance().run([&] { compute(); });
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  // The work of Execute, on the addon's one compute thread (compute_thread.h).
  void compute() {
    {
#ifdef MAML_HAVE_CUDA
      // On the GPU, indices gather from the device-resident cache: only indices and labels cross.
      if (learner_.gpu && !support_.indices.empty() && !query_.indices.empty() && !support_.labels.empty()) {
        maml::cuda::IndexedTaskBatch<T> indexed;
        indexed.tasks = tasks_;
        indexed.support = indexed_view(support_);
        indexed.query = indexed_view(query_);
        if (job_ == Job::MetaGradient) meta_ = learner_.gpu->meta_gradient(params_.data(), indexed, loop_);
        else adaptation_ = learner_.gpu->adapt_and_evaluate(params_.data(), indexed, loop_, keep_adapted_, keep_logits_);
        return;
      }
#endif
      gather_set(support_, cache_, tasks_, learner_.architecture());
      gather_set(query_, cache_, tasks_, learner_.architecture());
      maml::TaskBatch<T> batch;
      batch.tasks = tasks_;
      batch.support = support_.view();
      batch.query = query_.view();
#ifdef MAML_HAVE_CUDA
      if (learner_.gpu) {
        if (job_ == Job::MetaGradient) meta_ = learner_.gpu->meta_gradient(params_.data(), batch, loop_);
        else adaptation_ = learner_.gpu->adapt_and_evaluate(params_.data(), batch, loop_, keep_adapted_, keep_logits_);
        return;
      }
#endif
      if (job_ == Job::MetaGradient) {
        meta_ = learner_.cpu->meta_gradient(params_.data(), batch, loop_);
      } else {
        adaptation_ = learner_.cpu->adapt_and_evaluate(params_.data(), batch, loop_, keep_adapted_, keep_logits_);
      }
    }
  }
  void OnOK() override {
    busy_->store(false);
    Napi::Env env = Env();
    Napi::Object out = Napi::Object::New(env);
    if (job_ == Job::MetaGradient) {
      out.Set("gradient", to_js(env, meta_.gradient));
      out.Set("stepSizeGradient", to_js_double(env, meta_.step_size_gradient));
      out.Set("supportLossBefore", to_js_double(env, meta_.support_loss_before));
      out.Set("supportAccuracyBefore", to_js_double(env, meta_.support_accuracy_before));
      out.Set("supportLossAfter", to_js_double(env, meta_.support_loss_after));
      out.Set("supportAccuracyAfter", to_js_double(env, meta_.support_accuracy_after));
      out.Set("queryLossBefore", to_js_double(env, meta_.query_loss_before));
      out.Set("queryAccuracyBefore", to_js_double(env, meta_.query_accuracy_before));
      out.Set("queryLossAfter", to_js_double(env, meta_.query_loss_after));
      out.Set("queryAccuracyAfter", to_js_double(env, meta_.query_accuracy_after));
      out.Set("taskGroup", Napi::Number::New(env, meta_.task_group));
      out.Set("workspaceBytes", Napi::Number::New(env, double(meta_.workspace_bytes)));
    } else {
      out.Set("queryLoss", to_js_double(env, adaptation_.query_loss));
      out.Set("queryAccuracy", to_js_double(env, adaptation_.query_accuracy));
      if (keep_adapted_) out.Set("adapted", to_js(env, adaptation_.adapted));
      if (keep_logits_) out.Set("logits", to_js(env, adaptation_.logits));
    }
    deferred_.Resolve(out);
  }
  void OnError(const Napi::Error& e) override {
    busy_->store(false);
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  LearnerRef<T> learner_;
  std::vector<T> params_;
  int tasks_;
  OwnedSet<T> support_, query_;
  maml::InnerLoop loop_;
  Job job_;
  bool keep_adapted_, keep_logits_;
  std::atomic<bool>* busy_;
  const CacheHolder* cache_;
  Napi::ObjectReference keep_alive_;  // the engine object, so it outlives the call
  maml::MetaGradient<T> meta_;
  maml::Adaptation<T> adaptation_;
};

const char* layer_kind(maml::LayerKind k) {
  switch (k) {
    case maml::LayerKind::Conv3x3: return "conv3x3";
    case maml::LayerKind::BatchNorm: return "batchnorm";
    case maml::LayerKind::ReLU: return "relu";
    case maml::LayerKind::MaxPool2: return "maxpool2";
    case maml::LayerKind::SpatialMean: return "spatialmean";
    case maml::LayerKind::Linear: return "linear";
  }
  return "?";
}

class Engine : public Napi::ObjectWrap<Engine> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Engine",
                       {InstanceMethod("parameters", &Engine::Parameters), InstanceMethod("layers", &Engine::Layers),
                        InstanceMethod("initialize", &Engine::Initialize),
                        InstanceMethod("forwardMultiplyAdds", &Engine::ForwardMultiplyAdds),
                        InstanceMethod("setImageCache", &Engine::SetImageCache),
                        InstanceMethod("setImageCacheFile", &Engine::SetImageCacheFile),
                        InstanceMethod("metaGradient", &Engine::MetaGradientCall),
                        InstanceMethod("adaptAndEvaluate", &Engine::AdaptCall),
                        InstanceMethod("forward", &Engine::Forward),
                        InstanceAccessor("parameterCount", &Engine::ParameterCount, nullptr),
                        InstanceAccessor("dtype", &Engine::Dtype, nullptr),
                        InstanceAccessor("device", &Engine::Device, nullptr)});
  }

  explicit Engine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Engine>(info) {
    Napi::Env env = info.Env();
    try {
      if (info.Length() < 1 || !info[0].IsObject())
        throw Failure("new Engine(options): expected an options object {arch, ways, ...}");
      const Napi::Object o = info[0].As<Napi::Object>();
      maml::ArchitectureOptions a;
      if (!o.Get("arch").IsString()) throw Failure(expected_got("option 'arch'", "omniglot | miniimagenet | mlp | sinusoid", type_of(o.Get("arch"))));
      a.name = o.Get("arch").As<Napi::String>().Utf8Value();
      a.ways = int(number_field(o, "ways", 0, true));
      const std::string padding = o.Get("padding").IsString() ? o.Get("padding").As<Napi::String>().Utf8Value() : "tf";
      if (padding != "tf" && padding != "symmetric") throw Failure(expected_got("option 'padding'", "'tf' or 'symmetric'", padding));
      a.padding = padding == "tf" ? maml::Padding::TensorFlowSame : maml::Padding::Symmetric;
      a.filters = int(number_field(o, "filters", -1));
      a.image_size = int(number_field(o, "imageSize", -1));
      a.channels = int(number_field(o, "channels", -1));
      a.batch_norm_scale = o.Get("batchNormScale").ToBoolean().Value();
      a.glorot_head = o.Get("glorotHead").ToBoolean().Value();
      if (o.Get("hidden").IsArray()) {
        auto arr = o.Get("hidden").As<Napi::Array>();
        a.hidden_given = true;
        for (uint32_t i = 0; i < arr.Length(); ++i) a.hidden.push_back(arr.Get(i).ToNumber().Int32Value());
      }
      const std::string dtype = o.Get("dtype").IsString() ? o.Get("dtype").As<Napi::String>().Utf8Value() : "float32";
      if (dtype != "float32" && dtype != "float64") throw Failure(expected_got("option 'dtype'", "'float32' or 'float64'", dtype));
      double_ = dtype == "float64";
      const double epsilon = number_field(o, "batchNormEpsilon", 1e-3);
      if (!(epsilon > 0)) throw Failure(expected_got("option 'batchNormEpsilon'", "a positive number", std::to_string(epsilon)));
      const double budget = number_field(o, "workspaceBytes", 512e6);
      const std::string device = o.Get("device").IsString() ? o.Get("device").As<Napi::String>().Utf8Value() : "cpu";
      if (device != "cpu" && device != "cuda" && device != "auto")
        throw Failure(expected_got("option 'device'", "'cpu', 'cuda' or 'auto'", device));
      arch_ = maml::make_architecture(a);
      // The CPU learner always exists: forward() and the layer table use it.
      if (double_) learner64_ = std::make_unique<maml::MetaLearner<double>>(arch_, epsilon, budget);
      else learner32_ = std::make_unique<maml::MetaLearner<float>>(arch_, float(epsilon), budget);
#ifdef MAML_HAVE_CUDA
      device_ = maml::cuda::resolve_device(device);
      if (device_ == "cuda") {
        if (double_) cuda64_ = std::make_unique<maml::cuda::CudaMetaLearner<double>>(arch_, epsilon);
        else cuda32_ = std::make_unique<maml::cuda::CudaMetaLearner<float>>(arch_, float(epsilon));
      }
#else
      if (device == "cuda")
        throw Failure("--device cuda was asked for, but this build has no CUDA backend (nvcc was not found when the addon was compiled); use --device cpu");
      device_ = "cpu";
#endif
    } catch (const std::exception& e) {
      Napi::Error::New(env, e.what()).ThrowAsJavaScriptException();
    }
  }

 private:
  Napi::Value ParameterCount(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(arch_.parameter_count)); }
  Napi::Value Dtype(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), double_ ? "float64" : "float32"); }
  Napi::Value Device(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), device_); }

  template <class T>
  LearnerRef<T> learner_ref() {
    LearnerRef<T> r;
    if constexpr (std::is_same_v<T, double>) {
      r.cpu = learner64_.get();
#ifdef MAML_HAVE_CUDA
      r.gpu = cuda64_.get();
#endif
    } else {
      r.cpu = learner32_.get();
#ifdef MAML_HAVE_CUDA
      r.gpu = cuda32_.get();
#endif
    }
    return r;
  }
  Napi::Value ForwardMultiplyAdds(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), arch_.forward_multiply_adds());
  }

  Napi::Value Parameters(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array out = Napi::Array::New(env, arch_.parameters.size());
    for (size_t i = 0; i < arch_.parameters.size(); ++i) {
      const maml::ParameterInfo& p = arch_.parameters[i];
      Napi::Object e = Napi::Object::New(env);
      e.Set("name", p.name);
      Napi::Array shape = Napi::Array::New(env, p.shape.size());
      for (size_t d = 0; d < p.shape.size(); ++d) shape.Set(uint32_t(d), Napi::Number::New(env, double(p.shape[d])));
      e.Set("shape", shape);
      e.Set("offset", Napi::Number::New(env, double(p.offset)));
      e.Set("size", Napi::Number::New(env, double(p.size)));
      e.Set("adapted", Napi::Boolean::New(env, p.adapted));
      out.Set(uint32_t(i), e);
    }
    return out;
  }

  Napi::Value Layers(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array out = Napi::Array::New(env, arch_.layers.size());
    auto shape = [&](const maml::Shape3& s) {
      Napi::Array a = Napi::Array::New(env, 3);
      a.Set(0u, s.channels);
      a.Set(1u, s.height);
      a.Set(2u, s.width);
      return a;
    };
    for (size_t i = 0; i < arch_.layers.size(); ++i) {
      const maml::Layer& l = arch_.layers[i];
      Napi::Object e = Napi::Object::New(env);
      e.Set("kind", layer_kind(l.kind));
      e.Set("in", shape(l.in));
      e.Set("out", shape(l.out));
      e.Set("stride", l.stride);
      e.Set("padTop", l.pad_top);
      e.Set("padLeft", l.pad_left);
      e.Set("hasScale", l.has_scale);
      e.Set("weight", Napi::Number::New(env, double(l.weight)));
      e.Set("bias", Napi::Number::New(env, double(l.bias)));
      out.Set(uint32_t(i), e);
    }
    return out;
  }

  Napi::Value Initialize(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint64_t seed = info.Length() > 0 && info[0].IsNumber() ? uint64_t(info[0].As<Napi::Number>().Int64Value()) : 0;
    if (double_) return to_js(env, maml::initialize_parameters<double>(arch_, seed));
    return to_js(env, maml::initialize_parameters<float>(arch_, seed));
  }

  Napi::Value SetImageCache(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    try {
      if (info.Length() < 6 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
        throw Failure("setImageCache(pixels: Uint8Array, count, channels, height, width, invert)");
      auto pixels = info[0].As<Napi::Uint8Array>();
      auto holder = std::make_unique<CacheHolder>();
      read_cache_shape(info, holder->cache);
      const size_t expected = size_t(holder->cache.count) * holder->cache.image_size();
      if (pixels.ElementLength() != expected)
        throw Failure(expected_got("image cache", std::to_string(expected) + " bytes (count x C x H x W)",
                                   std::to_string(pixels.ElementLength())));
      holder->cache.pixels = pixels.Data();
      holder->pixels = Napi::Persistent(pixels);
      if (busy_) throw Failure("setImageCache: a call is still running on this engine; await it first");
#ifdef MAML_HAVE_CUDA
      if (cuda32_) cuda32_->set_image_cache(holder->cache);
      if (cuda64_) cuda64_->set_image_cache(holder->cache);
#endif
      cache_ = std::move(holder);
    } catch (const std::exception& e) {
      Napi::Error::New(env, e.what()).ThrowAsJavaScriptException();
    }
    return env.Undefined();
  }

  // The same cache left on disk: each call reads its images by position (pread).
  Napi::Value SetImageCacheFile(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    try {
      if (info.Length() < 6 || !info[0].IsString())
        throw Failure("setImageCacheFile(path: string, count, channels, height, width, invert)");
      auto holder = std::make_unique<CacheHolder>();
      read_cache_shape(info, holder->cache);
      if (busy_) throw Failure("setImageCacheFile: a call is still running on this engine; await it first");
#ifdef MAML_HAVE_CUDA
      if (cuda32_ || cuda64_) throw Failure("setImageCacheFile: the CUDA engine needs the cache in memory; use setImageCache");
#endif
      holder->file = std::make_unique<maml::PixelFile>(info[0].As<Napi::String>().Utf8Value(),
                                                       holder->cache.count * holder->cache.image_size());
      holder->cache.file = holder->file.get();
      cache_ = std::move(holder);
    } catch (const std::exception& e) {
      Napi::Error::New(env, e.what()).ThrowAsJavaScriptException();
    }
    return env.Undefined();
  }

  template <class T>
  Napi::Value StartBatch(const Napi::CallbackInfo& info, LearnerRef<T> learner, bool adapt) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[1].IsObject())
      throw Failure(std::string(adapt ? "adaptAndEvaluate" : "metaGradient") + "(parameters, batch, loop): batch must be an object {tasks, support, query}");
    std::vector<T> params = float_array<T>(info[0], size_t(arch_.parameter_count),
                                           "parameters (the flat vector of " + std::to_string(arch_.parameters.size()) + " tensors)");
    const Napi::Object b = info[1].As<Napi::Object>();
    const int tasks = int(number_field(b, "tasks", 0, true));
    if (tasks <= 0) throw Failure(expected_got("batch.tasks", "a positive number of tasks", std::to_string(tasks)));
    if (!b.Get("support").IsObject() || !b.Get("query").IsObject()) throw Failure("batch.support and batch.query must be objects");
    OwnedSet<T> support = read_set<T>(b.Get("support").As<Napi::Object>(), arch_, tasks, "support", cache_ != nullptr);
    OwnedSet<T> query = read_set<T>(b.Get("query").As<Napi::Object>(), arch_, tasks, "query", cache_ != nullptr);
    maml::InnerLoop loop = read_loop(info[2], arch_);
    bool keep_adapted = false, keep_logits = false;
    if (adapt && info.Length() > 3 && info[3].IsObject()) {
      keep_adapted = info[3].As<Napi::Object>().Get("keepAdapted").ToBoolean().Value();
      keep_logits = info[3].As<Napi::Object>().Get("keepLogits").ToBoolean().Value();
    }
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true))
      throw Failure("this engine is already running a call: await the previous promise first (one call per engine at a time)");
    auto* worker = new BatchWorker<T>(env, this, learner, std::move(params), tasks, std::move(support), std::move(query),
                                      std::move(loop), adapt ? BatchWorker<T>::Job::Adapt : BatchWorker<T>::Job::MetaGradient,
                                      keep_adapted, keep_logits, &busy_, cache_.get(), info.This().As<Napi::Object>());
    Napi::Promise p = worker->promise();
    worker->Queue();
    return p;
  }

  Napi::Value Dispatch(const Napi::CallbackInfo& info, bool adapt) {
    Napi::Env env = info.Env();
    try {
      if (double_) return StartBatch<double>(info, learner_ref<double>(), adapt);
      return StartBatch<float>(info, learner_ref<float>(), adapt);
    } catch (const std::exception& e) {
      auto deferred = Napi::Promise::Deferred::New(env);
      deferred.Reject(Napi::Error::New(env, e.what()).Value());
      return deferred.Promise();
    }
  }
  Napi::Value MetaGradientCall(const Napi::CallbackInfo& info) { return Dispatch(info, false); }
  Napi::Value AdaptCall(const Napi::CallbackInfo& info) { return Dispatch(info, true); }

  template <class T>
  Napi::Value ForwardT(const Napi::CallbackInfo& info, maml::MetaLearner<T>* learner) {
    Napi::Env env = info.Env();
    if (busy_) throw Failure("forward: a call is still running on this engine; await it first");
    std::vector<T> params = float_array<T>(info[0], size_t(arch_.parameter_count), "parameters");
    if (info.Length() < 2 || !info[1].IsObject()) throw Failure("forward(parameters, {images | indices, size})");
    const Napi::Object o = info[1].As<Napi::Object>();
    OwnedSet<T> set;
    set.size = int(number_field(o, "size", 0, true));
    if (set.size <= 0) throw Failure(expected_got("size", "a positive number of examples", std::to_string(set.size)));
    if (!o.Get("images").IsUndefined()) {
      set.images = float_array<T>(o.Get("images"), size_t(set.size) * arch_.input.size(), "images");
    } else {
      if (!cache_) throw Failure("forward: indices given but no image cache is set");
      set.indices = integer_array<int32_t, napi_int32_array>(o.Get("indices"), set.size, "indices", "Int32Array");
      if (!o.Get("rotations").IsUndefined())
        set.rotations = integer_array<uint8_t, napi_uint8_array>(o.Get("rotations"), set.size, "rotations", "Uint8Array");
    }
    // on the compute thread, as every call that starts OpenMP work (compute_thread.h)
    std::vector<typename maml::Network<T>::Moments> moments;
    std::vector<T> logits;
    maml_addon::ComputeThread::instance().run([&] {
      gather_set(set, cache_.get(), 1, arch_);
      logits = learner->forward(params.data(), set.size, set.images.data(), &moments);
    });
    Napi::Object out = Napi::Object::New(env);
    out.Set("logits", to_js(env, logits));
    Napi::Array bn = Napi::Array::New(env, moments.size());
    for (size_t i = 0; i < moments.size(); ++i) {
      Napi::Object m = Napi::Object::New(env);
      m.Set("layer", moments[i].layer);
      m.Set("mean", to_js_double(env, moments[i].mean));
      m.Set("variance", to_js_double(env, moments[i].variance));
      bn.Set(uint32_t(i), m);
    }
    out.Set("batchNorm", bn);
    return out;
  }
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    try {
      if (double_) return ForwardT<double>(info, learner64_.get());
      return ForwardT<float>(info, learner32_.get());
    } catch (const std::exception& e) {
      Napi::Error::New(info.Env(), e.what()).ThrowAsJavaScriptException();
      return info.Env().Undefined();
    }
  }

  Architecture arch_;
  bool double_ = false;
  std::unique_ptr<maml::MetaLearner<float>> learner32_;
  std::unique_ptr<maml::MetaLearner<double>> learner64_;
#ifdef MAML_HAVE_CUDA
  std::unique_ptr<maml::cuda::CudaMetaLearner<float>> cuda32_;
  std::unique_ptr<maml::cuda::CudaMetaLearner<double>> cuda64_;
#endif
  std::string device_ = "cpu";
  std::unique_ptr<CacheHolder> cache_;
  std::atomic<bool> busy_{false};
};

Napi::Value Threads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), maml::thread_count()); }

Napi::Value CudaDevices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
#ifdef MAML_HAVE_CUDA
  std::string error;
  const int count = maml::cuda::cuda_device_count(&error);
  out.Set("count", count);
  if (!error.empty()) out.Set("error", error);
#else
  out.Set("count", 0);
  out.Set("error", "this build has no CUDA backend (nvcc was not found when it was compiled)");
#endif
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("Engine", Engine::Define(env));
  exports.Set("threads", Napi::Function::New(env, Threads));
  exports.Set("cudaDevices", Napi::Function::New(env, CudaDevices));
  return exports;
}

}  // namespace

NODE_API_MODULE(maml_native, Init)
