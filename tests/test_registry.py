import pytest

from fopt.errors import UsageError
from fopt.registry import Registry


def test_register_get_and_names():
    reg: Registry[int] = Registry("thing")

    @reg.register("alpha")
    def _a():
        return 1

    reg.add("beta", 2)
    assert reg.get("alpha") is _a
    assert reg.get("beta") == 2
    assert reg.names() == ["alpha", "beta"]
    assert "alpha" in reg and "gamma" not in reg
    assert len(reg) == 2


def test_duplicate_is_a_programming_error():
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 2)


def test_unknown_key_lists_valid_and_suggests():
    reg: Registry[int] = Registry("model")
    reg.add("resnet18", 1)
    reg.add("resnet50", 2)
    with pytest.raises(UsageError) as e:
        reg.get("resnet19")
    msg = str(e.value)
    assert "unknown model 'resnet19'" in msg
    assert "Did you mean 'resnet18'" in msg
    assert "resnet50" in msg
