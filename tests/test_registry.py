"""The registry finds every method by the same name its class and model card use."""

import pytest

from stfusion.errors import StfusionError
from stfusion.models.registry import REGISTRY, available, get


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_registry_names_match_classes(name):
    cls = get(name)
    assert cls.name == name
    assert cls.description, f"{name} needs a one-line description for `stfusion methods`"
    for attr in ("fit", "save", "load"):
        assert callable(getattr(cls, attr))


def test_unknown_method_lists_available():
    with pytest.raises(StfusionError, match="constant"):
        get("no-such-method")
    assert "constant" in available()


def test_package_level_lookup():
    import stfusion.models as models

    assert models.get("histogene") is get("histogene")
    assert models.available() == available()
