"""Optional reference libraries: imported when present, a one-line error naming the extra when
not."""

import json
import sys

import pytest

from jaxdiff.errors import UserError
from jaxdiff.extras import import_optional


def test_a_present_library_is_imported():
    assert import_optional("json", "reading configs") is json


def test_a_missing_library_names_its_purpose_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # what Python does for an absent module
    with pytest.raises(UserError) as caught:
        import_optional("torch", "comparing with diffusers schedulers")
    message = str(caught.value)
    assert message.startswith("comparing with diffusers schedulers needs torch")
    assert message.endswith("install it with pip install 'jaxdiff[test]'")
    assert "\n" not in message
    assert isinstance(caught.value, ValueError)


def test_the_extra_can_be_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(UserError, match=r"pip install 'jaxdiff\[cuda\]'$"):
        import_optional("diffusers", "running on a GPU", extra="cuda")
