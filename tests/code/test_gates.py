"""The export parity and int8 gates, as the pure functions that export and select call, with the
values of train/configs/gates.toml."""

from __future__ import annotations

from train.gates import Gates, int8_accepted, parity_failure

GATES = Gates.load()


def test_parity_gate() -> None:
    gate = GATES.parity
    assert parity_failure(gate.max_abs_logit_delta, True, gate) is None
    assert "max |Δlogit|" in parity_failure(gate.max_abs_logit_delta * 1.01, True, gate)
    assert "same top-1: False" in parity_failure(0.0, False, gate)
    assert "not all finite" in parity_failure(0.0, True, gate, finite=False)  # NaN on both sides fails
    assert parity_failure(float("nan"), True, gate) is not None


def test_int8_gate_needs_accuracy_and_speed() -> None:
    gate = GATES.int8
    assert int8_accepted(gate.max_accuracy_drop, gate.min_speedup, gate)
    assert int8_accepted(-0.01, 3.0, gate)  # more accurate and faster
    assert not int8_accepted(gate.max_accuracy_drop + 1e-4, 3.0, gate)
    assert not int8_accepted(0.0, 0.88, gate)  # as accurate but slower: on this project's machine, for one
