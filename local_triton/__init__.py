"""Run the real Triton Inference Server (nvidia-pytriton wheel) on our model repository, on CPU."""

from local_triton.backend_directory import ensure_backend_directory
from local_triton.distribution import TritonDistribution, TritonNotInstalledError, find_distribution
from local_triton.ports import free_port, free_ports
from local_triton.process import ManagedProcess, ManagedServer, ProcessError, serving
from local_triton.server import LocalTriton, TritonPorts, TritonServer, TritonServerError

__all__ = [
    "LocalTriton",
    "ManagedProcess",
    "ManagedServer",
    "ProcessError",
    "TritonDistribution",
    "TritonNotInstalledError",
    "TritonPorts",
    "TritonServer",
    "TritonServerError",
    "ensure_backend_directory",
    "find_distribution",
    "free_port",
    "free_ports",
    "serving",
]
