// Trains a recurrent spiking network on handwritten digits from C++, the way
// the Python demo (python -m torch_ext.demo) does: each 8x8 image is shown
// row by row (two time steps per row, T = 16), input -> RecurrentLIF(8, 128)
// -> linear readout of the spike rates, Adam, cross-entropy.
//
//   train_digits DIGITS_FILE [EPOCHS]
//
// DIGITS_FILE is written in Python (the C++ tests' Python step does it):
//
//   train, test = torch_ext.demo.load_digits_sequences(seed=0)
//   torch.save({"x_train": train.tensors[0], "y_train": train.tensors[1],
//               "x_test": test.tensors[0], "y_test": test.tensors[1]}, "digits.pt")
//
// Build it against the installed package: find_package(torch_ext), link
// torch_ext::torch_ext (this project's CMakeLists.txt builds it as
// train_digits).
#include <torch/torch.h>
#include <torch_ext/torch_ext.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>

namespace {

struct DigitNet : torch::nn::Module {
  explicit DigitNet(int64_t hidden)
      // A gentle surrogate slope (5 rather than the default 25) lets gradients
      // reach neurons that are still far from their threshold.
      : lif(register_module("lif", torch_ext::RecurrentLIF(torch_ext::RecurrentLIFOptions(8, hidden)
                                                               .learn_alpha(true)
                                                               .learn_theta(true)
                                                               .per_neuron(true)
                                                               .slope(5.0)
                                                               .batch_first(true)))),
        readout(register_module("readout", torch::nn::Linear(hidden, 10))) {
    torch::NoGradGuard no_grad;
    lif->w_in.mul_(2.0);  // stronger input drive, so that neurons spike from the start
  }

  torch::Tensor forward(const torch::Tensor& x) {  // x [B, T, 8] -> logits [B, 10]
    const auto [spikes, state] = lif(x);
    return readout(spikes.mean(1));
  }

  torch_ext::RecurrentLIF lif;
  torch::nn::Linear readout;
};

double accuracy(DigitNet& model, const torch::Tensor& x, const torch::Tensor& y) {
  torch::NoGradGuard no_grad;
  model.eval();
  return model.forward(x).argmax(1).eq(y).to(torch::kDouble).mean().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: " << argv[0] << " DIGITS_FILE [EPOCHS]\n";
    return 2;
  }
  const int epochs = argc == 3 ? std::stoi(argv[2]) : 40;
  const auto data = torch_ext::load_tensors(argv[1]);  // what Python's torch.save wrote
  const torch::Tensor x_train = data.at("x_train"), y_train = data.at("y_train");
  const torch::Tensor x_test = data.at("x_test"), y_test = data.at("y_test");

  torch::manual_seed(0);
  DigitNet model(128);
  torch::optim::Adam optimizer(model.parameters(), torch::optim::AdamOptions(3e-3));
  const int64_t n = x_train.size(0), batch_size = 64;
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    const auto start = std::chrono::steady_clock::now();
    model.train();
    const torch::Tensor order = torch::randperm(n);
    double total_loss = 0;
    for (int64_t first = 0; first < n; first += batch_size) {
      const torch::Tensor batch = order.slice(0, first, std::min(first + batch_size, n));
      const torch::Tensor loss =
          torch::nn::functional::cross_entropy(model.forward(x_train.index({batch})),
                                               y_train.index({batch}));
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      total_loss += loss.item<double>() * batch.size(0);
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("epoch %2d  loss %.3f  test %.3f  (%.2f s)\n", epoch, total_loss / n,
                accuracy(model, x_test, y_test), seconds);
  }
  std::printf("test accuracy %.3f (%lld held-out digits)\n", accuracy(model, x_test, y_test),
              static_cast<long long>(x_test.size(0)));
  return 0;
}
