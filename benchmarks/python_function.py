"""A hand-written torch.autograd.Function for the benchmark's recurrent LIF
layer, in the style of lava-dl's CustomRecurrent: the forward is a per-step
Python loop without autograd, the backward a per-step Python loop for the
reverse recurrence, after which the input and weight gradients are each one
matrix product over all T*B rows.

It computes only the benchmark's configuration (peers.OPTIONS): reset by
subtraction of the previous step's spike, reset detached, sigmoid surrogate,
scalar alpha and theta, a bias, zero initial state.

    spikes, membrane = RecurrentLIFFunction.apply(x, w_in, w_rec, bias, alpha, theta, slope)
"""
import torch


def sigmoid_surrogate(v, slope):
    """d/dv sigmoid(slope * v), the stand-in for dH/dv."""
    s = torch.sigmoid(slope * v)
    return slope * s * (1 - s)


class RecurrentLIFFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_in, w_rec, bias, alpha, theta, slope):
        # autograd.Function.forward runs without autograd: no per-step graph.
        T, B, _ = x.shape
        N = w_in.shape[0]
        # The same operations in the same order as torch_ext.recurrent_lif_ref,
        # so that the spikes match it exactly.
        current = x @ w_in.T + bias
        spikes = x.new_empty(T, B, N)
        membrane = x.new_empty(T, B, N)
        u = x.new_zeros(B, N)
        s = x.new_zeros(B, N)
        for t in range(T):
            u = alpha * u + current[t] + s @ w_rec.T - theta * s
            s = (u - theta > 0).to(u.dtype)
            membrane[t] = u
            spikes[t] = s
        ctx.save_for_backward(x, w_in, w_rec, spikes, membrane)
        ctx.alpha, ctx.theta, ctx.slope = alpha, theta, slope
        return spikes, membrane

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_spikes, grad_membrane):
        x, w_in, w_rec, spikes, membrane = ctx.saved_tensors
        T, B, N = membrane.shape
        F = x.shape[2]
        surrogate = sigmoid_surrogate(membrane - ctx.theta, ctx.slope)
        # grad_u[t] = dL/du[t], through all later steps. u[t+1] depends on u[t]
        # through the decay and on s[t] through w_rec (the reset is detached).
        grad_u = torch.empty_like(membrane)
        grad_u_next = membrane.new_zeros(B, N)
        for t in reversed(range(T)):
            grad_s = grad_spikes[t] + grad_u_next @ w_rec
            grad_u_next = grad_membrane[t] + ctx.alpha * grad_u_next + surrogate[t] * grad_s
            grad_u[t] = grad_u_next
        grad_u = grad_u.reshape(T * B, N)
        needs = ctx.needs_input_grad
        grad_x = (grad_u @ w_in).reshape(T, B, F) if needs[0] else None
        grad_w_in = grad_u.T @ x.reshape(T * B, F) if needs[1] else None
        grad_w_rec = None
        if needs[2]:  # row t*B + b of grad_u pairs with the spikes of step t - 1
            previous_spikes = torch.cat([spikes.new_zeros(1, B, N), spikes[:-1]]).reshape(T * B, N)
            grad_w_rec = grad_u.T @ previous_spikes
        grad_bias = grad_u.sum(0) if needs[3] else None
        return grad_x, grad_w_in, grad_w_rec, grad_bias, None, None, None
