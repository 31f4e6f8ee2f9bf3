"""An image a container is about to run, as ``docker run`` finds it: in the store, else built from a local recipe
(``localhost/debian-kernel`` and the others of runtime/image/builder.py), else pulled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .runtime import ImageNotFound, Store


def obtain(store: Store, ref: str, say: Callable[[str], None], progress: Any = None) -> Any:
    """The image ``ref`` (an Image); ``say`` gets one line before a build or a pull, ``progress`` the pull's."""
    try:
        return store.resolve(ref)
    except ImageNotFound:
        pass
    from .runtime import RECIPES, build, parse_reference, pull

    for recipe in RECIPES.values():
        if parse_reference(recipe.ref) == parse_reference(ref):
            say(f"Building base image {recipe.name}...")
            return build(store, recipe.name)
    say(f"Pulling {ref}...")
    return pull(store, ref, progress=progress).image
