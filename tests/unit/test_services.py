"""The runtime's typed service container."""

import pytest

from batchops.core.runtime import Services


class Alpha:
    pass


class Beta:
    pass


def test_a_service_is_found_by_its_class() -> None:
    services = Services()
    alpha, beta = Alpha(), Beta()
    services.add(alpha, beta)
    assert services.get(Alpha) is alpha
    assert services.get(Beta) is beta


def test_an_unknown_class_names_itself() -> None:
    with pytest.raises(LookupError, match="no Beta in this runtime"):
        Services().get(Beta)


def test_a_class_is_registered_once() -> None:
    services = Services()
    services.add(Alpha())
    with pytest.raises(ValueError, match="Alpha is registered twice"):
        services.add(Alpha())
