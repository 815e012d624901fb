"""S4 (DPLR) and S4D kernels against explicit recurrences and HiPPO-LegS."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from speechbrain_s4.ssm import DiagonalKernel, DPLRKernel, s4_kernel
from speechbrain_s4.ssm.s4_kernel import hippo_legs, hippo_legs_dplr

SSM_PARAMETERS = ("log_dt", "inv_w_real", "w_imag", "B", "P")


def _perturb(kernel, scale=0.1):
    """Break the identical-per-channel initialisation (and keep it stable)."""
    with torch.no_grad():
        for param in kernel.parameters():
            param.add_(scale * torch.randn_like(param))
    return kernel


def _dense_full_system(kernel):
    """Independent bilinear discretisation in the complex conjugate basis.

    A = diag(Lambda) - P P^* over the stored modes and their conjugates;
    dA = (I - dt/2 A)^-1 (I + dt/2 A), dB = (I - dt/2 A)^-1 dt B by dense
    solves (no Woodbury); C the full row [C, conj C]. Float64.
    """
    dt = torch.exp(kernel.log_dt.detach().double())  # [H]
    Lambda = torch.complex(
        -torch.exp(kernel.inv_w_real.detach().double()),
        kernel.w_imag.detach().double(),
    )
    B = torch.view_as_complex(kernel.B.detach().double())
    P = torch.view_as_complex(kernel.P.detach().double())
    C = torch.view_as_complex(kernel.C.detach().double())

    def full(x):
        return torch.cat([x, x.conj()], -1)

    Lambda, B, P, C = full(Lambda), full(B), full(P), full(C)
    A = torch.diag_embed(Lambda) - P.unsqueeze(-1) * P.conj().unsqueeze(-2)
    eye = torch.eye(A.shape[-1], dtype=A.dtype)
    half = (dt / 2)[:, None, None]
    dA = torch.linalg.solve(eye - half * A, eye + half * A)  # [H, N, N]
    dB = torch.linalg.solve(eye - half * A, (dt[:, None] * B).unsqueeze(-1))[
        ..., 0
    ]  # [H, N]
    return dA, dB, C


def _impulse_response_loop(dA, dB, C, length):
    """K[c, h, l] = Re(C_c dA^l dB) by repeated multiplication."""
    x = dB  # [H, N]
    taps = []
    for _ in range(length):
        taps.append((C * x).sum(-1).real)
        x = (dA @ x.unsqueeze(-1)).squeeze(-1)
    return torch.stack(taps, dim=-1)  # [C, H, L]


def test_hippo_legs_dplr_is_unitarily_similar_to_hippo_legs():
    """Lambda - P P^* (full basis) is HiPPO-LegS in a unitary basis."""
    N = 8
    A, B, _ = hippo_legs(N)
    Lambda, B_half, P_half = hippo_legs_dplr(N)
    assert torch.allclose(Lambda.real, torch.full_like(Lambda.real, -0.5))
    full = lambda x: torch.cat([x, x.conj()])  # noqa: E731
    Lambda, B_rot, P_rot = full(Lambda), full(B_half), full(P_half)
    A_rot = torch.diag(Lambda) - torch.outer(P_rot, P_rot.conj())
    eig_ref = np.sort_complex(np.linalg.eigvals(A.numpy()))
    eig_rot = np.sort_complex(np.linalg.eigvals(A_rot.numpy()))
    np.testing.assert_allclose(eig_rot, eig_ref, atol=1e-8)
    # Krylov invariants B^* A^k B are unchanged by a unitary change of basis
    A_c = A.to(torch.complex128)
    B_c = B.to(torch.complex128)
    for k in range(4):
        ref = B_c.conj() @ torch.linalg.matrix_power(A_c, k) @ B_c
        ours = B_rot.conj() @ torch.linalg.matrix_power(A_rot, k) @ B_rot
        assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("length", [1, 7, 50, 333])
def test_dplr_kernel_matches_impulse_response_loop(length):
    torch.manual_seed(1)
    kernel = _perturb(DPLRKernel(3, 8, channels=2, dt_min=0.01)).double()
    dA, dB, C = _dense_full_system(kernel)
    ref = _impulse_response_loop(dA, dB, C, length)
    with torch.no_grad():
        taps = kernel(length)
    assert taps.shape == (2, 3, length)
    assert (taps - ref).abs().max() <= 1e-10 * ref.abs().max()


def test_dplr_discrete_system_matches_dense_bilinear():
    """The Woodbury/real-basis matrices give the same impulse response."""
    kernel = _perturb(DPLRKernel(3, 8, channels=2)).double()
    dA_full, dB_full, C_full = _dense_full_system(kernel)
    with torch.no_grad():
        dA, dB, C = kernel.discrete_system()
    assert dA.dtype == torch.float64 and dA.shape == (3, 8, 8)
    ref = _impulse_response_loop(dA_full, dB_full, C_full, 40)
    ours = _impulse_response_loop(
        dA.to(torch.complex128),
        dB.to(torch.complex128),
        C.to(torch.complex128),
        40,
    )
    assert (ours - ref).abs().max() <= 1e-12 * ref.abs().max()


def test_dplr_kernel_any_length_is_a_prefix():
    kernel = _perturb(DPLRKernel(4, 16, channels=2)).eval()
    with torch.no_grad():
        short, long = kernel(40), kernel(120)
    assert (short - long[..., :40]).abs().max() <= 1e-5 * long.abs().max()


def test_dplr_naive_kernel_internal_length_rule():
    kernel = _perturb(DPLRKernel(4, 16, channels=2, conj_symmetric=False))
    assert kernel.internal_length(80) == 80  # base_length 0: L itself
    with torch.no_grad():
        unset = kernel(40)
        kernel.base_length.fill_(50)
    assert [kernel.internal_length(n) for n in (1, 50, 51, 80, 201)] == [
        50,
        50,
        100,
        100,
        400,
    ]
    with torch.no_grad():
        truncated, at_50 = kernel(40), kernel(50)
    # L0 = 50: the 40-tap kernel is the first 40 taps of the 50-tap one...
    assert torch.equal(truncated, at_50[..., :40])
    # ...and the naive sum depends on the internal length (S4M's CPU quirk)
    assert (truncated - unset).abs().max() > 1e-3 * unset.abs().max()


def test_dplr_naive_kernel_is_not_the_impulse_response():
    """Documents the quirk: without conjugates the kernel is a different one."""
    torch.manual_seed(2)
    naive = DPLRKernel(3, 8, conj_symmetric=False).double()
    conj = DPLRKernel(3, 8).double()
    conj.load_state_dict(
        {k: v for k, v in naive.state_dict().items() if k != "base_length"}
    )
    with torch.no_grad():
        difference = (naive(64) - conj(64)).abs().max()
    assert difference > 0.05 * conj(64).abs().max()


def _zoh_reference(dt, Lambda, B):
    """dA, dB of x' = Lambda x + B u held constant over dt, via expm."""
    block = np.array([[Lambda, B], [0.0, 0.0]], dtype=np.complex128) * dt
    expm = scipy.linalg.expm(block)
    return expm[0, 0], expm[0, 1]


@pytest.mark.parametrize("init", ["lin", "inv", "legs", "real"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_diagonal_kernel_matches_recurrence(init, disc):
    torch.manual_seed(3)
    kernel = DiagonalKernel(3, 8, channels=2, init=init, disc=disc).double()
    with torch.no_grad():
        kernel.B.add_(0.1 * torch.randn_like(kernel.B))
        taps = kernel(37)
    dt = torch.exp(kernel.log_dt.detach()).numpy()
    Lambda = torch.complex(
        -torch.exp(kernel.inv_w_real.detach()), kernel.w_imag.detach()
    ).numpy()
    B = torch.view_as_complex(kernel.B.detach()).numpy()
    C = torch.view_as_complex(kernel.C.detach()).numpy()
    H, M = Lambda.shape
    dA, dB = np.empty((H, M), complex), np.empty((H, M), complex)
    for h in range(H):
        for m in range(M):
            if disc == "zoh":
                dA[h, m], dB[h, m] = _zoh_reference(
                    dt[h], Lambda[h, m], B[h, m]
                )
            else:  # bilinear: (I - dt/2 A) x_k = (I + dt/2 A) x_{k-1} + dt B u
                step = 1 - dt[h] / 2 * Lambda[h, m]
                dA[h, m] = (1 + dt[h] / 2 * Lambda[h, m]) / step
                dB[h, m] = dt[h] * B[h, m] / step
    x, ref = dB.copy(), []
    for _ in range(37):  # y_l = C x_l + conj(C x_l), x_l = dA^l dB
        ref.append(2 * np.einsum("chm,hm->ch", C, x).real)
        x = dA * x
    ref = np.stack(ref, -1)
    np.testing.assert_allclose(
        taps.numpy(), ref, rtol=0, atol=1e-10 * abs(ref).max()
    )


def test_diagonal_inits():
    N = 8
    n = torch.arange(N // 2, dtype=torch.float64)
    expected_imag = {
        "lin": math.pi * n,
        "inv": N / math.pi * (N / (2 * n + 1) - 1),
        "real": torch.zeros_like(n),
    }
    for init, imag in expected_imag.items():
        kernel = DiagonalKernel(2, N, init=init).double()
        real = -torch.exp(kernel.inv_w_real.detach())
        expected_real = -(n + 1) if init == "real" else torch.full_like(n, -0.5)
        assert torch.allclose(real, expected_real.expand(2, -1))
        assert torch.allclose(kernel.w_imag.detach().abs(), imag.expand(2, -1))
    # S4D-LegS: eigenvalues of the normal part of HiPPO-LegS
    A, _, P = hippo_legs(N)
    eig = np.linalg.eigvals((A + torch.outer(P, P)).numpy())
    kernel = DiagonalKernel(2, N, init="legs").double()
    ours = torch.complex(
        -torch.exp(kernel.inv_w_real.detach()), kernel.w_imag.detach()
    )[0].numpy()
    ours = np.concatenate([ours, ours.conj()])
    by_imag = lambda x: x[np.argsort(x.imag)]  # noqa: E731
    # parameters are created in float32
    np.testing.assert_allclose(by_imag(ours), by_imag(eig), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: DPLRKernel(3, 8, channels=2),
        lambda: DPLRKernel(3, 8, channels=2, conj_symmetric=False),
        lambda: DiagonalKernel(3, 8, channels=2, init="inv", disc="bilinear"),
    ],
    ids=["dplr", "dplr-naive", "diag"],
)
def test_kernel_gradients_reach_every_parameter(make):
    kernel = make().train()
    taps = kernel(33)
    (taps * torch.randn_like(taps)).sum().backward()
    for name, param in kernel.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("conj_symmetric", [True, False], ids=["conj", "naive"])
def test_dplr_kernel_gradcheck(monkeypatch, conj_symmetric):
    """Analytic gradients (hand-written Cauchy backward) match finite
    differences; a tiny chunk size makes the channel chunking run."""
    monkeypatch.setattr(s4_kernel, "_CAUCHY_CHUNK_ELEMENTS", 20)
    kernel = DPLRKernel(2, 4, channels=2, conj_symmetric=conj_symmetric)
    kernel = _perturb(kernel).double()
    if not conj_symmetric:
        kernel.base_length.fill_(6)
    names = [name for name, _ in kernel.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in kernel.parameters()]

    def taps(*values):
        return torch.func.functional_call(
            kernel, dict(zip(names, values, strict=True)), (9,)
        )

    assert torch.autograd.gradcheck(taps, params, fast_mode=True)


@pytest.mark.parametrize("kernel_class", [DPLRKernel, DiagonalKernel])
def test_kernel_optim_hints(kernel_class):
    kernel = kernel_class(3, 8, lr=1e-3)
    for name, param in kernel.named_parameters():
        if name in SSM_PARAMETERS:
            assert param._optim == {"weight_decay": 0.0, "lr": 1e-3}, name
        else:
            assert not hasattr(param, "_optim"), name
    assert kernel_class(3, 8).log_dt._optim == {"weight_decay": 0.0}


def test_kernel_eval_cache_reuses_and_invalidates():
    kernel = _perturb(DPLRKernel(3, 8, channels=2)).eval()
    with torch.no_grad():
        first = kernel(30)
        assert kernel(30) is first  # same length, nothing changed
        assert kernel(31) is not first
        again = kernel(30)
        kernel.log_dt.add_(0.05)  # an in-place update (as an optimiser)
        changed = kernel(30)
    assert changed is not again
    assert not torch.equal(changed, again)
    fresh = DPLRKernel(3, 8, channels=2)
    fresh.load_state_dict(kernel.state_dict())
    with torch.no_grad():
        assert torch.equal(changed, fresh.eval()(30))
        kernel.load_state_dict(DPLRKernel(3, 8, channels=2).state_dict())
        assert not torch.equal(kernel(30), changed)
    # training, or gradients enabled, never use the cache
    assert kernel(30) is not kernel(30)
    kernel.train()
    with torch.no_grad():
        assert kernel(30) is not kernel(30)


def test_kernel_rejects_bad_arguments():
    with pytest.raises(ValueError, match="d_state"):
        DPLRKernel(3, 7)
    with pytest.raises(ValueError, match="init"):
        DiagonalKernel(3, 8, init="fourier")
    with pytest.raises(ValueError, match="disc"):
        DiagonalKernel(3, 8, disc="euler")
    with pytest.raises(ValueError, match="length"):
        DPLRKernel(3, 8)(0)
