"""Mixed precision on CPU: under torch.autocast (or for bfloat16/float16
inputs) the dense products run on the low-precision operands with float32
accumulation into float32 results (MKL's products; or, forced with
TORCH_EXT_LOW_PRECISION_PRODUCTS=off, in float32 on their float32 values:
each test runs both paths, whatever instructions this CPU has), while the state, the
time loop, the surrogate and every sum stay float32. So the op computes the
float32 op of the rounded operands, up to the summation order of the
products, and its gradients are closer to its own float32 run than the
expert autograd loop's under the same autocast (whose products round their
results to bfloat16)."""
import os
import platform

import pytest
import torch

import torch_ext
from benchmarks import peers
# PATHS: TORCH_EXT_LOW_PRECISION_PRODUCTS on (MKL's low-precision products) and off (float32)
from mixed_precision_helpers import LOW, PATHS, nonfinite_pattern_equal, use_path


def test_build_info_names_the_low_precision_products(monkeypatch):
    assert set(LOW) <= {"bfloat16", "float16"}
    if torch_ext.build_info()["blas"] == "MKL":  # torch's x86-64 wheels export them
        assert LOW == ["bfloat16", "float16"]
    info = torch_ext.build_info()
    assert set(info["cpu_low_precision_instructions"]) <= {"bfloat16", "float16"}
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else None
    if flags is not None and "x86_64" in platform.machine():  # the same answer as the kernel's
        has = {"bfloat16": "avx512_bf16" in flags or "amx_bf16" in flags,
               "float16": "avx512_fp16" in flags or "amx_fp16" in flags}
        assert info["cpu_low_precision_instructions"] == [d for d in has if has[d]]
    f32 = "float32 products of the upcast operands"
    # auto (the default): MKL's products where the CPU has instructions for
    # them, float32 elsewhere; on: MKL's wherever present; off: never. What
    # is present does not depend on the switch.
    for value, mkl in (("auto", set(LOW) & set(info["cpu_low_precision_instructions"])),
                       ("on", set(LOW)), ("off", set())):
        monkeypatch.setenv("TORCH_EXT_LOW_PRECISION_PRODUCTS", value)
        now = torch_ext.build_info()
        assert now["cpu_low_precision_products"] == LOW
        assert {d for d, path in now["cpu_product_paths"].items() if path != f32} == mkl, value
        # CUDA: tensor cores only when asked for (no GPU run has checked
        # them yet), where torch has aten::mm.dtype (2.8 and later).
        cuda = now["cuda_product_paths"]
        if not now["cuda"]:
            assert cuda is None
            continue
        has_mm_dtype = tuple(int(v) for v in now["torch_version"].split(".")[:2]) >= (2, 8)
        tensor_cores = {d for d, path in cuda.items() if "tensor cores" in path}
        assert tensor_cores == ({"bfloat16", "float16"} if value == "on" and has_mm_dtype
                                else set()), value
        assert all("TF32 where allowed" in path for d, path in cuda.items()
                   if d not in tensor_cores)


def test_unknown_product_path_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TORCH_EXT_LOW_PRECISION_PRODUCTS", "fast")
    x = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="TORCH_EXT_LOW_PRECISION_PRODUCTS must be auto, on or off"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch_ext.recurrent_lif(x, torch.randn(5, 4), None)


def rounded(t, dtype):
    return t.detach().to(dtype).float().requires_grad_(t.requires_grad)


def small_inputs(seed, weight_dtype=torch.float32):
    """Leaves x [12, 4, 24] (float32) and w_in, w_rec, bias (in weight_dtype)
    for a layer of 16 neurons that spikes at a moderate rate."""
    torch.manual_seed(seed)
    T, B, F, N = 12, 4, 24, 16
    x = torch.randn(T, B, F, requires_grad=True)
    weights = [torch.randn(N, F) * (3 / F ** 0.5), torch.randn(N, N) * (0.5 / N ** 0.5),
               torch.randn(N) * 0.1]
    return x, *(w.to(weight_dtype).requires_grad_() for w in weights)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["recurrent_lif", "recurrent_adlif", "recurrent_cubalif"])
def test_autocast_computes_the_float32_op_of_the_rounded_operands(dtype, op, path, monkeypatch):
    use_path(monkeypatch, path, dtype)
    x, w_in, w_rec, bias = small_inputs(seed=0)
    fn = getattr(torch_ext, op)
    with torch.autocast("cpu", dtype=dtype):
        low = fn(x, w_in, w_rec, bias)
    # x stays float32 under autocast (its weights are cast): so do the spikes.
    assert low[0].dtype == low[1].dtype == torch.float32
    ref_inputs = [rounded(t, dtype) for t in (x, w_in, w_rec, bias)]
    ref = fn(*ref_inputs)
    # The same spikes where no membrane is within float32 rounding of theta.
    margin = (ref[1].detach() - 1.0).abs().min()
    assert margin > 1e-4, "pick inputs without near-ties"
    assert torch.equal(low[0].float(), ref[0])
    for a, b in zip(low[1:], ref[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    g = [torch.randn_like(o.float()) for o in ref]
    grads = torch.autograd.grad([o.float() for o in low], [x, w_in, w_rec, bias], g)
    want = torch.autograd.grad(ref, ref_inputs, g)
    assert all(g.dtype == torch.float32 for g in grads)
    # The weights' gradients are returned in their cast dtype, x's in float32
    # (not rounded), and on MKL's path gU is rounded to the low dtype for the
    # input and weight products, as autocast's own products do: so these
    # agree to its precision on both paths.
    eps = torch.finfo(dtype).eps
    for a, b in zip(grads, want):
        assert (a - b).norm() <= 8 * eps * b.norm()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["recurrent_lif", "recurrent_adlif", "recurrent_cubalif"])
def test_float32_x_with_low_precision_weights_matches_the_reference(dtype, op, path, monkeypatch):
    """A float32 x with bfloat16/float16 weights (what autocast passes): the
    products take x rounded to the weights' dtype, everything else float32.
    The fused op and the plain-autograd reference of the same call agree:
    spikes exactly, states to float32 rounding, gradients (x's float32 and
    unrounded, the weights' in their dtype) to the dtype's precision."""
    use_path(monkeypatch, path, dtype)
    x, *weights = small_inputs(seed=1, weight_dtype=dtype)
    got = getattr(torch_ext, op)(x, *weights)
    want = getattr(torch_ext, op + "_ref")(x, *weights)
    assert got[0].dtype == torch.float32
    margin = (want[1].detach() - 1.0).abs().min()
    assert margin > 1e-4, "pick inputs without near-ties"
    assert torch.equal(got[0], want[0])
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    g = [torch.randn_like(o) for o in want]
    grads = torch.autograd.grad(got, [x, *weights], g)
    want_grads = torch.autograd.grad(want, [x, *weights], g)
    assert [a.dtype for a in grads] == [torch.float32, dtype, dtype, dtype]
    eps = torch.finfo(dtype).eps
    for a, b in zip(grads, want_grads):
        assert (a.float() - b.float()).norm() <= 8 * eps * b.float().norm()


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("model", ["lif", "adaptive", "cuba"])
def test_gradients_under_autocast_closer_to_float32_than_the_expert_loop(model, path, monkeypatch):
    """Against each one's own float32 run, same inputs: the fused op's
    gradient error under autocast bfloat16 is no worse than the expert
    autograd loop's under the same autocast (fixed seed: CPU results are
    deterministic)."""
    use_path(monkeypatch, path, torch.bfloat16)
    T, B, N = 30, 8, 32
    params = peers.MODELS[model]["make_params"](N, N, "cpu", seed=3)
    fused = peers.fused(params, model)
    expert = peers.reference(params, model)
    x = torch.randn(T, B, N, generator=torch.Generator().manual_seed(5)).requires_grad_()
    inputs = [x, *(p for p in params.values() if isinstance(p, torch.Tensor))]

    def grads(fn, amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            spikes = fn(x)[0]
        return torch.autograd.grad(spikes.float().sum(), inputs)

    errors = {}
    for name, fn in (("fused", fused), ("expert", expert)):
        exact, low = grads(fn, False), grads(fn, True)
        errors[name] = max(relative_error(a.float(), b) for a, b in zip(low, exact))
    assert errors["fused"] <= errors["expert"], errors


@pytest.fixture
def force_w_rec_product():
    """The test hook that forces grad_w_rec's path, reset afterwards."""
    yield lambda forced: torch_ext._C._set_low_precision_path_forced("w_rec_grad", forced)
    torch_ext._C._set_low_precision_path_forced("w_rec_grad", -1)


def w_rec_grad_runs(force, dtype, op, x_scale, bias_shift=0.0,
                    modes=("dense", "gather", None)):
    """Forward + backward under autocast with the spikes' w_rec gradient
    forced to one low-precision product ("dense"), to the float32 row adds
    at the spikes ("gather"), or by density (None): (spike rate, {mode:
    gradients of x, w_in, w_rec, bias})."""
    x, w_in, w_rec, bias = small_inputs(seed=2)
    x = (x.detach() * x_scale).requires_grad_()
    bias = (bias.detach() - bias_shift).requires_grad_()
    fn = getattr(torch_ext, op)
    out = {}
    for mode in modes:
        force({"dense": 1, "gather": 0, None: -1}[mode])
        with torch.autocast("cpu", dtype=dtype):
            spikes, *states = fn(x, w_in, w_rec, bias)
        g = torch.randn_like(spikes, generator=torch.Generator().manual_seed(4))
        out[mode] = torch.autograd.grad(spikes * g, [x, w_in, w_rec, bias],
                                        torch.ones_like(spikes))
    return spikes.mean().item(), out


@pytest.mark.skipif("bfloat16" not in LOW, reason="no MKL bfloat16 products in this build")
# x's scale for a spike rate above 5 %, and x's scale and a bias shift for one below
@pytest.mark.parametrize("op, dense, sparse", [("recurrent_lif", 1.0, (0.05, 0.0)),
                                               ("recurrent_cubalif", 1.0, (0.2, 0.5)),
                                               ("recurrent_adlif", 6.0, (2.0, 0.0))])
def test_w_rec_gradient_as_one_low_precision_product(op, dense, sparse, monkeypatch,
                                                      force_w_rec_product):
    """On MKL's bfloat16 path grad_w_rec is one low-precision product (gU
    rounded as for grad_w_in, the spikes exact) where the spikes are dense
    enough, else the float32 row adds at the spikes. Only w_rec's gradient
    changes, to bfloat16's precision; the density picks the product above
    5 %, the row adds below; on the float32 path the product is never taken."""
    dtype = torch.bfloat16
    use_path(monkeypatch, "on", dtype)
    rate, runs = w_rec_grad_runs(force_w_rec_product, dtype, op, x_scale=dense)
    assert rate > 0.05, rate
    product, adds = runs["dense"], runs["gather"]
    for i in (0, 1, 3):  # x, w_in, bias: the same bits
        assert torch.equal(product[i], adds[i])
    assert not torch.equal(product[2], adds[2]), "the product was not taken"
    eps = torch.finfo(dtype).eps
    assert (product[2].float() - adds[2].float()).norm() <= 8 * eps * adds[2].float().norm()
    assert torch.equal(runs[None][2], product[2])  # dense enough: the product
    rate, runs = w_rec_grad_runs(force_w_rec_product, dtype, op, *sparse)
    assert 0 < rate < 0.05, rate
    assert torch.equal(runs[None][2], runs["gather"][2])  # sparse: the row adds
    use_path(monkeypatch, "off", dtype)
    _, runs = w_rec_grad_runs(force_w_rec_product, dtype, op, dense, modes=("dense", "gather"))
    assert all(torch.equal(a, b) for a, b in zip(runs["dense"], runs["gather"]))


@pytest.mark.skipif("bfloat16" not in LOW, reason="no MKL bfloat16 products in this build")
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_w_rec_gradient_product_keeps_non_finite_values(bad, monkeypatch, force_w_rec_product):
    """A non-finite incoming gradient reaches grad_w_rec the same way through
    the low-precision product as through the row adds' dense fallback."""
    use_path(monkeypatch, "on", torch.bfloat16)
    x, w_in, w_rec, bias = small_inputs(seed=2)
    grads = {}
    for mode in ("dense", "gather"):
        force_w_rec_product(1 if mode == "dense" else 0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            spikes = torch_ext.recurrent_lif(x, w_in, w_rec, bias)[0]
        g = torch.zeros_like(spikes)
        g[5, 1, 3] = bad
        grads[mode] = torch.autograd.grad(spikes, [w_rec], g)[0]
    assert not grads["dense"].isfinite().all()
    assert nonfinite_pattern_equal(grads["dense"], grads["gather"])


@pytest.mark.skipif("float16" not in LOW, reason="no MKL float16 products in this build")
def test_w_rec_gradient_stays_the_row_adds_for_float16(monkeypatch, force_w_rec_product):
    """float16, whose rounding of gU overflows past 65504, never takes the
    low-precision product: forcing it changes nothing."""
    use_path(monkeypatch, "on", torch.float16)
    rate, runs = w_rec_grad_runs(force_w_rec_product, torch.float16, "recurrent_lif", 6.0,
                                 modes=("dense", "gather"))
    assert rate > 0.05, rate
    assert all(torch.equal(a, b) for a, b in zip(runs["dense"], runs["gather"]))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("lengths", [None, [12, 7, 0, 9]])
@pytest.mark.parametrize("w_rec_product", [1, 0])
@pytest.mark.parametrize("wanted", ["alpha", "alpha and w_rec"])
def test_adaptive_alpha_gradient_takes_gu_unrounded(path, lengths, w_rec_product, wanted,
                                                    monkeypatch, force_w_rec_product):
    """alpha's gradient (its drive, sum gX * (I + rec)) is float32 work on the
    unrounded gU on both paths: on MKL's path from the input current
    recomputed by the forward's product and (where grad_w_rec is the product
    of the rounded gU, forced here or not) from the recurrent input
    recomputed by a product of the spikes, otherwise from grad_w_rec's
    float32 sums; on the float32 path from the products it shares with w_in.
    All are the float32 reference's to float32 rounding, whichever other
    gradients the call asks for; padding past each row's length (NaN for the
    op, 0 for the reference, whose products would spread the NaN) takes no
    part."""
    use_path(monkeypatch, path, torch.bfloat16)
    force_w_rec_product(w_rec_product)
    x, *weights = small_inputs(seed=1, weight_dtype=torch.bfloat16)
    x = x.detach().clone()
    x_ref = x.clone()
    if lengths is not None:
        lengths = torch.tensor(lengths)
        for b, n in enumerate(lengths.tolist()):
            x[n:, b], x_ref[n:, b] = float("nan"), 0.0
    alpha = torch.full((16,), 0.9, requires_grad=True)
    a = torch.full((16,), 0.5, requires_grad=True)
    got = torch_ext.recurrent_adlif(x, *weights, alpha=alpha, a=a, theta=0.3, lengths=lengths)
    want = torch_ext.recurrent_adlif_ref(x_ref, *weights, alpha=alpha, a=a, theta=0.3,
                                         lengths=lengths)
    assert torch.equal(got[0], want[0]) and 0.02 < want[0].mean() < 0.9
    g = [torch.randn_like(o) for o in want]
    leaves = [alpha, a] + ([weights[1]] if wanted == "alpha and w_rec" else [])
    g_got = torch.autograd.grad(got, leaves, g)
    g_want = torch.autograd.grad(want, leaves, g)
    for p, q in list(zip(g_got, g_want))[:2]:
        assert p.isfinite().all()
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4 * q.abs().max().item())
    if len(leaves) == 3:  # w_rec's: the product rounds gU to bfloat16 where it is taken
        eps = torch.finfo(torch.bfloat16).eps
        assert (g_got[2].float() - g_want[2].float()).norm() <= 8 * eps * g_want[2].float().norm()


def recurrence_inputs(op, B, N, scale=1.0, bias_shift=0.0, T=25, F=24, seed=3):
    """x [T, B, F] and w_in, w_rec, bias for the recurrence tests: a moderate
    spike rate (scale and bias_shift move it)."""
    torch.manual_seed(seed)
    x = torch.randn(T, B, F) * (scale * (6.0 if op == "recurrent_adlif" else 1.0))
    weights = [torch.randn(N, F) * (3 / F ** 0.5), torch.randn(N, N) * (0.5 / N ** 0.5),
               torch.randn(N) * 0.1 + bias_shift]
    return x, weights


@pytest.fixture
def force_recurrence():
    """The test hook that forces the reverse loop's bfloat16 per-step product."""
    yield lambda forced: torch_ext._C._set_low_precision_path_forced("recurrence", forced)
    torch_ext._C._set_low_precision_path_forced("recurrence", -1)


RECURRENCE_PRODUCT = torch_ext.build_info()["cpu_bfloat16_recurrence_product"]


@pytest.mark.skipif("bfloat16" not in LOW, reason="no MKL bfloat16 products in this build")
@pytest.mark.parametrize("op", ["recurrent_lif", "recurrent_cubalif", "recurrent_adlif"])
def test_recurrence_product_on_bfloat16_matrix_instructions(op, monkeypatch, force_recurrence):
    """On MKL's bfloat16 path, where the CPU has bfloat16 matrix instructions
    (build_info()["cpu_bfloat16_recurrence_product"]), the reverse loop's
    per-step product gX[t+1] @ w_rec rounds gX to bfloat16 (N = 64 here,
    forced; by default for N a multiple of 64): the forward is untouched, every
    gradient is within a few bfloat16 roundings of the float32 recurrence's.
    (The adaptive model scales gX[t+1] by its gain before rounding it.)
    Elsewhere nothing changes."""
    use_path(monkeypatch, "on", torch.bfloat16)
    x, weights = recurrence_inputs(op, B=8, N=64)
    runs = {}
    for forced in (1, 0):
        force_recurrence(forced)
        leaves = [x.clone().requires_grad_()] + [w.clone().requires_grad_() for w in weights]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = getattr(torch_ext, op)(*leaves)
        g = torch.randn(out[0].shape, generator=torch.Generator().manual_seed(4))
        runs[forced] = out, torch.autograd.grad(out[0] * g, leaves, torch.ones_like(out[0]))
    (out_1, grads_1), (out_0, grads_0) = runs[1], runs[0]
    assert all(torch.equal(a, b) for a, b in zip(out_1, out_0))
    assert 0.02 < out_0[0].mean() < 0.9
    if not RECURRENCE_PRODUCT:
        assert all(torch.equal(a, b) for a, b in zip(grads_1, grads_0))
        return
    assert not torch.equal(grads_1[0], grads_0[0]), "the bfloat16 recurrence was not taken"
    eps = torch.finfo(torch.bfloat16).eps
    for a, b in zip(grads_1, grads_0):
        assert (a.float() - b.float()).norm() <= 8 * eps * b.float().norm()


@pytest.mark.skipif("bfloat16" not in LOW, reason="no MKL bfloat16 products in this build")
@pytest.mark.parametrize("path", ["w_rec_grad", "recurrence"])
def test_float32_w_rec_next_to_bfloat16_w_in_keeps_float32_sums(path, monkeypatch):
    """A float32 w_rec holding bfloat16 values, next to a bfloat16 w_in: its
    gradient and the recurrence stay the float32 op's, forced or not."""
    use_path(monkeypatch, "on", torch.bfloat16)
    torch.manual_seed(5)
    x = torch.randn(20, 8, 24)
    w_in = (torch.randn(64, 24) * (3 / 24 ** 0.5)).bfloat16()
    w_rec = (torch.randn(64, 64) * (0.5 / 8)).bfloat16().float()  # bfloat16 values, float32
    runs = []
    for forced in (1, 0):
        torch_ext._C._set_low_precision_path_forced(path, forced)
        try:
            leaves = [t.clone().requires_grad_() for t in (x, w_in, w_rec)]
            spikes = torch_ext.recurrent_lif(*leaves)[0]
            assert 0.05 < spikes.mean() < 0.9
            runs.append(torch.autograd.grad(spikes.sum(), leaves))
        finally:
            torch_ext._C._set_low_precision_path_forced(path, -1)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def forward_recurrence_runs(op, forced, x, weights, lengths=None, save=True):
    """Forward + backward of op under autocast bfloat16 with the forward's
    recurrent-input product forced (1), never taken (0) or by the op's rules
    (-1): (outputs, gradients of x and the weights)."""
    torch_ext._C._set_low_precision_path_forced("forward_recurrence", forced)
    try:
        leaves = [x.clone().requires_grad_()] + [w.clone().requires_grad_() for w in weights]
        flag = "save_membrane" if op == "recurrent_lif" else "save_state"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = getattr(torch_ext, op)(*leaves, lengths=lengths, **{flag: save})
        g = torch.randn(out[0].shape, generator=torch.Generator().manual_seed(4))
        return out, torch.autograd.grad(out[0] * g, leaves, torch.ones_like(out[0]))
    finally:
        torch_ext._C._set_low_precision_path_forced("forward_recurrence", -1)


@pytest.mark.skipif("bfloat16" not in LOW, reason="no MKL bfloat16 products in this build")
@pytest.mark.parametrize("op", ["recurrent_lif", "recurrent_cubalif", "recurrent_adlif"])
@pytest.mark.parametrize("B", [8, 20, 37])  # blocks of 16 rows: one partial, a full and a partial, three
def test_forward_recurrent_input_on_bfloat16_matrix_instructions(op, B, monkeypatch):
    """On MKL's bfloat16 path, where the CPU has bfloat16 matrix instructions,
    the forward may take a block of rows' recurrent input at each step as one
    product of the spikes (exact in bfloat16) with the rounded w_rec, float32
    accumulation (forced here at N = 64; by default for N a multiple of 64
    and B >= 32 where the spikes are dense enough): the gather's sums up to order, so the spikes
    and states are the gather's to float32 rounding, with lengths; the
    low-memory mode's replay takes the same path, to the bit. Elsewhere
    nothing changes."""
    use_path(monkeypatch, "on", torch.bfloat16)
    N = 64
    x, weights = recurrence_inputs(op, B, N)
    lengths = torch.randint(0, x.shape[0] + 1, (B,), generator=torch.Generator().manual_seed(B))
    (out_1, grads_1), (out_0, grads_0) = (forward_recurrence_runs(op, f, x, weights, lengths)
                                          for f in (1, 0))
    assert 0.02 < out_0[0].mean() < 0.9
    if not RECURRENCE_PRODUCT:
        assert all(torch.equal(a, b) for a, b in zip(out_1, out_0))
        assert all(torch.equal(a, b) for a, b in zip(grads_1, grads_0))
        return
    assert torch.equal(out_1[0], out_0[0])  # (no threshold within rounding of these inputs)
    for a, b in zip(out_1[1:], out_0[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=4e-6 * b.abs().max().item())
    for a, b in zip(grads_1, grads_0):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item())
    replayed = forward_recurrence_runs(op, 1, x, weights, lengths, save=False)
    assert all(torch.equal(a, b) for a, b in zip(replayed[0], out_1))
    assert all(torch.equal(a, b) for a, b in zip(replayed[1], grads_1))


@pytest.mark.skipif(not RECURRENCE_PRODUCT, reason="no bfloat16 matrix instructions here")
@pytest.mark.parametrize("op", ["recurrent_lif", "recurrent_cubalif", "recurrent_adlif"])
def test_forward_recurrent_input_product_is_taken(op, monkeypatch):
    """The forward's product really runs: with w_rec's entries six orders of
    magnitude apart, its float32 sums (in the matrix instructions' order)
    round differently from the gather's (in the order of the neurons that
    fired), so the states differ in their last bits where it is forced."""
    use_path(monkeypatch, "on", torch.bfloat16)
    T, B, F, N = 10, 32, 24, 64
    x, (w_in, _, bias) = recurrence_inputs(op, B, N, 0.5, 1.0, T=T, F=F)
    w_rec = torch.randn(N, N) * 10.0 ** torch.randint(-6, 1, (N, N)).float()
    out_1, _ = forward_recurrence_runs(op, 1, x, [w_in, w_rec, bias])
    out_0, _ = forward_recurrence_runs(op, 0, x, [w_in, w_rec, bias])
    assert 0.02 < out_0[0].mean() < 0.9
    assert not all(torch.equal(a, b) for a, b in zip(out_1[1:], out_0[1:])), "not taken"


@pytest.mark.skipif(not RECURRENCE_PRODUCT, reason="no bfloat16 matrix instructions here")
@pytest.mark.parametrize("op", ["recurrent_lif", "recurrent_adlif"])
def test_forward_recurrent_input_product_by_density(op, monkeypatch):
    """By default the forward takes the product for N a multiple of 64 and B
    >= 32 (two blocks of 16 rows) at each block's step whose spikes before
    are at least 8 % ones, else the gather: a sparse run is the gather's to
    the bit, a dense one the product's; never for other N or B, nor on the
    float32 path."""
    use_path(monkeypatch, "on", torch.bfloat16)
    T = 8
    for N, B, sparse, want in ((512, 32, True, 0), (512, 32, False, 1), (128, 32, False, 1),
                               (48, 32, False, 0), (512, 16, False, 0)):
        x, weights = recurrence_inputs(op, B, N, *((0.1, -0.5) if sparse else (3.0, 1.5)), T=T)
        default, forced = (forward_recurrence_runs(op, f, x, weights) for f in (-1, want))
        # the density of each block's S[t-1] at each step t >= 1
        rates = default[0][0][:-1].float().reshape(T - 1, -1, 16 * N).mean(2)
        assert rates.max() < 0.08 if sparse else rates.min() > 0.1, rates
        assert all(torch.equal(a, b) for a, b in zip(default[0], forced[0])), (N, B)
        assert all(torch.equal(a, b) for a, b in zip(default[1], forced[1])), (N, B)
    # The low-memory replay makes the same choices by density, with lengths.
    x, weights = recurrence_inputs(op, 37, 128, 1.0, 0.3, T=T)
    lengths = torch.randint(0, T + 1, (37,), generator=torch.Generator().manual_seed(1))
    saved, replayed = (forward_recurrence_runs(op, -1, x, weights, lengths, save=save)
                       for save in (True, False))
    assert all(torch.equal(a, b) for a, b in zip(saved[0], replayed[0]))
    assert all(torch.equal(a, b) for a, b in zip(saved[1], replayed[1]))
    use_path(monkeypatch, "off", torch.bfloat16)
    x, weights = recurrence_inputs(op, 32, 512, 3.0, 1.5, T=T)
    runs = [forward_recurrence_runs(op, f, x, weights) for f in (1, 0)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0], runs[1][0]))
