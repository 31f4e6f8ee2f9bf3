"""The container runtime's public facade: what frontends may import.

Frontends (CLI, magics, widgets, server) use the names here and the errors in
:mod:`sandbox_kernel.runtime.errors`, nothing deeper.
"""

from .container import ContainerResult, Containers
from .errors import (
    ArchiveError,
    BlobError,
    BuildError,
    CgroupError,
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
from .spec import ContainerSpec, Limits, Mount, NetSpec, parse_cpus, parse_env, parse_size

__all__ = [
    "RECIPES",
    "ArchiveError",
    "BlobError",
    "BuildError",
    "CgroupError",
    "ContainerError",
    "ContainerResult",
    "ContainerSpec",
    "Containers",
    "Descriptor",
    "ExtractLimits",
    "ExtractResult",
    "Image",
    "ImageError",
    "ImageInUse",
    "ImageNotFound",
    "LayerError",
    "Limits",
    "Loaded",
    "Mount",
    "NetSpec",
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
    "parse_cpus",
    "parse_env",
    "parse_reference",
    "parse_size",
    "save",
    "write_layer",
]
