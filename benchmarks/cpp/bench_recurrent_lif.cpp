// C++ benchmark (LibTorch, no Python): the fused op vs a LibTorch autograd loop
// of the same math (tests/cpp/lif_reference.h: one input product, unbind over
// time, stack), forward + backward, float32, side by side in one run; on CPU,
// and on CUDA where a GPU is present.
//
//   build/cmake/bench_recurrent_lif [reps]
#include <torch/torch.h>
#include <torch_ext/torch_ext.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "lif_reference.h"

namespace {

struct Size {
  int64_t T, B, N;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void sync(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 7;
  std::vector<torch::Device> devices{torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA);
  const std::vector<Size> sizes{{300, 32, 128}, {200, 32, 512}, {1000, 32, 128}};
  std::printf("device  T     B    N     fused ms  LibTorch loop ms  loop/fused\n");
  for (const auto& device : devices) {
    for (const auto& [T, B, N] : sizes) {
      torch::manual_seed(0);
      const auto opts = torch::TensorOptions().device(device).dtype(torch::kFloat32);
      const torch::Tensor x = torch::randn({T, B, N}, opts);
      const torch::Tensor w_in = (torch::randn({N, N}, opts) * (1.5 / std::sqrt(N))).requires_grad_();
      const torch::Tensor w_rec = (torch::randn({N, N}, opts) * (0.5 / std::sqrt(N))).requires_grad_();
      const torch::Tensor bias = (torch::randn({N}, opts) * 0.1).requires_grad_();
      const torch::Tensor alpha = torch::full({}, 0.9, opts), theta = torch::full({}, 1.0, opts);
      auto fused = [&] {
        auto [s, u] = torch_ext::recurrent_lif(
            x, w_in, w_rec, bias, alpha, theta, torch_ext::RecurrentLIFFuncOptions().detach_reset(true));
        return s;
      };
      auto loop = [&] {
        return std::get<0>(lif_reference::recurrent_lif(x, w_in, w_rec, bias, alpha, theta, {}, {},
                                                        "subtract", true, "sigmoid", 25.0));
      };
      auto time_once = [&](auto&& fn) {
        sync(device);
        const auto start = std::chrono::steady_clock::now();
        torch::autograd::grad({fn().sum()}, {w_in, w_rec, bias});
        sync(device);
        return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count();
      };
      time_once(fused), time_once(loop);  // warm-up
      std::vector<double> t_fused, t_loop;
      for (int r = 0; r < reps; ++r) {  // interleaved, so drifts hit both alike
        t_fused.push_back(time_once(fused));
        t_loop.push_back(time_once(loop));
      }
      const double f = median(t_fused), l = median(t_loop);
      std::printf("%-6s  %-5lld %-4lld %-5lld %9.1f  %16.1f  %10.1f\n", device.str().c_str(),
                  static_cast<long long>(T), static_cast<long long>(B), static_cast<long long>(N), f,
                  l, l / f);
    }
  }
  return 0;
}
