"""live.run_fresh: a probe in a new interpreter, with results and errors carried back."""

import os
import pickle

import pytest

import thpcore.errors
from thpcore import live


def _describe(x, y=0):
    return os.getpid(), os.getppid(), x + y


def _fail(msg):
    raise ValueError(msg)


def _die():
    os.kill(os.getpid(), 9)


def test_run_fresh_returns_the_result_from_another_process():
    pid, ppid, total = live.run_fresh(_describe, 2, y=3)
    assert total == 5
    assert pid != os.getpid() and ppid == os.getpid()


def test_run_fresh_reraises_the_childs_exception_with_its_traceback():
    with pytest.raises(ValueError, match="boom") as info:
        live.run_fresh(_fail, "boom")
    assert any("_fail" in n for n in getattr(info.value, "__notes__", []))


def test_run_fresh_reports_a_child_killed_by_a_signal():
    with pytest.raises(live.ChildDied) as info:
        live.run_fresh(_die)
    assert info.value.signal == 9


def test_run_fresh_refuses_a_function_it_cannot_name():
    with pytest.raises((pickle.PicklingError, AttributeError)):
        live.run_fresh(lambda: 1)


def test_run_fresh_child_output_does_not_corrupt_the_result(capfd):
    assert live.run_fresh(print, "noise on stdout") is None
    assert "noise on stdout" in capfd.readouterr().err


def test_run_fresh_refuses_a_function_from_main_with_a_clear_error():
    import __main__
    def f():
        return 1
    f.__module__ = "__main__"
    with pytest.raises(ValueError, match="__main__"):
        live.run_fresh(f)
    assert __main__ is not None


def test_unsupported_is_thpcore_unsupported_and_a_pytest_skip():
    """live.Unsupported is thpcore's Unsupported (a ValueError) and, under pytest, a skip."""
    assert issubclass(live.Unsupported, thpcore.errors.Unsupported)
    assert issubclass(live.Unsupported, pytest.skip.Exception)
    with pytest.raises(pytest.skip.Exception) as exc:
        raise live.Unsupported("no such feature")
    assert isinstance(exc.value, ValueError) and str(exc.value) == "no such feature"
    assert live.Unsupported.__module__ == "thpcore.live"
