// Trains torch_ext::RecurrentLIF from a program that only knows the installed
// package, and checks its gradients against a LibTorch autograd loop of the
// same math. Exits non-zero on any mismatch.
#include <torch/torch.h>
#include <torch_ext/torch_ext.h>

#include <iostream>

#include "lif_reference.h"

int main() {
  torch::manual_seed(0);
  torch_ext::RecurrentLIF layer(
      torch_ext::RecurrentLIFOptions(3, 8).learn_alpha(true).learn_theta(true));
  layer->to(torch::kFloat64);
  torch::nn::Linear readout(8, 2);
  readout->to(torch::kFloat64);
  const torch::Tensor x = torch::randn({30, 16, 3}, torch::kFloat64) * 2;  // [T, B, F]
  const torch::Tensor labels = torch::randint(0, 2, {16});

  // Gradients of the fused layer equal those of the reference loop.
  const auto [spikes, state] = layer(x);
  const auto [spikes_ref, membrane_ref] = lif_reference::recurrent_lif(
      x, layer->w_in, layer->w_rec, layer->bias, layer->alpha.clamp(0, 1), layer->theta, {}, {},
      "subtract", false, "sigmoid", 25.0);
  if (!torch::equal(spikes, spikes_ref)) {
    std::cerr << "spikes differ from the reference\n";
    return 1;
  }
  const auto params = layer->parameters();
  auto loss_of = [&](const torch::Tensor& s) {
    return torch::nn::functional::cross_entropy(readout(s.mean(0)), labels);
  };
  const auto grads = torch::autograd::grad({loss_of(spikes)}, params);
  const auto grads_ref = torch::autograd::grad({loss_of(spikes_ref)}, params);
  for (size_t i = 0; i < grads.size(); ++i) {
    if (!torch::allclose(grads[i], grads_ref[i], 1e-9, 1e-12)) {
      std::cerr << "gradient " << i << " differs by "
                << (grads[i] - grads_ref[i]).abs().max().item<double>() << "\n";
      return 1;
    }
  }

  // And it trains.
  std::vector<torch::Tensor> all = params;
  for (const auto& p : readout->parameters()) all.push_back(p);
  torch::optim::Adam optimizer(all, torch::optim::AdamOptions(0.01));
  double first = 0, last = 0;
  for (int step = 0; step < 40; ++step) {
    optimizer.zero_grad();
    const auto [s, final_state] = layer(x);
    const torch::Tensor loss = loss_of(s);
    loss.backward();
    optimizer.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  std::cout << "loss " << first << " -> " << last << "; gradients equal the LibTorch loop's\n";
  return last < first ? 0 : 1;
}
