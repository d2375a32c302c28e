"""What the core needs to know about each engine framework, handed in by the engine registry.

The core never imports the engines: validation and estimation receive a `Catalog` built by
`reconciler.engines.registry.catalog()` from each engine module's descriptor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class FrameworkRules:
    """One framework as validation sees it."""

    name: str
    parameters: frozenset[str] | None
    """Known engine flags (without the leading --); None = not checked (e.g. docker)."""
    reserved_env: frozenset[str] = frozenset()
    """Environment names the engine reads as its listen address or port: a spec may not set them."""
    needs_image: bool = False
    """docker: the spec must name an image."""


Catalog = Mapping[str, FrameworkRules]
"""framework name -> its rules, for every framework the registry lists."""
