"""The export parity and int8 gates, as the pure functions that export and select call, with the
values of train/configs/gates.toml."""

from __future__ import annotations

from train.shipping.gates import Gates, int8_accepted, int8_rule, parity_failure

GATES = Gates.load()


def test_parity_gate() -> None:
    gate = GATES.parity
    assert parity_failure(gate.max_abs_logit_delta, True, gate) is None
    assert "max |Δlogit|" in parity_failure(gate.max_abs_logit_delta * 1.01, True, gate)
    assert "same top-1: False" in parity_failure(0.0, False, gate)
    assert "not all finite" in parity_failure(0.0, True, gate, finite=False)  # NaN on both sides fails
    assert parity_failure(float("nan"), True, gate) is not None


def test_int8_gate_judges_fidelity_to_fp32_not_speed() -> None:
    gate = GATES.int8
    assert int8_accepted(gate.min_top1_agreement, gate.max_probability_delta, gate)  # at both limits
    assert int8_accepted(1.0, 0.0, gate)
    assert not int8_accepted(gate.min_top1_agreement - 1e-4, 0.0, gate)  # answers otherwise too often
    assert not int8_accepted(1.0, gate.max_probability_delta + 1e-4, gate)  # same answers, other confidences
    assert "trainval" in int8_rule(gate) and "speed" not in int8_rule(gate)
