"""Allot's deterministic state machine: IPAM (pools, claims, allocations, classes).

Sans-io: it reads state through an ordered key-value view and returns the writes it wants.
No clocks, randomness, threads or I/O; time and identity come in the command. It imports only
the standard library, cbor2 and netaddr (tests/test_purity.py checks).
"""

from statemachine.codec import ENVELOPE_VERSION, Envelope, Principal, decode_envelope, encode_envelope
from statemachine.errors import REJECTION_CODES, InvariantViolation, Rejected
from statemachine.machine import COMMAND_TYPES, EntryApply, Ok, Outcome, apply, preview

__all__ = [
    "COMMAND_TYPES",
    "ENVELOPE_VERSION",
    "REJECTION_CODES",
    "EntryApply",
    "Envelope",
    "InvariantViolation",
    "Ok",
    "Outcome",
    "Principal",
    "Rejected",
    "apply",
    "decode_envelope",
    "encode_envelope",
    "preview",
]
