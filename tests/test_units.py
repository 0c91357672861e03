import pytest

from scopecli.core.errors import ScopeError
from scopecli.core.units import parse_unit_address, parse_units


def test_parse_units_forms():
    assert parse_units("all", 4) == [0, 1, 2, 3]
    assert parse_units("0:3", 10) == [0, 1, 2]
    assert parse_units("3,5,9", 10) == [3, 5, 9]
    assert parse_units("9,3,3", 10) == [3, 9]
    assert parse_units("7", 10) == [7]
    assert parse_units(":2,8:", 10) == [0, 1, 8, 9]


@pytest.mark.parametrize("spec", ["10", "0:11", "-1", "5:2", "x", "1,,y"])
def test_parse_units_errors_give_valid_range(spec):
    with pytest.raises(ScopeError) as exc:
        parse_units(spec, 10)
    message = str(exc.value)
    assert "0..9" in message or "cannot read" in message


def test_unit_addresses():
    assert parse_unit_address("layer4.2:117") == ("layer4.2", 117)
    assert parse_unit_address("features.1:0") == ("features.1", 0)
    for bad in ["layer4", ":3", "layer:x", "layer:-1"]:
        with pytest.raises(ScopeError):
            parse_unit_address(bad)
