"""The container runtime's public facade: what frontends may import.

Frontends (CLI, magics, widgets, server) use the names here and the errors in
:mod:`sandbox_kernel.runtime.errors`, nothing deeper. Names are imported on
first use, so a command pays only for the modules it needs (``run`` does not
load the layer extractor, ``images`` does not load the engine).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "CgroupStats": ".cgroups",
    "limit_refusal": ".cgroups",
    "rootless": ".userns_keeper",
    "root_ids": ".idmap",
    "start_time": ".state",
    "ContainerInfo": ".info",
    "ContainerResult": ".info",
    "ContainerStats": ".info",
    "Containers": ".container",
    "Report": ".check",
    "check_store": ".check",
    "ArchiveError": ".errors",
    "AuthError": ".errors",
    "RegistryError": ".errors",
    "BlobError": ".errors",
    "BuildError": ".errors",
    "CgroupError": ".errors",
    "ContainerError": ".errors",
    "ContainerNotFound": ".errors",
    "ExecCancelled": ".errors",
    "ExecError": ".errors",
    "ImageError": ".errors",
    "ImageInUse": ".errors",
    "ImageNotFound": ".errors",
    "LayerError": ".errors",
    "ReferenceFormatError": ".errors",
    "SandboxError": ".errors",
    "StoreError": ".errors",
    "UsageError": ".errors",
    "Loaded": ".image.archive",
    "load": ".image.archive",
    "save": ".image.archive",
    "RECIPES": ".image.builder",
    "build": ".image.builder",
    "ExtractLimits": ".image.layers",
    "ExtractResult": ".image.layers",
    "extract_layer": ".image.layers",
    "write_layer": ".image.layers",
    "ProgressEvent": ".image.pull",
    "PullResult": ".image.pull",
    "pull": ".image.pull",
    "PushResult": ".image.push",
    "push": ".image.push",
    "RegistryOptions": ".image.transport",
    "Reference": ".image.ref",
    "parse_reference": ".image.ref",
    "Descriptor": ".image.store",
    "Image": ".image.store",
    "Store": ".image.store",
    "default_root": ".image.store",
    "ContainerSpec": ".spec",
    "Limits": ".spec",
    "Mount": ".spec",
    "UNLIMITED_SWAP": ".spec",
    "NetSpec": ".spec",
    "format_size": ".spec",
    "parse_cpus": ".spec",
    "parse_env": ".spec",
    "parse_size": ".spec",
    "parse_ulimit": ".spec",
    "State": ".state",
    "Copied": ".copying",
    "split_location": ".copying",
    "HostCapacity": ".host",
    "capacity": ".host",
    "login": ".image.login",
    "logout": ".image.login",
    "Networks": ".network",
    "NetworkError": ".network",
    "parse_publish": ".proxy",
    "DEFAULT_ULIMITS": ".spec",
    "MIN_DISK": ".spec",
}

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from .cgroups import (
        CgroupStats,
        limit_refusal,
    )
    from .check import Report, check_store
    from .container import (
        Containers,
    )
    from .copying import Copied, split_location
    from .errors import (
        ArchiveError,
        AuthError,
        BlobError,
        BuildError,
        CgroupError,
        ContainerError,
        ContainerNotFound,
        ExecCancelled,
        ExecError,
        ImageError,
        ImageInUse,
        ImageNotFound,
        LayerError,
        ReferenceFormatError,
        RegistryError,
        SandboxError,
        StoreError,
        UsageError,
    )
    from .host import HostCapacity, capacity
    from .idmap import root_ids
    from .image.archive import (
        Loaded,
        load,
        save,
    )
    from .image.builder import (
        RECIPES,
        build,
    )
    from .image.layers import (
        ExtractLimits,
        ExtractResult,
        extract_layer,
        write_layer,
    )
    from .image.login import login, logout
    from .image.pull import ProgressEvent, PullResult, pull
    from .image.push import PushResult, push
    from .image.ref import (
        Reference,
        parse_reference,
    )
    from .image.store import (
        Descriptor,
        Image,
        Store,
        default_root,
    )
    from .image.transport import RegistryOptions
    from .info import (
        ContainerInfo,
        ContainerResult,
        ContainerStats,
    )
    from .network import NetworkError, Networks
    from .proxy import parse_publish
    from .spec import (
        DEFAULT_ULIMITS,
        MIN_DISK,
        ContainerSpec,
        Limits,
        Mount,
        NetSpec,
        format_size,
        parse_cpus,
        parse_env,
        parse_size,
        parse_ulimit,
    )
    from .state import (
        State,
        start_time,
    )
    from .userns_keeper import rootless


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_ULIMITS",
    "MIN_DISK",
    "RECIPES",
    "ArchiveError",
    "AuthError",
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
    "Copied",
    "Descriptor",
    "ExecCancelled",
    "ExecError",
    "ExtractLimits",
    "ExtractResult",
    "HostCapacity",
    "Image",
    "ImageError",
    "ImageInUse",
    "ImageNotFound",
    "LayerError",
    "Limits",
    "Loaded",
    "Mount",
    "NetSpec",
    "NetworkError",
    "Networks",
    "ProgressEvent",
    "PullResult",
    "PushResult",
    "Reference",
    "ReferenceFormatError",
    "RegistryError",
    "RegistryOptions",
    "Report",
    "SandboxError",
    "State",
    "Store",
    "StoreError",
    "UsageError",
    "build",
    "capacity",
    "check_store",
    "default_root",
    "extract_layer",
    "format_size",
    "limit_refusal",
    "load",
    "login",
    "logout",
    "parse_cpus",
    "parse_env",
    "parse_publish",
    "parse_reference",
    "parse_size",
    "parse_ulimit",
    "pull",
    "push",
    "root_ids",
    "rootless",
    "save",
    "split_location",
    "start_time",
    "write_layer",
]
