// The only Python-facing C++: the pybind11 module torch_ext._C. Importing it
// loads the library, whose static initialisers register the ops under
// torch.ops.torch_ext; besides, it exposes the option tables, the neuron
// registry, the option check and how the extension was built.
#include <ATen/Context.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/version.h>
#include <torch_ext/buffer_cache.h>

#include <string>
#include <vector>

#include "core/blas.h"
#include "core/buffers.h"
#include "core/driver.h"
#include "neurons/registry.h"

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = TORCH_EXT_VERSION;
  info["torch_version"] = std::to_string(TORCH_VERSION_MAJOR) + "." +
                          std::to_string(TORCH_VERSION_MINOR) + "." +
                          std::to_string(TORCH_VERSION_PATCH);
#ifdef WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = std::string(TORCH_EXT_CUDA_ARCHS);
  info["cuda_designs"] =
      std::vector<std::string>(torch_ext::kCudaDesigns.begin(), torch_ext::kCudaDesigns.end());
  // Read now, as every call does: the design asked for (sizes that do not fit,
  // and options it does not cover, still take the per-step design).
  info["cuda_design_requested"] =
      torch_ext::cuda_persistent_requested() ? "persistent" : "per_step";
#else
  info["cuda"] = false;
  info["cuda_archs"] = py::none();
  info["cuda_designs"] = std::vector<std::string>{};
  info["cuda_design_requested"] = py::none();
#endif
#ifdef _OPENMP
  info["openmp"] = _OPENMP;  // the OpenMP version, as yyyymm
#else
  info["openmp"] = py::none();
#endif
#ifdef TORCH_EXT_CPU_CLONE_TARGETS
  info["cpu_simd_clones"] = std::vector<std::string>{TORCH_EXT_CPU_CLONE_TARGETS};
#else
  info["cpu_simd_clones"] = std::vector<std::string>{};
#endif
  info["blas"] = at::globalContext().hasMKL() ? "MKL" : "torch's BLAS (not MKL)";
  // Per low-precision dtype: whether MKL's products for it are present,
  // whether this CPU has instructions for them, and the path its dense
  // products take now on each device type (blas.h): in that dtype with
  // float32 accumulation or in float32 on the upcast operands.
  std::vector<std::string> low_precision, instructions;
  py::dict cpu_paths, cuda_paths;
  for (const auto& [dtype, name] : {std::make_pair(at::kBFloat16, "bfloat16"),
                                    std::make_pair(at::kHalf, "float16")}) {
    using torch_ext::LowPrecisionPath;
    if (torch_ext::low_precision_products_present(dtype)) low_precision.push_back(name);
    if (torch_ext::cpu_has_low_precision_instructions(dtype)) instructions.push_back(name);
    cpu_paths[name] = torch_ext::low_precision_path(dtype) == LowPrecisionPath::kLowPrecision
                          ? std::string(name) + " operands, float32 accumulation (MKL)"
                          : "float32 products of the upcast operands";
    cuda_paths[name] =
        torch_ext::low_precision_path(dtype, at::kCUDA) == LowPrecisionPath::kLowPrecision
            ? std::string(name) + " operands, float32 accumulation (cuBLAS, tensor cores)"
            : "float32 products of the upcast operands (TF32 where allowed)";
  }
  info["cpu_low_precision_products"] = low_precision;
  info["cpu_low_precision_instructions"] = instructions;
  info["cpu_product_paths"] = cpu_paths;
  // Whether the loops' per-step recurrent products (the forward's and the
  // reverse loop's) can run on bfloat16 matrix instructions here (ATen's
  // brgemm, a CPU it packs for: AMX).
  info["cpu_bfloat16_recurrence_product"] =
      torch_ext::bfloat16_packed_columns(at::zeros({64, 64})).defined();
#ifdef WITH_CUDA
  info["cuda_product_paths"] = cuda_paths;
#else
  info["cuda_product_paths"] = py::none();
#endif
  info["compiler"] = __VERSION__;
  return info;
}

// check_options with its errors as the Python exceptions torch raises for
// the same checks in the op (ValueError, TypeError).
double resolve_slope(const std::string& op, const std::string& reset, bool detach_reset,
                     const std::string& surrogate, std::optional<double> slope, bool float64) {
  try {
    return torch_ext::check_options(op.c_str(), reset, detach_reset, surrogate, slope,
                                    float64 ? at::kDouble : at::kFloat)
        .slope;
  } catch (const c10::ValueError& e) {
    throw py::value_error(e.what_without_backtrace());
  } catch (const c10::TypeError& e) {
    throw py::type_error(e.what_without_backtrace());
  }
}

// A model of the registry as Python data: the op's name, its parameters
// ((name, default, decay) in the op's order), its states ((initial value's
// name, output's name)), the low-memory flag's name and the option defaults.
template <typename M>
py::dict neuron_spec() {
  py::dict spec;
  const torch_ext::NeuronTraits& t = M::kTraits;
  spec["op"] = t.op;
  py::list params, states;
  for (const auto& p : M::kParams) params.append(py::make_tuple(p.name, p.default_value, p.decay));
  for (const auto& s : M::kStates) states.append(py::make_tuple(s.initial, s.output));
  spec["params"] = py::tuple(params);
  spec["states"] = py::tuple(states);
  spec["save_flag"] = t.save_flag;
  spec["reset"] = t.default_reset;
  spec["detach_reset"] = t.default_detach_reset;
  return spec;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "torch_ext's compiled part: the recurrent spiking ops and the facts of this build";
  m.def("build_info", &build_info,
        "How this extension was built: versions, CUDA and its architectures, OpenMP, SIMD, BLAS.");
  m.def(
      "buffer_cache_info",
      [] {
        const torch_ext::BufferCacheInfo i = torch_ext::buffer_cache_info();
        py::dict d;
        d["cached_bytes"] = i.cached_bytes;
        d["cached_blocks"] = i.cached_blocks;
        d["reused"] = i.reused;
        d["allocated"] = i.allocated;
        d["limit_bytes"] = i.limit_bytes;
        return d;
      },
      "The cache of the ops' large CPU buffers: the freed bytes and blocks it holds, how many "
      "allocations it served from them and how many took fresh memory, and its limit "
      "(TORCH_EXT_BUFFER_CACHE_MB, as last read).");
  m.def("release_buffer_cache", &torch_ext::release_buffer_cache,
        "Hands every block the buffer cache holds back to the system.");
  m.def("_set_buffer_cache_poison", &torch_ext::set_buffer_cache_poison, py::arg("poison"),
        "Test hook: fill every reused buffer with NaN bytes before the op gets it.");
  m.def("_set_low_precision_path_forced", &torch_ext::set_low_precision_path_forced,
        py::arg("path"), py::arg("forced"),
        "Test hook: on MKL's bfloat16 path, 'w_rec_grad' (the spikes' share of grad_w_rec as one "
        "bfloat16 product), 'recurrence' (the reverse loop's per-step product on the bfloat16 "
        "matrix instructions) or 'forward_recurrence' (the forward's recurrent input on them) "
        "always (1), never (0), or by the op's rules (-1).");
  m.def("resolve_slope", &resolve_slope, py::arg("op"), py::arg("reset"), py::arg("detach_reset"),
        py::arg("surrogate"), py::arg("slope"), py::arg("float64"),
        "Checks the options as the op does; returns the slope to use.");
#ifdef WITH_CUDA
  m.def(
      "cuda_design_for",
      [](int64_t T, int64_t B, int64_t N, bool float64) {
        return torch_ext::cuda_design_for(T, B, N, float64 ? at::kDouble : at::kFloat);
      },
      py::arg("T"), py::arg("B"), py::arg("N"), py::arg("float64"),
      "(design, reason): the CUDA design a forward call with an all-to-all w_rec of these sizes "
      "would use on the current device now.");
#endif
  py::list resets;
#define TORCH_EXT_RESET(enumerator, name) resets.append(name);
  TORCH_EXT_FOR_EACH_RESET(TORCH_EXT_RESET)
#undef TORCH_EXT_RESET
  m.attr("RESETS") = py::tuple(resets);
  py::dict slopes;
#define TORCH_EXT_SLOPE(enumerator, name, slope) slopes[name] = slope;
  TORCH_EXT_FOR_EACH_SURROGATE(TORCH_EXT_SLOPE)
#undef TORCH_EXT_SLOPE
  m.attr("SURROGATE_SLOPES") = slopes;
  py::list neurons;
  torch_ext::for_each_neuron([&]<typename M>() { neurons.append(neuron_spec<M>()); });
  m.attr("NEURONS") = py::tuple(neurons);
}
