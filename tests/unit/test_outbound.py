"""ORU^R01 "study available" messages: fields where a RIS looks for them, delimiters escaped."""

from __future__ import annotations

import hl7

from pacs.worklist.outbound import OutboundMessage, study_available
from pacs.worklist.store import WorklistItem


def test_oru_fields_and_escaping() -> None:
    item = WorklistItem("ORD1^RIS", patient_id="P|1", issuer_of_patient_id="HOSP",
                        patient_name="Doe^Jane^Q^Dr^Jr", placer_order_number="ORD1^RIS",
                        filler_order_number="F1^PACS", accession_number="ACC&1",
                        requested_procedure_id="RP1", procedure_code_value="CTCHEST",
                        requested_procedure_description="CT chest", start_date="20260301",
                        start_time="083000", study_instance_uid="1.2.3.4")
    control, text = study_available(item, "http://pacs:8042/viewer?a=1&StudyInstanceUID=1.2",
                                    "PACS", now=0)
    message = hl7.parse(text)
    assert str(message.extract_field("MSH", 1, 10)) == control
    assert str(message.extract_field("MSH", 1, 9, 1, 2)) == "R01"
    assert message.unescape(str(message.extract_field("PID", 1, 3, 1, 1))) == "P|1"
    assert str(message.extract_field("PID", 1, 5, 1, 1)) == "Doe"
    assert str(message.extract_field("PID", 1, 5, 1, 4)) == "Jr"  # XPN suffix before prefix
    assert str(message.extract_field("ORC", 1, 2)) == "ORD1"
    assert message.unescape(str(message.extract_field("OBR", 1, 18))) == "ACC&1"
    assert str(message.extract_field("OBR", 1, 25)) == "F"
    assert str(message.extract_field("OBR", 1, 7)) == "20260301083000"
    assert str(message.extract_field("OBX", 1, 5)) == "1.2.3.4"
    url = str(message.segments("OBX")[1][5][0][0])
    assert message.unescape(url) == "http://pacs:8042/viewer?a=1&StudyInstanceUID=1.2"
    assert len(text.split("\r")) == 7 and text.endswith("\r")  # 6 segments, CR-terminated


def test_outbox_keys_sort_by_due_time() -> None:
    early = OutboundMessage("B", "x", "c1", due=100.0)
    late = OutboundMessage("A", "x", "c2", due=200.0)
    assert early.key < late.key
    assert OutboundMessage.decode(late.encode()) == late
