"""Architecture registry: a name in a bundle or recipe -> a constructor."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import UserInputError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = factory
        return factory

    return decorator


def names() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, num_classes: int = 10, input_size: int = 32, **kwargs) -> nn.Module:
    """Every architecture takes ``num_classes`` and ``input_size`` plus its own kwargs."""
    if name not in _REGISTRY:
        raise UserInputError(f"unknown architecture {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name](num_classes=num_classes, input_size=input_size, **kwargs)
