"""The torch-free method catalogue says exactly what the registry says."""

import pytest

from prunelab.errors import PrunelabError
from prunelab.method_catalogue import METHOD_CATALOGUE, MethodShape, method_shape
from prunelab.methods import list_methods, make_method
from prunelab.methods.registry import option_types


def _entry(cls) -> str:
    """The catalogue line to add for a registered method (printed when one is missing)."""
    return (f'"{cls.name}": MethodShape({option_types(cls)!r}, supports_nm={cls.supports_nm}, '
            f"quantizes={cls.quantizes}),")


def test_the_catalogue_lists_every_registered_method_with_its_options():
    registered = {cls.name: cls for cls in list_methods()  # the built-in ones
                  if cls.__module__.startswith("prunelab.methods.")}
    assert sorted(METHOD_CATALOGUE) == sorted(registered), (
        "add to prunelab/method_catalogue.py: " + " ".join(
            _entry(c) for n, c in registered.items() if n not in METHOD_CATALOGUE))
    for name, cls in registered.items():
        expected = MethodShape(option_types(cls), cls.supports_nm, cls.quantizes)
        shape = METHOD_CATALOGUE[name]
        assert (dict(shape.options), shape.supports_nm, shape.quantizes) == (
            dict(expected.options), expected.supports_nm, expected.quantizes), _entry(cls)
        assert list(shape.options) == list(expected.options), _entry(cls)  # help order


@pytest.mark.parametrize("name,options,fragment", [
    ("wandda", {}, "unknown method 'wandda'"),
    ("sparsegpt", {"percdam": "0.1"}, "has no option percdam"),
    ("sparsegpt", {"percdamp": "lots"}, "is not a float"),
    ("gptq", {"group_size": "wide"}, "is not an int or none"),
    ("flap", {"metric": "L2"}, "is not one of 'WIFV', 'IFV', 'WIFN'"),
])
def test_the_catalogue_and_the_registry_refuse_in_the_same_words(name, options, fragment):
    from prunelab.prune_request import check_prune_request

    with pytest.raises(PrunelabError, match=fragment) as by_registry:
        make_method(name, options)
    with pytest.raises(PrunelabError, match=fragment) as by_catalogue:
        check_prune_request(name, 0.5 if name != "gptq" else None, None, None, options)
    assert str(by_registry.value) == str(by_catalogue.value)


def test_method_shape_names_the_known_methods():
    assert method_shape("gptq").quantizes
    with pytest.raises(PrunelabError, match="use one of besa, dsnot"):
        method_shape("nope")
