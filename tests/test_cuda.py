"""CUDA kernels: registered in every CUDA build; checked against the CPU op and
the reference wherever a GPU is present (skipped with a reason otherwise), in
both CUDA designs: the per-step one (default) and the persistent one
(TORCH_EXT_CUDA_PERSISTENT=1, read at every call), which must give the same
forward bitwise and the same gradients to rounding."""
import itertools
import os
import shutil
import subprocess

import pytest
import torch

import torch_ext
from conftest import LIFArgs, cuda_only, make_inputs, run_with_grads
from mixed_precision_helpers import ENV, dtype_id
from test_gradients import OPTION_GRID
from test_mixed_precision import small_inputs
from torch_ext import _C

import neurons

# Every model's forward and backward op.
OPS = tuple(name for op in neurons.OPS for name in (op, f"_{op}_backward"))
DESIGNS = ("default", "persistent")


def use_design(monkeypatch, design):
    if design == "persistent":
        monkeypatch.setenv("TORCH_EXT_CUDA_PERSISTENT", "1")
    else:
        monkeypatch.delenv("TORCH_EXT_CUDA_PERSISTENT", raising=False)


@pytest.fixture(params=DESIGNS)
def design(request, monkeypatch):
    """The test runs once per CUDA design (sizes or options the persistent
    design does not cover fall back to the per-step one)."""
    use_design(monkeypatch, request.param)
    return request.param


def cuda_buildable_here():
    """nvcc of the same CUDA major version as torch, and CUDA not turned off:
    then the build (CMakeLists.txt) must include CUDA."""
    if os.environ.get("TORCH_EXT_NO_CUDA") == "1":
        return False
    if torch.version.cuda is None or shutil.which("nvcc") is None:
        return False
    out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout
    return f"release {torch.version.cuda.split('.')[0]}." in out


def test_every_op_has_a_cuda_kernel_when_cuda_was_built():
    if not torch_ext.build_info()["cuda"]:
        assert not cuda_buildable_here(), "nvcc and a CUDA torch are here, but CUDA was not built"
        pytest.skip("CPU-only build")
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"torch_ext::{op}", "CUDA"), op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"torch_ext::{op}", "CPU"), op


def on(device, args):
    return LIFArgs(*[a.detach().to(device).requires_grad_(a.requires_grad)
                     if isinstance(a, torch.Tensor) else a for a in args])


def assert_same(a, b, rtol, atol):
    s1, u1, g1 = a
    s2, u2, g2 = b
    assert torch.equal(s1.cpu(), s2.cpu())
    torch.testing.assert_close(u1.cpu(), u2.cpu(), rtol=rtol, atol=atol)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x.cpu(), y.cpu(), rtol=rtol, atol=atol)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reset,detach,surrogate,alpha_shape,theta_shape,bias,state", OPTION_GRID)
def test_cuda_matches_cpu_and_reference(reset, detach, surrogate, alpha_shape, theta_shape, bias,
                                        state, dtype, design):
    """The same option grid as the CPU tests. float32: the recurrence is exact
    float32 on both devices, but the input projection's GEMM may round
    differently, so examples with a membrane within 1e-4 of theta are skipped
    (a tie could legitimately flip) and the tolerance is float32's."""
    args = make_inputs(dtype=dtype, alpha_shape=alpha_shape, theta_shape=theta_shape, bias=bias,
                       state=state)
    opts = dict(reset=reset, detach_reset=detach, surrogate=surrogate)
    cpu = run_with_grads(torch_ext.recurrent_lif, args, **opts)
    cpu_membrane = cpu[1]
    if dtype == torch.float32 and (cpu_membrane - args.theta).abs().min() < 1e-4:
        pytest.skip("a membrane within rounding distance of the threshold")
    gpu = run_with_grads(torch_ext.recurrent_lif, on("cuda", args), **opts)
    ref = run_with_grads(torch_ext.recurrent_lif_ref, on("cuda", args), **opts)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert_same(gpu, cpu, tol, tol)
    assert_same(gpu, ref, tol, tol)


@cuda_only
@pytest.mark.parametrize("tf32", [False, True])
def test_cuda_float32_matches_cpu_float64_away_from_threshold(tf32, design):
    args64 = make_inputs(T=30, B=4, F=6, N=8, seed=11)
    s64, u64, g64 = run_with_grads(torch_ext.recurrent_lif, args64)
    assert (u64 - 1.0).abs().min() > 1e-3
    args32 = [a.detach().float().cuda().requires_grad_() if isinstance(a, torch.Tensor) else a
              for a in args64]
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        s32, u32, g32 = run_with_grads(torch_ext.recurrent_lif, args32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    # TF32 rounds the input projection to ~1e-3 relative; without it float32 rounding.
    tol = 5e-3 if tf32 else 1e-4
    assert torch.equal(s32.double().cpu(), s64)
    torch.testing.assert_close(u32.double().cpu(), u64, rtol=tol, atol=tol)
    for a, b in zip(g32, g64):
        torch.testing.assert_close(a.double().cpu(), b, rtol=tol * 10, atol=tol * 10)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_inputs_compute_in_float32(dtype, design):
    args = on("cuda", make_inputs(dtype=dtype, state=True))
    as_float = [a.detach().float().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    s_h, u_h, g_h = run_with_grads(torch_ext.recurrent_lif, args)
    s_f, u_f, g_f = run_with_grads(torch_ext.recurrent_lif, as_float)
    assert s_h.dtype == dtype and u_h.dtype == torch.float32
    assert torch.equal(s_h.float(), s_f)
    torch.testing.assert_close(u_h, u_f, rtol=1e-5, atol=1e-5)
    for got, want in zip(g_h, g_f):
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


@cuda_only
@pytest.mark.parametrize("T,B,N", [(3000, 2, 8), (20, 3, 1500), (0, 3, 4), (5, 0, 4)])
def test_cuda_long_and_large_and_empty(T, B, N, design):
    args = make_inputs(T=T, B=B, F=N, N=N, state=True)
    cpu = run_with_grads(torch_ext.recurrent_lif, args)
    gpu = run_with_grads(torch_ext.recurrent_lif, on("cuda", args))
    assert_same(gpu, cpu, 1e-9, 1e-9)


@cuda_only
def test_cuda_non_contiguous_inputs_and_side_stream(design):
    args = on("cuda", make_inputs(state=True, requires_grad=False))
    want = torch_ext.recurrent_lif(*args, reset="zero")
    x = args.x.transpose(0, 1).contiguous().transpose(0, 1)
    w_in = args.w_in.t().contiguous().t()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = torch_ext.recurrent_lif(*args._replace(x=x, w_in=w_in), reset="zero")
    torch.cuda.current_stream().wait_stream(stream)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@cuda_only
def test_cuda_mixed_devices_name_the_argument():
    args = make_inputs(requires_grad=False)
    with pytest.raises(ValueError, match="'w_in'"):
        torch_ext.recurrent_lif(*args._replace(x=args.x.cuda()))
    with pytest.raises(ValueError, match="'w_rec'"):
        torch_ext.recurrent_lif(*args._replace(x=args.x.cuda(), w_in=args.w_in.cuda()))


@cuda_only
def test_cuda_deterministic(design):
    args = on("cuda", make_inputs(T=50, B=16, F=32, N=64, dtype=torch.float32, state=True))
    first = run_with_grads(torch_ext.recurrent_lif, args)
    second = run_with_grads(torch_ext.recurrent_lif, args)
    assert_same(first, second, 0, 0)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_equals_float32_on_rounded_inputs(dtype):
    torch.manual_seed(0)
    layer = torch_ext.RecurrentLIF(16, 32, return_membrane=True).cuda()
    x = torch.randn(20, 8, 16, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        spikes, membrane, (u, _) = layer(x)
    # x stays float32 under autocast (its weights are cast): so do the spikes.
    assert spikes.dtype == membrane.dtype == u.dtype == torch.float32
    rounded = [p.detach().to(dtype).float() for p in (layer.w_in, layer.w_rec, layer.bias)]
    spikes_r, membrane_r = torch_ext.recurrent_lif(x.to(dtype).float(), *rounded, layer.alpha,
                                                   layer.theta)
    assert torch.equal(spikes.float(), spikes_r)
    torch.testing.assert_close(membrane, membrane_r, rtol=1e-5, atol=1e-5)


@cuda_only
def test_module_moves_between_devices():
    layer = torch_ext.RecurrentLIF(3, 4, learn_alpha=True, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    want = layer(x)[0]
    got = layer.cuda()(x.cuda())[0]
    assert layer.alpha.device.type == "cuda"
    assert torch.equal(got.cpu(), want)


def test_build_info_names_the_cuda_designs(monkeypatch):
    info = torch_ext.build_info()
    if not info["cuda"]:
        assert info["cuda_designs"] == [] and info["cuda_design_requested"] is None
        assert not hasattr(_C, "cuda_design_for")
        pytest.skip("CPU-only build")
    assert info["cuda_designs"] == ["per_step", "persistent"]
    use_design(monkeypatch, "persistent")
    assert torch_ext.build_info()["cuda_design_requested"] == "persistent"
    use_design(monkeypatch, "default")
    assert torch_ext.build_info()["cuda_design_requested"] == "per_step"
    # Without the switch the answer needs no device.
    design, why = _C.cuda_design_for(100, 8, 64, False)
    assert design == "per_step" and "TORCH_EXT_CUDA_PERSISTENT" in why


# (T, B, N, dtype, the design TORCH_EXT_CUDA_PERSISTENT=1 takes on a GPU with
# at least 160 KiB of shared memory per block: A100, H100, H200). The slice of
# W_rec a block keeps is N * 32 scalars, so these cover both sides of the
# boundary; the fallback must give the same results all the same.
CROSS_DESIGN_SIZES = [
    (50, 5, 37, torch.float64, "persistent"),  # a partial last tile, 5 rows
    (40, 64, 1024, torch.float32, "persistent"),  # the target N: a 128 KiB slice
    (20, 4, 1024, torch.float64, "per_step"),  # the same in float64: 256 KiB, falls back
    (20, 3, 2048, torch.float32, "per_step"),  # 256 KiB: falls back
]
CROSS_DESIGN_VARIANTS = {  # name -> (recurrent_lif options, one-to-one w_rec, w_rec at all)
    "dense": (dict(), False, True),
    "reset_zero_triangle": (dict(reset="zero", detach_reset=True, surrogate="triangle"), False,
                            True),
    "lengths": (dict(), False, True),
    "low_memory": (dict(save_membrane=False), False, True),
    "one_to_one": (dict(), True, True),
    "no_recurrence": (dict(), False, False),
}


def assert_close_to_scale(got, want, tol):
    """max|got - want| <= tol * max(1, max|want|)."""
    scale = max(1.0, want.abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=0, atol=tol * scale)


@cuda_only
def test_cuda_design_for_reports_fit_and_fallback(monkeypatch):
    use_design(monkeypatch, "persistent")
    for T, B, N, dtype, expected in CROSS_DESIGN_SIZES:
        design, why = _C.cuda_design_for(T, B, N, dtype == torch.float64)
        assert design == expected, (T, B, N, dtype, why)
    design, why = _C.cuda_design_for(1, 4, 64, False)
    assert design == "per_step" and "T < 2" in why
    design, why = _C.cuda_design_for(10, 4, 8192, False)
    assert design == "per_step" and "shared memory" in why


@cuda_only
@pytest.mark.parametrize("variant", CROSS_DESIGN_VARIANTS)
@pytest.mark.parametrize("T,B,N,dtype,expected", CROSS_DESIGN_SIZES)
def test_cuda_designs_agree(T, B, N, dtype, expected, variant, monkeypatch):
    """The forward is bitwise the same in both designs (the same sums of
    weights in the same order), so spikes and membranes must be equal. The
    backward's recurrent term gU[t+1] @ w_rec is a cuBLAS product in the
    per-step design and a sum over ascending n in the persistent one: the same
    terms rounded in another order, differences carried back through T steps.
    Hence the file's tolerances relative to each gradient's scale (1e-10 in
    float64, 1e-4 in float32), with TF32 off (TF32 rounds the cuBLAS product to
    about 1e-3)."""
    options, one_to_one, has_w_rec = CROSS_DESIGN_VARIANTS[variant]
    args = make_inputs(T=T, B=B, F=min(N, 64), N=N, dtype=dtype, device="cuda", state=True,
                       alpha_shape=(N,), w_rec=has_w_rec, seed=3)
    if one_to_one:
        args = args._replace(w_rec=(torch.rand(N, dtype=dtype, device="cuda") * 0.8)
                             .requires_grad_())
    if variant == "lengths":  # 0, T and steps between
        options = dict(lengths=torch.linspace(0, T, B, device="cuda").long())
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        results = {}
        for design in DESIGNS:
            use_design(monkeypatch, design)
            results[design] = run_with_grads(torch_ext.recurrent_lif, args, **options)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    (s1, u1, g1), (s2, u2, g2) = results["default"], results["persistent"]
    assert 0.02 < s1.float().mean().item() < 0.98, "inputs must give a non-trivial spike rate"
    assert torch.equal(s1, s2) and torch.equal(u1, u2)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for got, want in zip(g2, g1):
        assert_close_to_scale(got, want, tol)
    if has_w_rec and not one_to_one:  # the persistent design ran where it was meant to
        use_design(monkeypatch, "persistent")
        assert _C.cuda_design_for(T, B, N, dtype == torch.float64)[0] == expected


@cuda_only
def test_cuda_designs_spread_a_non_finite_weight_alike(monkeypatch):
    """A source with an inf weight takes part in every step, fired or not
    (0 * inf = NaN, as in the dense product), in both designs."""
    args = make_inputs(T=20, B=3, F=8, N=40, dtype=torch.float32, device="cuda",
                       requires_grad=False)
    w_rec = args.w_rec.clone()
    w_rec[5, 7] = float("inf")
    outputs = []
    for design in DESIGNS:
        use_design(monkeypatch, design)
        outputs.append(torch_ext.recurrent_lif(*args._replace(w_rec=w_rec)))
    assert outputs[0][1].isnan().any()
    for a, b in zip(*outputs):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# ---------------------------------------------------------------- every model

# float64 over the whole option grid of the CPU tests, for every model of the
# registry; float32 (slower to compare, the same kernels) with the sigmoid
# surrogate and an input projection.
MODEL_OPTION_GRID = list(itertools.product(neurons.RESETS, [True, False], neurons.SURROGATES,
                                           neurons.RECURRENCES, [True, False]))
MODEL_CUDA_GRID = [(*options, torch.float64) for options in MODEL_OPTION_GRID] + [
    (*options, torch.float32) for options in MODEL_OPTION_GRID
    if options[2] == "sigmoid" and options[4]]


@cuda_only
@pytest.mark.parametrize("op", neurons.OPS)
@pytest.mark.parametrize("reset,detach,surrogate,recurrent,w_in,dtype", MODEL_CUDA_GRID)
def test_every_model_cuda_matches_cpu(op, reset, detach, surrogate, recurrent, w_in, dtype,
                                      design):
    """Each model's op on CUDA against the CPU op, with initial state and
    lengths; float32 as for the LIF op (examples with a membrane within 1e-4
    of theta skipped)."""
    check_on_cuda(op, dict(dtype=dtype, w_in=w_in, recurrent=recurrent),
                  dict(reset=reset, detach_reset=detach, surrogate=surrogate))


@cuda_only
@pytest.mark.parametrize("op", neurons.OPS)
@pytest.mark.parametrize("recurrent", ["all_to_all", "one_to_one"])
def test_every_model_cuda_several_tiles_groups_and_scalar_parameters(op, recurrent, design):
    """N = 40 (two neuron tiles, a partial one), B = 20 (several batch
    groups in the persistent design), 0-dim parameters (stride 0)."""
    check_on_cuda(op, dict(T=12, B=20, N=40, recurrent=recurrent, params="scalar"), {})


def check_on_cuda(op, input_options, options):
    """The op on CUDA against the CPU op, float64 unless said, with an
    initial state and lengths that include a row taking no step."""
    dtype = input_options.get("dtype", torch.float64)
    args = neurons.make_inputs(op, state=True, **{"B": 4, **input_options})
    T, B = args.x.shape[:2]
    options = dict(options, lengths=torch.tensor([T, T - 3, 1, 0] + [T - 1] * (B - 4)))
    fn = neurons.FUSED[op]
    cpu = neurons.run_with_grads(fn, args, **options)
    if dtype == torch.float32 and (cpu[0][1] - args.theta.detach()).abs().min() < 1e-4:
        pytest.skip("a membrane within float32 rounding of the threshold")
    cuda_args = type(args)(*[a.detach().cuda().requires_grad_(a.requires_grad)
                             if isinstance(a, torch.Tensor) else a for a in args])
    options["lengths"] = options["lengths"].cuda()
    gpu = neurons.run_with_grads(fn, cuda_args, **options)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    assert torch.equal(cpu[0][0], gpu[0][0].cpu())
    for got, want in zip([*gpu[0][1:], *gpu[1]], [*cpu[0][1:], *cpu[1]]):
        torch.testing.assert_close(got.cpu(), want, **tol)


@cuda_only
@pytest.mark.parametrize("op", neurons.OPS)
def test_every_model_cuda_low_memory_mode_bitwise_equal(op, design):
    args = neurons.make_inputs(op, dtype=torch.float32, state=True)
    cuda_args = type(args)(*[a.detach().cuda().requires_grad_(a.requires_grad)
                             if isinstance(a, torch.Tensor) else a for a in args])
    fn = neurons.FUSED[op]
    saved = neurons.run_with_grads(fn, cuda_args)
    replayed = neurons.run_with_grads(fn, cuda_args, **{neurons.NEURONS[op].save_flag: False})
    for a, b in zip([*saved[0], *saved[1]], [*replayed[0], *replayed[1]]):
        assert torch.equal(a, b)


@cuda_only
@pytest.mark.parametrize("op", neurons.OPS)
@pytest.mark.parametrize("lengths", [False, True])
def test_every_model_cuda_gathers_binary_inputs_only_when_asked(op, lengths, design,
                                                                 monkeypatch):
    """Binary x on CUDA: dense products unless TORCH_EXT_BINARY_INPUTS=gather
    (the CUDA gather is off by default until a GPU has checked it); gathered,
    the same spikes and, to rounding, states and gradients as the CPU op in
    float64, and a replay of the forward in the low-memory mode bitwise."""
    from test_binary_inputs import binary_inputs
    args = binary_inputs(op, T=12, B=4, F=70, N=300, state=True)
    cuda_args = type(args)(*[a.detach().cuda().requires_grad_(a.requires_grad)
                             if isinstance(a, torch.Tensor) else a for a in args])
    density = torch.ops.torch_ext._binary_input_density
    monkeypatch.delenv("TORCH_EXT_BINARY_INPUTS", raising=False)
    assert density(cuda_args.x, cuda_args.w_in) == -1
    monkeypatch.setenv("TORCH_EXT_BINARY_INPUTS", "gather")
    assert density(cuda_args.x, cuda_args.w_in) == pytest.approx(args.x.mean().item())
    options = dict(lengths=torch.tensor([12, 0, 5, 11])) if lengths else {}
    fn = neurons.FUSED[op]
    cpu = neurons.run_with_grads(fn, args, **options)
    if lengths:
        options["lengths"] = options["lengths"].cuda()
    gpu = neurons.run_with_grads(fn, cuda_args, **options)
    assert torch.equal(cpu[0][0], gpu[0][0].cpu())
    for got, want in zip([*gpu[0][1:], *gpu[1]], [*cpu[0][1:], *cpu[1]]):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-10)
    replayed = neurons.run_with_grads(fn, cuda_args, **options,
                                      **{neurons.NEURONS[op].save_flag: False})
    assert all(torch.equal(a, b) for a, b in zip(gpu[1], replayed[1]))


@cuda_only
@pytest.mark.parametrize("path", ["on", "off"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", neurons.OPS)
def test_cuda_low_precision_products_match_the_reference(op, dtype, path, monkeypatch):
    """A float32 x with bfloat16/float16 weights on CUDA, on both product
    paths (TORCH_EXT_LOW_PRECISION_PRODUCTS=on: the low-precision operands on
    tensor cores with float32 accumulation, gU rounded for the backward's
    products; off, the default until a GPU has checked it: float32 products
    of the rounded operands), against the plain-autograd reference of the
    same call, as the CPU paths are (test_mixed_precision.py): spikes
    exactly, states to float32 rounding, gradients to the dtype's precision.
    TF32 off, so that the float32 products are float32."""
    monkeypatch.setenv(ENV, path)
    paths = torch_ext.build_info()["cuda_product_paths"]
    if path == "on" and "tensor cores" not in paths[dtype_id(dtype)]:
        pytest.skip("no low-precision CUDA products in this build (torch < 2.8)")
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        x, *weights = (leaf.cuda().detach().requires_grad_()
                       for leaf in small_inputs(seed=1, weight_dtype=dtype))
        got = getattr(torch_ext, op)(x, *weights)
        want = getattr(torch_ext, op + "_ref")(x, *weights)
        g = [torch.randn_like(o) for o in want]
        grads = torch.autograd.grad(got, [x, *weights], g)
        want_grads = torch.autograd.grad(want, [x, *weights], g)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    margin = (want[1].detach() - 1.0).abs().min()
    assert margin > 1e-4, "pick inputs without near-ties"
    assert got[0].dtype == torch.float32 and torch.equal(got[0], want[0])
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert [a.dtype for a in grads] == [torch.float32, dtype, dtype, dtype]
    eps = torch.finfo(dtype).eps
    for a, b in zip(grads, want_grads):
        assert (a.float() - b.float()).norm() <= 8 * eps * b.float().norm()


@cuda_only
@pytest.mark.parametrize("variant", ["plain", "lengths", "low_memory", "long_delays"])
@pytest.mark.parametrize("kind", ["axonal", "synaptic", "one_to_one", "mask_only"])
@pytest.mark.parametrize("op", neurons.OPS)
def test_cuda_delays_match_the_cpu_op(op, kind, variant, monkeypatch):
    """Recurrent delays on CUDA (TORCH_EXT_CUDA_DELAYS=1: never run on a GPU
    so far): the CPU op's spikes and states, and its gradients of every
    argument (the delays, sigma, the mask and the history included) to
    float64 rounding; with lengths, in the low-memory mode (the backward
    replays the forward) and with D longer than T."""
    from test_delays import inputs, run

    monkeypatch.setenv("TORCH_EXT_CUDA_DELAYS", "1")
    args, delays = inputs(op, kind, seed=3)
    options = {"lengths": dict(lengths=torch.tensor([11, 6, 0])),
               "low_memory": {neurons.NEURONS[op].save_flag: False}}.get(variant, {})
    if variant == "long_delays" and kind != "mask_only":
        D = 15  # T = 11: taps reach past the history's start
        delays = dict(delays, max_delay=D, delays=(delays["delays"].detach() * 3).requires_grad_())
        args = args._replace(s0=torch.cat([torch.zeros(D - 4, *args.s0.shape[1:],
                                                       dtype=torch.float64),
                                           args.s0.detach()]).requires_grad_())
    out = neurons.FUSED[op](*args, **delays, **options)
    g = torch.Generator().manual_seed(11)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in out]
    want, want_grads = run(neurons.FUSED[op], args, delays, weights=weights, **options)

    def on_cuda(value):
        if not isinstance(value, torch.Tensor):
            return value
        return value.detach().cuda().requires_grad_(value.requires_grad)

    cuda_args = type(args)(*[on_cuda(a) for a in args])
    cuda_delays = {k: on_cuda(v) for k, v in delays.items()}
    cuda_options = {k: v.cuda() if isinstance(v, torch.Tensor) else v
                    for k, v in options.items()}
    got, got_grads = run(neurons.FUSED[op], cuda_args, cuda_delays,
                         weights=[w.cuda() for w in weights], **cuda_options)
    assert torch.equal(got[0].cpu(), want[0])
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)
    for a, b in zip(got_grads, want_grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-10)
