"""The container runtime's public facade: what frontends may import.

Frontends (CLI, magics, widgets, server) use the names here and the errors in
:mod:`sandbox_kernel.runtime.errors`, nothing deeper.
"""

from .cgroups import CgroupStats
from .container import ContainerInfo, ContainerResult, Containers, ContainerStats
from .errors import (
    ArchiveError,
    BlobError,
    BuildError,
    CgroupError,
    ContainerError,
    ContainerNotFound,
    ExecError,
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
from .spec import ContainerSpec, Limits, Mount, NetSpec, parse_cpus, parse_env, parse_size, parse_ulimit
from .state import State

__all__ = [
    "RECIPES",
    "ArchiveError",
    "BlobError",
    "BuildError",
    "CgroupError",
    "CgroupStats",
    "ContainerError",
    "ContainerInfo",
    "ContainerNotFound",
    "ContainerResult",
    "ContainerSpec",
    "ContainerStats",
    "Containers",
    "Descriptor",
    "ExecError",
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
    "State",
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
    "parse_ulimit",
    "save",
    "write_layer",
]
