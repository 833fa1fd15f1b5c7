"""One structured JSON log line per call, in every service, keyed by a request id that travels with
the request (gRPC metadata `x-request-id`) from the client through the coordinator to the model
services, and back to the client in trailing metadata."""
import contextvars
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field

REQUEST_ID_KEY = "x-request-id"
LOGGER_NAME = "specrej.requests"

_current: contextvars.ContextVar["CallLog | None"] = contextvars.ContextVar("specrej_call_log", default=None)


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: time, level, logger, message, and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, default=str)


def request_logger() -> logging.Logger:
    """The logger of request lines: JSON on stderr, whatever format the service's other logs use."""
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


@dataclass
class CallLog:
    """What one call's log line will say; a servicer adds its own fields with `add`."""

    service: str
    method: str
    request_id: str
    fields: dict = field(default_factory=dict)

    @property
    def metadata(self) -> tuple:
        """Metadata that carries the request id to the next service."""
        return ((REQUEST_ID_KEY, self.request_id),)

    def add(self, **fields) -> None:
        self.fields.update(fields)

    def write(self, code: str, seconds: float) -> None:
        request_logger().info("%s %s %s", self.service, self.method, code, extra={"fields": {
            "service": self.service, "method": self.method, "request_id": self.request_id, "code": code,
            "seconds": round(seconds, 6), **self.fields}})


def request_id_of(invocation_metadata) -> str:
    """The caller's `x-request-id`, or a new one."""
    for key, value in invocation_metadata or ():
        if key == REQUEST_ID_KEY and value:
            return str(value)[:128]
    return uuid.uuid4().hex


def begin(call_log: CallLog) -> None:
    _current.set(call_log)


def current() -> CallLog:
    """The log of the call being served (outside a call: a throwaway one with a fresh id)."""
    call_log = _current.get()
    if call_log is None:
        call_log = CallLog(service="", method="", request_id=uuid.uuid4().hex)
        _current.set(call_log)
    return call_log
