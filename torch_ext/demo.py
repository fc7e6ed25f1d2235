"""Trains a recurrent spiking network on scikit-learn's handwritten digits.

Each 8x8 image is shown row by row (two time steps per row, T = 16), so the
network has to carry what it saw across time steps in its membranes and
recurrent spikes: input -> RecurrentLIF(8, hidden) -> linear readout of the
spike counts. At the end it compares the fused op with the plain-autograd
reference on the same batches (time per epoch, largest gradient difference).

    python -m torch_ext.demo [--epochs 60] [--device cpu] [--out DIR]
"""
import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import nn

from torch_ext import RecurrentLIF

STEPS_PER_ROW = 2


def load_digits_sequences(seed, limit=None):
    """(train, test) TensorDatasets of [T=16, 8] sequences in [0, 1] and labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16.0       # [n, 8 rows, 8 cols]
    sequences = images.repeat_interleave(STEPS_PER_ROW, dim=1)          # [n, 16, 8]
    labels = torch.tensor(data.target)
    if limit is not None:
        sequences, labels = sequences[:limit], labels[:limit]
    train_idx, test_idx = train_test_split(range(len(labels)), test_size=0.25,
                                           random_state=seed, stratify=labels.numpy())
    pick = lambda idx: torch.utils.data.TensorDataset(sequences[idx], labels[idx])  # noqa: E731
    return pick(train_idx), pick(test_idx)


class DigitNet(nn.Module):
    def __init__(self, hidden=256, backend="fused"):
        super().__init__()
        # A gentle surrogate slope (5 rather than the default 25) lets gradients
        # reach neurons that are still far from their threshold.
        self.lif = RecurrentLIF(8, hidden, alpha=0.9, learn_alpha=True, learn_theta=True,
                                per_neuron=True, surrogate="sigmoid", slope=5.0,
                                batch_first=True, backend=backend)
        with torch.no_grad():  # stronger input drive so that neurons spike from the start
            self.lif.w_in.mul_(2.0)
        self.readout = nn.Linear(hidden, 10)

    def forward(self, x):
        spikes, _ = self.lif(x)                 # [B, T, hidden]
        return self.readout(spikes.mean(1)), spikes  # readout of the spike rates


def run_epoch(model, loader, optimizer=None, device="cpu"):
    """One pass; trains if an optimizer is given. Returns (loss, accuracy, seconds)."""
    model.train(optimizer is not None)
    total_loss, correct, count = 0.0, 0, 0
    start = time.perf_counter()
    with torch.set_grad_enabled(optimizer is not None):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits, _ = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            if optimizer is not None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
    if device != "cpu":
        torch.cuda.synchronize()
    return total_loss / count, correct / count, time.perf_counter() - start


def max_grad_difference(model, x, y):
    """Largest |fused - autograd| over all parameter gradients on one batch, in
    float64 (in float32 a rounding difference can flip a spike at a tie)."""
    grads = []
    for backend in ("fused", "autograd"):
        m = copy.deepcopy(model).double()
        m.lif.backend = backend
        loss = nn.functional.cross_entropy(m(x.double())[0], y)
        grads.append(torch.autograd.grad(loss, list(m.parameters())))
    return max((a - b).abs().max().item() for a, b in zip(*grads))


def save_plots(history, spikes, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, history["loss"], label="train")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax2.plot(epochs, history["train_acc"], label="train")
    ax2.plot(epochs, history["test_acc"], label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=120)
    plt.close(fig)

    t, n = torch.nonzero(spikes.cpu(), as_tuple=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(t.numpy(), n.numpy(), s=6, marker="|", color="black")
    ax.set(xlabel="time step (two per image row)", ylabel="neuron",
           title="RecurrentLIF spikes, one test digit", xlim=(-0.5, spikes.shape[0] - 0.5))
    fig.tight_layout()
    fig.savefig(out / "spike_raster.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", choices=["fused", "autograd"], default="fused",
                        help="the layer implementation used for training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--out", type=Path, default=None, help="write summary.json and plots here")
    args = parser.parse_args(argv)
    from tqdm import tqdm

    torch.manual_seed(args.seed)
    train_set, test_set = load_digits_sequences(args.seed, args.limit)
    loader = lambda ds, shuffle: torch.utils.data.DataLoader(  # noqa: E731
        ds, batch_size=args.batch_size, shuffle=shuffle,
        generator=torch.Generator().manual_seed(args.seed))
    train_loader, test_loader = loader(train_set, True), loader(test_set, False)
    model = DigitNet(args.hidden, args.backend).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    history = {"loss": [], "train_acc": [], "test_acc": [], "seconds": []}
    bar = tqdm(range(args.epochs), desc=f"training ({args.backend})", unit="epoch")
    for _ in bar:
        loss, acc, seconds = run_epoch(model, train_loader, optimizer, args.device)
        _, test_acc, _ = run_epoch(model, test_loader, device=args.device)
        for key, value in zip(history, (loss, acc, test_acc, seconds)):
            history[key].append(value)
        bar.set_postfix(loss=f"{loss:.3f}", train=f"{acc:.3f}", test=f"{test_acc:.3f}")

    # Speed: one more training epoch per backend on the same batches, from the same weights.
    epoch_seconds = {}
    for backend in ("fused", "autograd"):
        m = copy.deepcopy(model)
        m.lif.backend = backend
        torch.manual_seed(args.seed)
        epoch_seconds[backend] = run_epoch(m, loader(train_set, True),
                                           torch.optim.Adam(m.parameters(), lr=args.lr), args.device)[2]
    x, y = next(iter(test_loader))
    grad_diff = max_grad_difference(model, x.to(args.device), y.to(args.device))

    summary = {
        "test_accuracy": history["test_acc"][-1],
        "epoch_seconds_fused": epoch_seconds["fused"],
        "epoch_seconds_autograd": epoch_seconds["autograd"],
        "speedup": epoch_seconds["autograd"] / epoch_seconds["fused"],
        "max_grad_diff": grad_diff,
        "epochs": args.epochs, "seed": args.seed, "device": args.device,
        "train_backend": args.backend, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "history": history,
    }
    print(f"test accuracy        {summary['test_accuracy']:.3f}  ({len(test_set)} held-out digits)")
    print(f"seconds per epoch    fused {epoch_seconds['fused']:.2f}   "
          f"autograd {epoch_seconds['autograd']:.2f}   ({summary['speedup']:.1f}x)")
    print(f"max |grad fused - grad autograd| on one batch (float64): {grad_diff:.2e}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
        with torch.no_grad():
            _, spikes = model(test_set[0][0][None].to(args.device))
        save_plots(history, spikes[0], args.out)
        print(f"wrote {args.out / 'summary.json'}, training_curves.png, spike_raster.png")
    return summary


if __name__ == "__main__":
    main()
