"""Loaded by the schemathesis run of test_relay_security (SCHEMATHESIS_HOOKS): cutout bodies are
opaque bytes on the wire, so generated values go out as bytes."""

import schemathesis
from schemathesis.transport.serialization import serialize_binary


@schemathesis.serializer("application/blosc", "application/npygz")
def cutout_body(ctx, value):
    return {"data": serialize_binary(value)}
