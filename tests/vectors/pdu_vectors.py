"""Golden upper layer PDUs (PS3.8 Section 9.3), annotated field by field.

Notation: hex digits, ``'text'`` for ASCII bytes, ``#`` starts a comment. Lengths are big-endian.
Shared by the unit tests (decode, re-encode, compare with pynetdicom) and the benchmarks.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"'([^']*)'|([0-9A-Fa-f]+)|(\S+)")


def parse(text: str) -> bytes:
    """Bytes of an annotated vector."""
    out = bytearray()
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        for quoted, digits, junk in _TOKEN.findall(line):
            if junk:
                raise ValueError(f"bad token {junk!r} in vector")
            if digits:
                out += bytes.fromhex(digits)
            else:
                out += quoted.encode("ascii")
    return bytes(out)


VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
PYNETDICOM_CLASS_UID = "1.2.826.0.1.3680043.9.3811.2.0.2"

A_ASSOCIATE_RQ = parse("""
01 00 00000159                      # A-ASSOCIATE-RQ, reserved, PDU length 345
0001 0000                           # protocol version 1, reserved
'ANY-SCP         '                  # called AE title, 16 bytes space padded
'ECHOSCU         '                  # calling AE title
0000000000000000 0000000000000000   # 32 reserved bytes
0000000000000000 0000000000000000
10 00 0015 '1.2.840.10008.3.1.1.1'  # application context item, length 21
20 00 0045                          # presentation context item (RQ), length 69
   01 00 00 00                      #   context ID 1, 3 reserved bytes
   30 00 0011 '1.2.840.10008.1.1'   #   abstract syntax sub-item: Verification
   40 00 0011 '1.2.840.10008.1.2'   #   transfer syntax: Implicit VR Little Endian
   40 00 0013 '1.2.840.10008.1.2.1' #   transfer syntax: Explicit VR Little Endian
20 00 0038                          # presentation context item (RQ), length 56
   03 00 00 00                      #   context ID 3
   30 00 0019 '1.2.840.10008.5.1.4.1.1.2'  # abstract syntax: CT Image Storage
   40 00 0013 '1.2.840.10008.1.2.1' #   transfer syntax: Explicit VR Little Endian
50 00 0073                          # user information item, length 115
   51 00 0004 00003FFE              #   maximum length 16382
   52 00 0020 '1.2.826.0.1.3680043.9.3811.2.0.2'  # implementation class UID
   53 00 0004 0005 0005             #   asynchronous operations window: 5 invoked, 5 performed
   54 00 001D                       #   SCP/SCU role selection, length 29
      0019 '1.2.840.10008.5.1.4.1.1.2'  # UID length 25, SOP class UID
      01 01                         #     SCU role 1, SCP role 1
   55 00 000E 'PYNETDICOM_202'      #   implementation version name
   58 00 0008                       #   user identity negotiation (kept verbatim), length 8
      01 00 0002 'ab' 0000          #     username, no response wanted, 'ab', no secondary
""")

A_ASSOCIATE_AC = parse("""
02 00 000000EA                      # A-ASSOCIATE-AC, reserved, PDU length 234
0001 0000                           # protocol version 1, reserved
'ANY-SCP         '                  # reserved: called AE title as in the RQ
'ECHOSCU         '                  # reserved: calling AE title as in the RQ
0000000000000000 0000000000000000   # 32 reserved bytes
0000000000000000 0000000000000000
10 00 0015 '1.2.840.10008.3.1.1.1'  # application context item
21 00 0019                          # presentation context item (AC), length 25
   01 00 00 00                      #   context ID 1, reserved, result 0 acceptance, reserved
   40 00 0011 '1.2.840.10008.1.2'   #   transfer syntax: Implicit VR Little Endian
21 00 0008                          # presentation context item (AC), length 8
   03 00 04 00                      #   context ID 3, result 4 transfer syntaxes not supported
   40 00 0000                       #   empty transfer syntax sub-item
50 00 0060                          # user information item, length 96
   51 00 0004 00040000              #   maximum length 262144
   52 00 0020 '1.2.826.0.1.3680043.9.3811.2.0.2'  # implementation class UID
   54 00 001D                       #   SCP/SCU role selection reply
      0019 '1.2.840.10008.5.1.4.1.1.2'
      01 00                         #     SCU role granted, SCP role refused
   55 00 000F 'PACS_ARCHIVE_01'     #   implementation version name
""")

A_ASSOCIATE_RJ = parse("""
03 00 00000004                      # A-ASSOCIATE-RJ, reserved, PDU length 4
00 01 01 03                         # reserved, result 1 permanent, source 1 service user,
                                    # reason 3 calling AE title not recognized
""")

# The command set of c_echo_rq(7): Implicit VR Little Endian, group 0000.
C_ECHO_RQ_COMMAND = parse("""
0000 0000 04000000 38000000         # (0000,0000) CommandGroupLength UL 4: 56
0000 0200 12000000 '1.2.840.10008.1.1' 00   # (0000,0002) AffectedSOPClassUID, NUL padded
0000 0001 02000000 3000             # (0000,0100) CommandField US: 0030H C-ECHO-RQ
0000 1001 02000000 0700             # (0000,0110) MessageID US: 7
0000 0008 02000000 0101             # (0000,0800) CommandDataSetType US: 0101H no data set
""")

P_DATA_TF_COMMAND = (
    parse("""
04 00 0000004A                      # P-DATA-TF, reserved, PDU length 74
   00000046 01 03                   #   PDV item length 70, context 1, control: command, last
""")
    + C_ECHO_RQ_COMMAND
)

P_DATA_TF_DATASET = parse("""
04 00 00000012                      # P-DATA-TF, PDU length 18
   00000006 03 00 'ABCD'            #   PDV length 6, context 3, data set fragment, not last
   00000004 03 02 'EF'              #   PDV length 4, context 3, data set, last fragment
""")

A_RELEASE_RQ = parse("05 00 00000004 00000000  # A-RELEASE-RQ, PDU length 4, 4 reserved bytes")
A_RELEASE_RP = parse("06 00 00000004 00000000  # A-RELEASE-RP, PDU length 4, 4 reserved bytes")
A_ABORT = parse("""
07 00 00000004                      # A-ABORT, PDU length 4
00 00 02 06                         # reserved, reserved, source 2 service provider,
                                    # reason 6 invalid PDU parameter value
""")

ALL = {
    "A-ASSOCIATE-RQ": A_ASSOCIATE_RQ,
    "A-ASSOCIATE-AC": A_ASSOCIATE_AC,
    "A-ASSOCIATE-RJ": A_ASSOCIATE_RJ,
    "P-DATA-TF command": P_DATA_TF_COMMAND,
    "P-DATA-TF data set": P_DATA_TF_DATASET,
    "A-RELEASE-RQ": A_RELEASE_RQ,
    "A-RELEASE-RP": A_RELEASE_RP,
    "A-ABORT": A_ABORT,
}

#: A stream holding every PDU once, for framing tests and benchmarks.
STREAM = b"".join(ALL.values())
