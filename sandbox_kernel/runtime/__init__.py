"""The container runtime's public facade: what frontends may import.

Frontends (CLI, magics, widgets, server) use the names here and the errors in
:mod:`sandbox_kernel.runtime.errors`, nothing deeper.
"""

from .errors import (
    ArchiveError,
    BlobError,
    BuildError,
    ContainerError,
    ImageError,
    ImageInUse,
    ImageNotFound,
    LayerError,
    ReferenceFormatError,
    SandboxError,
    StoreError,
    UsageError,
)
from .image.archive import Loaded, load, save
from .image.builder import RECIPES, build
from .image.layers import ExtractLimits, ExtractResult, extract_layer, write_layer
from .image.ref import Reference, parse_reference
from .image.store import Descriptor, Image, Store, default_root

__all__ = [
    "RECIPES",
    "ArchiveError",
    "BlobError",
    "BuildError",
    "ContainerError",
    "Descriptor",
    "ExtractLimits",
    "ExtractResult",
    "Image",
    "ImageError",
    "ImageInUse",
    "ImageNotFound",
    "LayerError",
    "Loaded",
    "Reference",
    "ReferenceFormatError",
    "SandboxError",
    "Store",
    "StoreError",
    "UsageError",
    "build",
    "default_root",
    "extract_layer",
    "load",
    "parse_reference",
    "save",
    "write_layer",
]
