"""Hand-written torch.autograd.Functions for the benchmark's recurrent LIF
layer (and, below, its adaptive and current-based layers), in the style of lava-dl's CustomRecurrent: the forward is a per-step
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


def input_and_weight_grads(grad_current, x, w_in, spikes, needs=(True,) * 4):
    """(grad_x, grad_w_in, grad_w_rec, grad_bias) from grad_current [T, B, N],
    the gradient of the input current I[t] + rec[t], each one matrix product
    (or sum) over all T*B rows; None where `needs` (the Function's
    needs_input_grad for x, w_in, w_rec, bias) says so."""
    T, B, N = grad_current.shape
    F = x.shape[2]
    rows = grad_current.reshape(T * B, N)
    grad_x = (rows @ w_in).reshape(T, B, F) if needs[0] else None
    grad_w_in = rows.T @ x.reshape(T * B, F) if needs[1] else None
    grad_w_rec = None
    if needs[2]:  # row t*B + b pairs with the spikes of step t - 1
        previous_spikes = torch.cat([spikes.new_zeros(1, B, N), spikes[:-1]]).reshape(T * B, N)
        grad_w_rec = rows.T @ previous_spikes
    grad_bias = rows.sum(0) if needs[3] else None
    return grad_x, grad_w_in, grad_w_rec, grad_bias


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
        surrogate = sigmoid_surrogate(membrane - ctx.theta, ctx.slope)
        # grad_u[t] = dL/du[t], through all later steps. u[t+1] depends on u[t]
        # through the decay and on s[t] through w_rec (the reset is detached).
        grad_u = torch.empty_like(membrane)
        grad_u_next = membrane.new_zeros(B, N)
        for t in reversed(range(T)):
            grad_s = grad_spikes[t] + grad_u_next @ w_rec
            grad_u_next = grad_membrane[t] + ctx.alpha * grad_u_next + surrogate[t] * grad_s
            grad_u[t] = grad_u_next
        return (*input_and_weight_grads(grad_u, x, w_in, spikes, ctx.needs_input_grad),
                None, None, None)


class RecurrentAdLIFFunction(torch.autograd.Function):
    """The same style for the adaptive (SE-adLIF) layer in the benchmark's
    adaptive configuration (peers.ADAPTIVE_OPTIONS): reset to zero, detached,
    sigmoid surrogate, per-neuron alpha, beta, a and b (learnable), a scalar
    theta, a bias, zero initial state. Saves Q[t] (the reset membrane) and
    the drive I[t] + rec[t] - A[t-1] per step for alpha's gradient.

        spikes, membrane, adaptation = RecurrentAdLIFFunction.apply(
            x, w_in, w_rec, bias, alpha, beta, a, b, theta, slope)
    """

    @staticmethod
    def forward(ctx, x, w_in, w_rec, bias, alpha, beta, a, b, theta, slope):
        T, B, _ = x.shape
        N = w_in.shape[0]
        current = x @ w_in.T + bias
        spikes, membrane, adaptation = (x.new_empty(T, B, N) for _ in range(3))
        reset_membrane, drive = x.new_empty(T, B, N), x.new_empty(T, B, N)
        v, adapt, s = (x.new_zeros(B, N) for _ in range(3))
        for t in range(T):
            # The order of torch_ext.recurrent_adlif_ref, so the spikes match it.
            q = v * (1 - s)
            d = (current[t] + s @ w_rec.T) - adapt
            v = alpha * q + (1 - alpha) * d
            s = (v - theta > 0).to(v.dtype)
            adapt = beta * adapt + (1 - beta) * (a * (v * (1 - s)) + b * s)
            spikes[t], membrane[t], adaptation[t] = s, v, adapt
            reset_membrane[t], drive[t] = q, d
        ctx.save_for_backward(x, w_in, w_rec, alpha, beta, a, b, spikes, membrane, adaptation,
                              reset_membrane, drive)
        ctx.theta, ctx.slope = theta, slope
        return spikes, membrane, adaptation

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_spikes, grad_membrane, grad_adaptation):
        (x, w_in, w_rec, alpha, beta, a, b, spikes, membrane, adaptation, reset_membrane,
         drive) = ctx.saved_tensors
        # Outputs without a gradient arrive as zeros (materialised by autograd).
        T, B, N = membrane.shape
        surrogate = sigmoid_surrogate(membrane - ctx.theta, ctx.slope)
        grad_v, grad_a = torch.empty_like(membrane), torch.empty_like(membrane)
        gv_next, ga_next = membrane.new_zeros(B, N), membrane.new_zeros(B, N)
        for t in reversed(range(T)):
            ga = grad_adaptation[t] + beta * ga_next - (1 - alpha) * gv_next
            gp = alpha * gv_next + (1 - beta) * a * ga  # the reset membrane V[t] (1 - S[t])
            gs = grad_spikes[t] + ((1 - alpha) * gv_next) @ w_rec + (1 - beta) * b * ga
            gv_next = grad_membrane[t] + gs * surrogate[t] + gp * (1 - spikes[t])
            ga_next = ga
            grad_v[t], grad_a[t] = gv_next, ga
        previous_adaptation = torch.cat([adaptation.new_zeros(1, B, N), adaptation[:-1]])
        reset_now = membrane * (1 - spikes)
        grads = input_and_weight_grads((1 - alpha) * grad_v, x, w_in, spikes)
        grad_alpha = (grad_v * (reset_membrane - drive)).sum((0, 1))
        grad_beta = (grad_a * (previous_adaptation - (a * reset_now + b * spikes))).sum((0, 1))
        grad_a_param = ((1 - beta) * grad_a * reset_now).sum((0, 1))
        grad_b_param = ((1 - beta) * grad_a * spikes).sum((0, 1))
        return (*grads, grad_alpha, grad_beta, grad_a_param, grad_b_param, None, None)


class RecurrentCubaLIFFunction(torch.autograd.Function):
    """The same style for the current-based (CUBA) layer in the benchmark's
    configuration (peers.OPTIONS, as the LIF layer's): reset by subtraction,
    detached, sigmoid surrogate, scalar alpha, alpha_syn and theta, a bias,
    zero initial state.

        spikes, membrane, current = RecurrentCubaLIFFunction.apply(
            x, w_in, w_rec, bias, alpha, alpha_syn, theta, slope)
    """

    @staticmethod
    def forward(ctx, x, w_in, w_rec, bias, alpha, alpha_syn, theta, slope):
        T, B, _ = x.shape
        N = w_in.shape[0]
        current_in = x @ w_in.T + bias
        spikes, membrane, current = (x.new_empty(T, B, N) for _ in range(3))
        u, j, s = (x.new_zeros(B, N) for _ in range(3))
        for t in range(T):
            # The order of torch_ext.recurrent_cubalif_ref, so the spikes match it.
            j = alpha_syn * j + current_in[t] + s @ w_rec.T
            u = alpha * u + j - theta * s
            s = (u - theta > 0).to(u.dtype)
            spikes[t], membrane[t], current[t] = s, u, j
        ctx.save_for_backward(x, w_in, w_rec, spikes, membrane)
        ctx.alpha, ctx.alpha_syn, ctx.theta, ctx.slope = alpha, alpha_syn, theta, slope
        return spikes, membrane, current

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_spikes, grad_membrane, grad_current):
        x, w_in, w_rec, spikes, membrane = ctx.saved_tensors
        T, B, N = membrane.shape
        surrogate = sigmoid_surrogate(membrane - ctx.theta, ctx.slope)
        # S[t] reaches J[t+1] through w_rec (the reset is detached); U[t]
        # reaches U[t+1] through alpha and J[t] reaches J[t+1] through alpha_syn.
        grad_j = torch.empty_like(membrane)
        gu_next, gj_next = membrane.new_zeros(B, N), membrane.new_zeros(B, N)
        for t in reversed(range(T)):
            grad_s = grad_spikes[t] + gj_next @ w_rec
            gu_next = grad_membrane[t] + ctx.alpha * gu_next + surrogate[t] * grad_s
            gj_next = grad_current[t] + gu_next + ctx.alpha_syn * gj_next
            grad_j[t] = gj_next
        return (*input_and_weight_grads(grad_j, x, w_in, spikes, ctx.needs_input_grad),
                None, None, None, None)
