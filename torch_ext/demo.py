"""Trains recurrent spiking networks on scikit-learn's handwritten digits.

Row by row: each 8x8 image is shown row by row (two time steps per row,
T = 16), so the network has to carry what it saw across time steps in its
membranes and recurrent spikes: input -> RecurrentLIF(8, hidden) -> linear
readout of the spike counts. At the end it compares the fused op with the
plain-autograd reference on the same batches (time per epoch, largest
gradient difference).

Pixel by pixel: each image is read one pixel per step (T = 64, one input
feature), a long sequence whose label is read out at its last step only, so
the network has to remember: RecurrentLIF, the adaptive RecurrentAdLIF and
the current-based RecurrentCubaLIF side by side, and the RecurrentLIF again
with learnable axonal recurrent delays (DelRec-style: delays up to
--max-delay steps, the kernel's spread annealed, the delays clamped after
each step and rounded for the final test), the same hidden size and epochs;
their test accuracies and the time per epoch of the fused op and of the
autograd reference (a few batches).

    python -m torch_ext.demo [--epochs 60] [--pixel-epochs 40] [--device cpu] [--out DIR]
"""
import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch import nn

from torch_ext import RecurrentAdLIF, RecurrentCubaLIF, RecurrentLIF

STEPS_PER_ROW = 2


def load_digits_sequences(seed, limit=None, pixels=False):
    """(train, test) TensorDatasets of sequences in [0, 1] and labels: [T=16, 8]
    (each row twice), or [T=64, 1] with ``pixels`` (one pixel per step, row
    after row). The same split for both."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16.0       # [n, 8 rows, 8 cols]
    if pixels:
        sequences = images.reshape(len(images), 64, 1)                  # [n, 64, 1]
    else:
        sequences = images.repeat_interleave(STEPS_PER_ROW, dim=1)      # [n, 16, 8]
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


class PixelNet(nn.Module):
    """input (one pixel per step) -> RecurrentLIF, RecurrentAdLIF or
    RecurrentCubaLIF(1, hidden) -> linear readout of the membranes at the
    last step.

    The readout sees the last step only, not a sum over time: a readout of
    the spike counts would integrate the sequence itself, and the recurrent
    layer could get away with forgetting. Read at the end, whatever decides
    the label (the top rows of a digit are 48 to 64 steps back) has to be
    carried to the end by the layer's own state; the membrane (rather than
    the last step's binary spikes) is that state, graded. The LIF layer
    remembers through its membrane leak (alpha ~ 0.9, ~10 steps) and its
    recurrent spikes; the adaptive one also through its slow adaptation
    current (tau_w from 60 to 300 steps); the current-based one through its
    synaptic current as well (alpha_syn ~ 0.8, ~5 steps), both decays
    learnt per neuron."""

    def __init__(self, kind="adlif", hidden=64, backend="fused", max_delay=16):
        super().__init__()
        if kind in ("lif", "lif_delays"):  # as DigitNet's layer
            # With delays (DelRec's layer): each neuron's spikes reach the
            # others after a learnt delay in [1, max_delay], read through a
            # triangular kernel whose spread train_pixel_models anneals.
            delays = (dict(recurrent_delays="axonal", max_delay=max_delay,
                           delay_sigma=delay_sigma_at(0, 1, max_delay))
                      if kind == "lif_delays" else {})
            self.layer = RecurrentLIF(1, hidden, alpha=0.9, learn_alpha=True, learn_theta=True,
                                      per_neuron=True, surrogate="sigmoid", slope=5.0,
                                      batch_first=True, backend=backend, **delays)
            gain = 4.0
        elif kind == "cuba":  # the LIF layer's options, with a learnt synapse
            self.layer = RecurrentCubaLIF(1, hidden, alpha=0.9, alpha_syn=0.8, learn_alpha=True,
                                          learn_alpha_syn=True, learn_theta=True, per_neuron=True,
                                          surrogate="sigmoid", slope=5.0, batch_first=True,
                                          backend=backend)
            gain = 4.0  # as the LIF layer's: over seeds 0-2 its accuracy was 0.79-0.88, with 8 0.84-0.86
        else:  # the paper's parameterisation and ranges, the same surrogate
            self.layer = RecurrentAdLIF(1, hidden, surrogate="sigmoid", slope=5.0,
                                        batch_first=True, backend=backend)
            # Its membrane takes its input with gain (1 - alpha) = 0.04 to 0.18,
            # and its adaptation (q = 120) pushes back: it needs a stronger drive.
            gain = 60.0
        with torch.no_grad():  # one input in [0, 1]: a strong input weight to spike from the start
            self.layer.w_in.mul_(gain)
        self.readout = nn.Linear(hidden, 10)

    def forward(self, x):
        spikes, state = self.layer(x)            # [B, T, hidden]; state[0]: the last membrane
        return self.readout(state[0]), spikes


def with_backend(model, backend):
    """A copy of model whose spiking layers run with `backend`."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, (RecurrentLIF, RecurrentAdLIF, RecurrentCubaLIF)):
            module.backend = backend
    return model


def run_epoch(model, loader, optimizer=None, device="cpu", after_step=None):
    """One pass; trains if an optimizer is given (calling after_step, if
    given, after each optimiser step). Returns (loss, accuracy, seconds)."""
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
                if after_step is not None:
                    after_step()
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
        m = with_backend(model, backend).double()
        loss = nn.functional.cross_entropy(m(x.double())[0], y)
        grads.append(torch.autograd.grad(loss, list(m.parameters())))
    return max((a - b).abs().max().item() for a, b in zip(*grads))


def batch_seconds(model, loader, lr, device, batches):
    """Seconds per training step (forward, backward, Adam step), the mean
    over the loader's first `batches` batches."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    taken, start = 0, time.perf_counter()
    for x, y in loader:
        if taken == batches:
            break
        logits, _ = model(x.to(device))
        loss = nn.functional.cross_entropy(logits, y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        taken += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / max(taken, 1)


LAYER_NAMES = {"lif": "RecurrentLIF", "adlif": "RecurrentAdLIF", "cuba": "RecurrentCubaLIF",
               "lif_delays": "RecurrentLIF + delays"}

# The delays learn faster than the weights (as in DelRec, whose delays have
# their own, larger learning rate): a step of lr = 1e-2 would move a delay
# by about one step of time over the whole run.
DELAY_LR_FACTOR = 10.0


def delay_sigma_at(epoch, epochs, max_delay):
    """DelRec's annealing of the kernel's spread: sigma_0 * 0.95^(100 e / E)
    at epoch e of E, from sigma_0 = max_delay / 2 (a kernel wide enough to
    give every delay a gradient from the whole range) down to about
    0.6 % of it; the last epoch trains with sigma = 0, as the test runs."""
    if epoch >= epochs - 1 and epochs > 1:
        return 0.0
    return max_delay / 2 * 0.95 ** (100 * epoch / epochs)


def train_pixel_models(args, make_loader):
    """The pixel-by-pixel task: trains a PixelNet with each layer kind, with
    the same hidden size, epochs, learning rate, random stream and batches;
    then times a few training batches with each backend from the trained
    weights (the autograd loop is too slow at T = 64 to train with for a
    demo) and compares the two backends' gradients on one batch. Returns
    {kind: results}."""
    from tqdm import tqdm

    train_set, test_set = load_digits_sequences(args.seed, args.limit, pixels=True)
    test_loader = make_loader(test_set, False)
    results = {}
    for kind in LAYER_NAMES:
        train_loader = make_loader(train_set, True)  # the same batches for each
        torch.manual_seed(args.seed)
        model = PixelNet(kind, args.pixel_hidden, args.backend, args.max_delay).to(args.device)
        delayed = kind == "lif_delays"
        delays = [model.layer.delays] if delayed else []
        others = [p for p in model.parameters() if all(p is not d for d in delays)]
        optimizer = torch.optim.Adam(
            [{"params": others}] + ([{"params": delays, "lr": args.pixel_lr * DELAY_LR_FACTOR}]
                                    if delayed else []), lr=args.pixel_lr)
        # The learning rate decays to 0 over the epochs (cosine): on these long
        # sequences the test accuracy of a constant rate swings by several
        # points from epoch to epoch; the decay lets both layers settle.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.pixel_epochs)
        history = {"loss": [], "train_acc": [], "test_acc": [], "seconds": []}
        bar = tqdm(range(args.pixel_epochs), desc=f"pixels, {LAYER_NAMES[kind]} ({args.backend})",
                   unit="epoch")
        for epoch in bar:
            if delayed:
                model.layer.delay_sigma = delay_sigma_at(epoch, args.pixel_epochs, args.max_delay)
            loss, acc, seconds = run_epoch(model, train_loader, optimizer, args.device,
                                           after_step=model.layer.clamp_delays_ if delayed
                                           else None)
            schedule.step()
            _, test_acc, _ = run_epoch(model, test_loader, device=args.device)
            for key, value in zip(history, (loss, acc, test_acc, seconds)):
                history[key].append(value)
            bar.set_postfix(loss=f"{loss:.3f}", train=f"{acc:.3f}", test=f"{test_acc:.3f}")
        per_epoch = {backend: len(train_loader) * batch_seconds(
                         with_backend(model, backend), make_loader(train_set, True),
                         args.pixel_lr, args.device, args.timing_batches)
                     for backend in ("fused", "autograd")}
        x, y = next(iter(test_loader))
        extra = {}
        if delayed:  # DelRec's evaluation: integer delays read without spread
            model.layer.delay_sigma = 0.0
            model.layer.round_delays_()
            extra = {"test_accuracy_unrounded": history["test_acc"][-1],
                     "max_delay": args.max_delay, "delay_lr_factor": DELAY_LR_FACTOR,
                     "delays": model.layer.delays.detach().cpu().tolist()}
            history["test_acc"][-1] = run_epoch(model, test_loader, device=args.device)[1]
        results[kind] = {
            "layer": LAYER_NAMES[kind],
            "test_accuracy": history["test_acc"][-1], **extra,
            "epoch_seconds_fused": per_epoch["fused"],
            "epoch_seconds_autograd": per_epoch["autograd"],
            "speedup": per_epoch["autograd"] / per_epoch["fused"],
            "max_grad_diff": max_grad_difference(model, x.to(args.device), y.to(args.device)),
            "history": history,
        }
    return results


def save_plots(history, spikes, out, pixel=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    panels = 3 if pixel else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.5))
    ax1, ax2 = axes[:2]
    ax1.plot(epochs, history["loss"], label="train")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax2.plot(epochs, history["train_acc"], label="train")
    ax2.plot(epochs, history["test_acc"], label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    ax2.legend()
    if pixel:
        ax3 = axes[2]
        for kind, result in pixel.items():
            curve = result["history"]
            line, = ax3.plot(range(1, len(curve["test_acc"]) + 1), curve["test_acc"],
                             label=f"{result['layer']} test")
            ax3.plot(range(1, len(curve["train_acc"]) + 1), curve["train_acc"], ":",
                     color=line.get_color(), label=f"{result['layer']} train")
        ax3.set(xlabel="epoch", ylabel="accuracy", title="pixel by pixel (T = 64)", ylim=(0, 1))
        ax3.legend(fontsize="small")
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
    parser.add_argument("--pixel-epochs", type=int, default=40,
                        help="epochs of the pixel-by-pixel task, for each layer (0 skips it)")
    parser.add_argument("--pixel-hidden", type=int, default=64,
                        help="hidden size of the three layers in the pixel-by-pixel task")
    parser.add_argument("--pixel-lr", type=float, default=1e-2,
                        help="initial learning rate of the pixel-by-pixel task (cosine decay)")
    parser.add_argument("--max-delay", type=int, default=16,
                        help="the longest recurrent delay of the pixel task's delayed layer")
    parser.add_argument("--timing-batches", type=int, default=5,
                        help="training batches timed per backend in the pixel-by-pixel task")
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
        m = with_backend(model, backend)
        torch.manual_seed(args.seed)
        epoch_seconds[backend] = run_epoch(m, loader(train_set, True),
                                           torch.optim.Adam(m.parameters(), lr=args.lr), args.device)[2]
    x, y = next(iter(test_loader))
    grad_diff = max_grad_difference(model, x.to(args.device), y.to(args.device))
    pixel = train_pixel_models(args, loader) if args.pixel_epochs > 0 else None

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
    if pixel is not None:
        summary["pixel"] = {"hidden": args.pixel_hidden, "epochs": args.pixel_epochs,
                            "lr": args.pixel_lr, "timing_batches": args.timing_batches, **pixel}
    print(f"test accuracy        {summary['test_accuracy']:.3f}  ({len(test_set)} held-out digits)")
    print(f"seconds per epoch    fused {epoch_seconds['fused']:.2f}   "
          f"autograd {epoch_seconds['autograd']:.2f}   ({summary['speedup']:.1f}x)")
    print(f"max |grad fused - grad autograd| on one batch (float64): {grad_diff:.2e}")
    if pixel is not None:
        print(f"pixel by pixel (T = 64, one pixel per step), hidden {args.pixel_hidden}, "
              f"{args.pixel_epochs} epochs each; seconds per epoch from {args.timing_batches} "
              "training batches per backend:")
        for result in pixel.values():
            print(f"  {result['layer']:<21} test accuracy {result['test_accuracy']:.3f}   "
                  f"seconds per epoch fused {result['epoch_seconds_fused']:.2f}   "
                  f"autograd {result['epoch_seconds_autograd']:.2f}   ({result['speedup']:.1f}x)   "
                  f"max |grad diff| {result['max_grad_diff']:.1e}")
            if "test_accuracy_unrounded" in result:
                print(f"  {'':<21} (delays rounded to integers in [1, {result['max_delay']}] "
                      f"for the test, as DelRec does; before rounding "
                      f"{result['test_accuracy_unrounded']:.3f})")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
        with torch.no_grad():
            _, spikes = model(test_set[0][0][None].to(args.device))
        save_plots(history, spikes[0], args.out, pixel)
        print(f"wrote {args.out / 'summary.json'}, training_curves.png, spike_raster.png")
    return summary


if __name__ == "__main__":
    main()
