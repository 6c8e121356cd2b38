"""The environment patch restores every variable it touched, set or absent, also when the body raises."""

from __future__ import annotations

import os

import pytest

from vlsa.io.environ import patched_environ


def test_patched_environ_sets_unsets_and_restores(monkeypatch):
    monkeypatch.setenv("VLSA_T_KEPT", "before")
    monkeypatch.setenv("VLSA_T_GONE", "present")
    monkeypatch.delenv("VLSA_T_NEW", raising=False)
    with pytest.raises(RuntimeError):
        with patched_environ({"VLSA_T_KEPT": "during", "VLSA_T_NEW": "added"}, unset=("VLSA_T_GONE",)):
            assert (os.environ["VLSA_T_KEPT"], os.environ["VLSA_T_NEW"]) == ("during", "added")
            assert "VLSA_T_GONE" not in os.environ
            raise RuntimeError("the body failed")
    assert os.environ["VLSA_T_KEPT"] == "before" and os.environ["VLSA_T_GONE"] == "present"
    assert "VLSA_T_NEW" not in os.environ
