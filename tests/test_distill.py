"""Distillation losses against independent references: hand-computed KLs with python floats.

The library computes in torch (fp32, log_softmax, chunked, checkpointed); the references
here use only ``math`` on python floats, so a shared bug cannot cancel out.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hyperlora.distill import LOSSES, adapter_l2_penalty, cross_entropy_loss, distillation_loss, kl_loss

# Two rows, V = 3.
STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[0.5, 0.5, 2.0], [1.5, 0.0, -0.5]]


def _softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    scaled = [x / temperature for x in row]
    top = max(scaled)
    exps = [math.exp(x - top) for x in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    """KL(p ‖ q) = Σ p (log p - log q)."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def _reference(student, teacher, kind: str, temperature: float = 1.0) -> float:
    """Mean over rows of the KL at ``temperature``, times τ²."""
    values = []
    for s, t in zip(student, teacher):
        p_s, p_t = _softmax(s, temperature), _softmax(t, temperature)
        values.append(_kl(p_t, p_s) if kind == "forward_kl" else _kl(p_s, p_t))
    return temperature**2 * sum(values) / len(values)


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_forward_kl_matches_hand_computation():
    # Spelled out for row 0 too, so the reference itself is checked once by hand.
    p_t = _softmax(TEACHER[0])
    p_s = _softmax(STUDENT[0])
    row0 = p_t[0] * math.log(p_t[0] / p_s[0]) + p_t[1] * math.log(p_t[1] / p_s[1]) + p_t[2] * math.log(p_t[2] / p_s[2])
    assert row0 == pytest.approx(_kl(p_t, p_s), rel=1e-12)
    expected = _reference(STUDENT, TEACHER, "forward_kl")
    got = kl_loss(_t(STUDENT), _t(TEACHER), "forward_kl")
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0.1  # a non-trivial example


def test_reverse_kl_matches_hand_computation_and_differs_from_forward():
    expected = _reference(STUDENT, TEACHER, "reverse_kl")
    got = kl_loss(_t(STUDENT), _t(TEACHER), "reverse_kl")
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # KL is asymmetric: a swapped implementation would be caught here.
    assert abs(expected - _reference(STUDENT, TEACHER, "forward_kl")) > 1e-3
    assert got.item() != pytest.approx(kl_loss(_t(STUDENT), _t(TEACHER), "forward_kl").item(), rel=1e-3)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
@pytest.mark.parametrize("temperature", [0.5, 2.0, 3.0])
def test_temperature_softens_and_scales_by_tau_squared(kind, temperature):
    expected = _reference(STUDENT, TEACHER, kind, temperature)
    got = kl_loss(_t(STUDENT), _t(TEACHER), kind, temperature=temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # Neither "τ² without softening" nor "softening without τ²" would pass.
    without_scale = expected / temperature**2
    without_softening = temperature**2 * _reference(STUDENT, TEACHER, kind, 1.0)
    assert got.item() != pytest.approx(without_scale, rel=1e-3)
    assert got.item() != pytest.approx(without_softening, rel=1e-3)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_identical_logits_give_zero(kind):
    logits = torch.randn(5, 11) * 3
    assert kl_loss(logits, logits.clone(), kind).item() == pytest.approx(0.0, abs=1e-6)
    # Shifting all logits of a row by a constant leaves the distribution unchanged.
    assert kl_loss(logits, logits + 7.0, kind).item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_all_masked_batch_is_exact_zero_and_backward_works(kind):
    student = torch.zeros(0, 7, requires_grad=True)
    teacher = torch.zeros(0, 7)
    loss = kl_loss(student, teacher, kind)
    assert loss.item() == 0.0 and loss.dim() == 0
    loss.backward()
    assert student.grad is not None and student.grad.shape == (0, 7)
    # Also through a parameter upstream (what the trainer sees): zero gradient, not None/NaN.
    weight = torch.randn(4, 7, requires_grad=True)
    picked = (torch.randn(3, 4) @ weight)[torch.zeros(3, dtype=torch.bool)]
    out = distillation_loss(picked, torch.zeros(0, 7), torch.zeros(0, dtype=torch.long), kind, ce_weight=0.5)
    assert out["loss"].item() == 0.0 and out["ce"].item() == 0.0
    out["loss"].backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_chunked_equals_unchunked_value_and_gradients(kind):
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(9, 13, generator=gen, dtype=torch.float32)
    teacher = torch.randn(9, 13, generator=gen)
    labels = torch.randint(0, 13, (9,), generator=gen)
    results = []
    for chunk in (1, 4, 1024):
        student = base.clone().requires_grad_(True)
        out = distillation_loss(student, teacher, labels, kind, temperature=1.5, ce_weight=0.3, chunk=chunk)
        out["loss"].backward()
        results.append((out["loss"].detach(), out["kl"].detach(), out["ce"].detach(), student.grad.clone()))
    for loss, kl, ce, grad in results[:-1]:
        ref_loss, ref_kl, ref_ce, ref_grad = results[-1]
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(kl, ref_kl, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ce, ref_ce, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert results[-1][3].abs().sum() > 0


def test_gradient_matches_autograd_of_dense_reference():
    """The checkpointed, chunked loss has the gradient of the plain dense formula (float64)."""
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(6, 10, generator=gen)
    teacher = torch.randn(6, 10, generator=gen)
    student = base.clone().requires_grad_(True)
    kl_loss(student, teacher, "forward_kl", temperature=2.0, chunk=2).backward()
    ref_student = base.double().requires_grad_(True)
    p_t = torch.softmax(teacher.double() / 2.0, -1)
    ref = 4.0 * (p_t * (p_t.log() - torch.log_softmax(ref_student / 2.0, -1))).sum() / 6
    ref.backward()
    torch.testing.assert_close(student.grad.double(), ref_student.grad, rtol=1e-5, atol=1e-7)


def test_teacher_gets_no_gradient():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    kl_loss(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None


def test_cross_entropy_equals_torch_mean():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 12, generator=gen)
    labels = torch.randint(0, 12, (7,), generator=gen)
    for chunk in (1, 3, 1024):
        got = cross_entropy_loss(logits, labels, chunk=chunk)
        torch.testing.assert_close(got, F.cross_entropy(logits, labels), rtol=1e-6, atol=1e-7)
    # And against math on one row: -log softmax(row)[label].
    row = logits[0].tolist()
    manual = -math.log(_softmax(row)[int(labels[0])])
    assert cross_entropy_loss(logits[:1], labels[:1]).item() == pytest.approx(manual, rel=1e-5)
    assert cross_entropy_loss(torch.zeros(0, 12), torch.zeros(0, dtype=torch.long)).item() == 0.0


def test_distillation_loss_combines_kl_and_weighted_ce():
    student, teacher = _t(STUDENT), _t(TEACHER)
    labels = torch.tensor([1, 2])
    out = distillation_loss(student, teacher, labels, "forward_kl", temperature=2.0, ce_weight=0.25)
    kl_ref = _reference(STUDENT, TEACHER, "forward_kl", 2.0)
    # The ce term is at temperature 1, on the hard labels.
    ce_ref = -(math.log(_softmax(STUDENT[0])[1]) + math.log(_softmax(STUDENT[1])[2])) / 2
    assert out["kl"].item() == pytest.approx(kl_ref, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce_ref, rel=1e-5)
    assert out["loss"].item() == pytest.approx(kl_ref + 0.25 * ce_ref, rel=1e-5)
    # Without a ce weight: loss is the KL alone and no ce is reported.
    plain = distillation_loss(student, teacher, labels, "forward_kl", temperature=2.0)
    assert set(plain) == {"loss", "kl"}
    assert plain["loss"].item() == pytest.approx(kl_ref, rel=1e-5)


# -- the L2 penalty on the generated adapters ----------------------------------------------


def _known_adapters() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    # Two targets of different shapes, two rows: A [2, 3, 1], B [2, 1, 2] and A [2, 2, 1], B [2, 1, 3].
    return {
        "q": (_t([[[1], [2], [3]], [[0], [0], [0]]]), _t([[[1, -1]], [[2, 2]]])),
        "v": (_t([[[4], [0]], [[0], [0]]]), _t([[[0, 0, 3]], [[0, 0, 0]]])),
    }


def test_adapter_l2_penalty_matches_hand_computation():
    # q: mean(A²) = (1 + 4 + 9) / 6, mean(B²) = (1 + 1 + 4 + 4) / 4;  v: mean(A²) = 16 / 4, mean(B²) = 9 / 6.
    expected = ((14 / 6 + 10 / 4) + (16 / 4 + 9 / 6)) / 2
    adapters = _known_adapters()
    assert adapter_l2_penalty(adapters).item() == pytest.approx(expected, rel=1e-6)
    # fp32 whatever the adapters' dtype; the same value from bf16 (these values are exact in bf16).
    bf16 = {k: (A.bfloat16(), B.bfloat16()) for k, (A, B) in adapters.items()}
    assert adapter_l2_penalty(bf16).dtype == torch.float32
    assert adapter_l2_penalty(bf16).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="at least one target"):
        adapter_l2_penalty({})


def test_adapter_l2_penalty_gradient_is_the_analytic_one():
    adapters = {k: (A.requires_grad_(), B.requires_grad_()) for k, (A, B) in _known_adapters().items()}
    adapter_l2_penalty(adapters).backward()
    for A, B in adapters.values():  # d/dX of mean(X²)/|targets| = 2X / (numel · 2)
        torch.testing.assert_close(A.grad, 2 * A.detach() / (A.numel() * 2))
        torch.testing.assert_close(B.grad, 2 * B.detach() / (B.numel() * 2))


def test_distillation_loss_adds_the_weighted_adapter_penalty():
    student, teacher, labels = _t(STUDENT), _t(TEACHER), torch.tensor([1, 2])
    adapters = _known_adapters()
    penalty = adapter_l2_penalty(adapters).item()
    out = distillation_loss(student, teacher, labels, ce_weight=0.25, adapters=adapters, adapter_l2=0.1)
    assert set(out) == {"loss", "kl", "ce", "adapter_l2"}
    assert out["adapter_l2"].item() == pytest.approx(penalty, rel=1e-6)  # reported unweighted
    expected = out["kl"].item() + 0.25 * out["ce"].item() + 0.1 * penalty
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    # The default weight 0 gives exactly the loss without adapters: same value, bit for bit, no extra metric.
    base = distillation_loss(student, teacher, labels, ce_weight=0.25)
    zero = distillation_loss(student, teacher, labels, ce_weight=0.25, adapters=adapters, adapter_l2=0.0)
    assert set(zero) == set(base) == {"loss", "kl", "ce"}
    assert torch.equal(zero["loss"], base["loss"])
    with pytest.raises(ValueError, match="adapters"):
        distillation_loss(student, teacher, labels, adapter_l2=0.1)
    with pytest.raises(ValueError, match="adapter_l2"):
        distillation_loss(student, teacher, labels, adapters=adapters, adapter_l2=-1.0)


def test_bad_arguments_raise_value_error():
    s, t = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="Unknown distillation loss"):
        kl_loss(s, t, kind="js")
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            kl_loss(s, t, temperature=bad)
    with pytest.raises(ValueError, match="differ"):
        kl_loss(s, torch.randn(2, 4))
    with pytest.raises(ValueError, match="differ"):
        kl_loss(s, torch.randn(3, 3))
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(s, t, None, ce_weight=1.0)
    assert set(LOSSES) == {"forward_kl", "reverse_kl"}


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl"])
def test_bf16_inputs_give_fp32_loss_close_to_fp32_reference(kind):
    gen = torch.Generator().manual_seed(4)
    student = torch.randn(16, 64, generator=gen) * 2
    teacher = torch.randn(16, 64, generator=gen) * 2
    s16, t16 = student.bfloat16(), teacher.bfloat16()
    got = kl_loss(s16, t16, kind, temperature=1.5, chunk=5)
    assert got.dtype == torch.float32
    # The reference on the same (rounded) values in fp32 is exact up to fp32 noise...
    ref_rounded = kl_loss(s16.float(), t16.float(), kind, temperature=1.5)
    torch.testing.assert_close(got, ref_rounded, rtol=1e-6, atol=1e-6)
    # ...and close to the unrounded fp32 loss (bf16 keeps ~3 significant digits).
    ref = kl_loss(student, teacher, kind, temperature=1.5)
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)
    # Gradients flow back in bf16 to the bf16 leaf.
    leaf = s16.clone().requires_grad_(True)
    kl_loss(leaf, t16, kind).backward()
    assert leaf.grad.dtype == torch.bfloat16 and torch.isfinite(leaf.grad.float()).all()


@pytest.mark.parametrize("key, value", [
    ("loss_chunk", 2.5), ("loss_chunk", True), ("loss_chunk", "512"), ("temperature", float("inf")),
    ("temperature", "2"), ("ce_weight", "x"), ("ce_weight", float("inf")), ("adapter_l2", True), ("loss", None),
])
def test_distill_config_refuses_wrong_types_in_one_line(key, value):
    from hyperlora.distill import DistillConfig

    with pytest.raises(ValueError, match=f"distill.{key}") as err:
        DistillConfig(**{key: value})
    assert "\n" not in str(err.value)
    DistillConfig(loss_chunk=1, temperature=2, ce_weight=0, adapter_l2=0.5)  # ints where floats belong are fine
