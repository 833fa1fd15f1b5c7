"""The Speculative Rejection service's Python client (`specrej.Client`) and its generated gRPC
code (`specrej.v1`, compiled from protos/).

The services import `specrej.v1` as well; the client modules load only when one of their names
is asked for, so importing the generated code never pulls in the client's own dependencies."""
from importlib import import_module

__all__ = ["Client", "FieldViolation", "ServiceError"]

_MODULE_OF = {"Client": "specrej.client", "FieldViolation": "specrej.errors", "ServiceError": "specrej.errors"}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'specrej' has no attribute {name!r}")
    return getattr(import_module(_MODULE_OF[name]), name)
