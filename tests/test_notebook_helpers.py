"""The notebooks' checks: one line that is the same on every machine, or a failure naming the value."""

import pytest

from infodisent.tutorials.notebook import CheckFailed, check


def test_the_line_says_what_was_checked_and_never_claims_the_expected_value_was_measured(capsys):
    check("compact top-1", 0.7583333, 0.742, within=0.03)
    check("channels per class K", 3, 3)
    check("sum - logit", -3.2e-7, 0.0, within=1e-4)
    check("W ≥ 0", True, True)
    assert capsys.readouterr().out.splitlines() == [
        "✓ compact top-1 within 0.03 of 0.742", "✓ channels per class K = 3", "✓ sum - logit within 0.0001 of 0",
        "✓ W ≥ 0"]


@pytest.mark.parametrize("value, expected, within", [(0.70, 0.742, 0.03), (5, 3, 0), (float("nan"), 0.0, 1.0),
                                                    (False, True, 0)])
def test_a_value_outside_its_tolerance_fails_and_names_it(value, expected, within):
    with pytest.raises(CheckFailed, match=f"x is {value:g}" if isinstance(value, float) else f"x is {value}"):
        check("x", value, expected, within)
