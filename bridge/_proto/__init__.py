"""Generated protobuf and gRPC code of the wire contract (protos/), one package per proto package.

Do not edit: regenerate with `python scripts/gen_protos.py` (tests/unit/test_protos_fresh.py
fails when this copy is stale). Import as `from bridge._proto.bridge.v1 import types_pb2`;
the conversions to and from the domain model live in `bridge.wire`.
"""
