"""eapo.core.registry: one generic Registry, and every family of names held in one."""

import importlib

import pytest

from eapo.core.registry import Registry, UnknownName

FAMILIES = [  # (module, attribute): every family of names the config and the code pick implementations from
    ("eapo.core.advantages", "ADVANTAGES"),
    ("eapo.core.losses", "AGGREGATIONS"),
    ("eapo.core.losses", "POLICY_LOSSES"),
    ("eapo.core.weighting", "WEIGHTINGS"),
    ("eapo.core.cmi", "CMI_ESTIMATORS"),
    ("eapo.data.synthetic", "FAMILIES"),
    ("eapo.data.importers", "IMPORTERS"),
    ("eapo.sampler", "BACKENDS"),
]


def test_register_lookup_names_and_unregister():
    reg: Registry = Registry("widget")

    @reg.register("b")
    def b():
        return "b"

    assert reg.register("a")(len) is len
    assert reg["b"] is b and reg["a"] is len
    assert reg.names() == ("b", "a") and list(reg) == ["b", "a"] and len(reg) == 2
    assert "a" in reg and "c" not in reg and ["unhashable"] not in reg
    assert reg.unregister("a") is len and reg.names() == ("b",)
    assert reg.pop("a", None) is None
    del reg["b"]
    assert reg.names() == ()


def test_unknown_name_lists_the_registered_names_and_is_a_value_and_key_error():
    reg: Registry = Registry("widget")
    reg.register("zeta")(1)
    reg.register("alpha")(2)
    for bad in ("nope", ["unhashable"]):
        with pytest.raises(UnknownName) as err:
            reg[bad]
        assert str(err.value) == f"unknown widget {bad!r}; known: alpha, zeta"
        assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    with pytest.raises(UnknownName, match="unknown widget 'nope'"):
        reg.unregister("nope")


def test_a_name_is_registered_once_and_must_be_a_non_empty_string():
    reg: Registry = Registry("widget")
    reg.register("x")(1)
    with pytest.raises(ValueError, match="^widget 'x' is already registered$"):
        reg.register("x")(2)
    assert reg["x"] == 1
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="non-empty string"):
            reg.register(bad)


def test_name_attr_stores_the_name_on_the_registered_class():
    reg: Registry = Registry("widget", name_attr="name")

    @reg.register("round")
    class Round:
        name = "base"

    assert Round.name == "round"


@pytest.mark.parametrize(("module", "attr"), FAMILIES)
def test_every_family_of_names_is_a_registry(module, attr):
    reg = getattr(importlib.import_module(module), attr)
    assert isinstance(reg, Registry) and len(reg) > 0
    with pytest.raises(ValueError, match=f"^unknown {reg.kind} 'no-such-name'; known: "):
        reg["no-such-name"]


def test_config_names_are_checked_against_these_registries():
    """Every `Registered(...)` field type in eapo.config names one of the registries above."""
    import typing

    from eapo import config

    seen = set()
    for obj in vars(config).values():
        if isinstance(obj, type) and hasattr(obj, "__dataclass_fields__"):
            for hint in typing.get_type_hints(obj, include_extras=True).values():
                for arg in [hint, *typing.get_args(hint)]:
                    for meta in getattr(arg, "__metadata__", ()):
                        if isinstance(meta, config.Registered):
                            seen.add((meta.module, meta.attr))
    assert seen == set(FAMILIES)
