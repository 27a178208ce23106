"""OCI container backends (docker, podman) sharing one compiler and one run contract."""

from mechasandbox.backends.oci.compiler import (
    ContainerRun,
    EngineKind,
    EngineTraits,
    Runtime,
    compile_container_args,
)
from mechasandbox.backends.oci.docker import DockerBackend
from mechasandbox.backends.oci.engine import DEFAULT_IMAGE, OciBackend, reap_leftovers
from mechasandbox.backends.oci.podman import PodmanBackend
from mechasandbox.backends.oci.pool import PooledBackend
from mechasandbox.backends.oci.pool_settings import (
    AfterUse,
    PoolExhausted,
    PoolSettings,
    WhenExhausted,
)

__all__ = [
    "DEFAULT_IMAGE",
    "AfterUse",
    "ContainerRun",
    "DockerBackend",
    "EngineKind",
    "EngineTraits",
    "OciBackend",
    "PodmanBackend",
    "PoolExhausted",
    "PoolSettings",
    "PooledBackend",
    "Runtime",
    "WhenExhausted",
    "compile_container_args",
    "reap_leftovers",
]
