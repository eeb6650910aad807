"""User errors and the checks that raise them."""

import re

import pytest

from jaxdiff.errors import UserError, check_choice, first_line, require


def test_a_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)
    with pytest.raises(ValueError, match="bad value"):
        require(False, "bad value")
    require(True, "never raised")


def test_check_choice_names_the_value_and_what_is_accepted():
    check_choice("sampler 'unipc': order", 2, (1, 2, 3))
    check_choice("crop", "center", {"center": 0, "random": 1})
    with pytest.raises(UserError, match=r"^crop='middle' is not supported; accepted: center, rand"):
        check_choice("crop", "middle", ("center", "random"))


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(True, (1, 2)), (1.0, (1, 2)), (1, ("1", "2")), (None, ("a",)), (["a"], ("a",))],
)
def test_check_choice_refuses_values_of_another_type_even_equal_ones(value, accepted):
    listed = ", ".join(map(str, accepted))
    message = re.escape(f"order={value!r} is not supported; accepted: {listed}")
    with pytest.raises(UserError, match=f"^{message}$"):
        check_choice("order", value, accepted)


def test_first_line_drops_colour_codes_and_later_lines():
    assert first_line(RuntimeError("\x1b[31mbroken\x1b[0m here\nmore detail")) == "broken here"
    assert first_line(KeyError()) == "KeyError()"
