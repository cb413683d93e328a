"""atheris (libFuzzer) harnesses, run by ``make fuzz``: ``python -m fuzz.run TARGET CORPUS``.

Targets: ``scan`` (the tag scanner twins, tests/fuzz/harness.py), ``pdu`` (PDU framer and an
acceptor association), ``hl7`` (HL7 order handling, ACKs and MLLP framing), ``multipart`` (the
DICOMweb multipart parser). Each target module has ``check(data)``, which raises on a crash,
and ``seeds()``, small valid inputs; tests/unit/test_fuzz_regressions.py replays found crashes
through the same ``check``.
"""
