"""Baseline: a plain pynetdicom storage SCP that writes each instance to a file (the Python way).

Run as ``python -m bench.pynetdicom_scp PORT OUTDIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def main() -> None:
    port, outdir = int(sys.argv[1]), Path(sys.argv[2])
    outdir.mkdir(parents=True, exist_ok=True)

    def on_store(event: evt.Event) -> int:
        path = outdir / event.request.AffectedSOPInstanceUID
        with open(path, "wb") as fh:
            fh.write(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="BASELINE")
    ae.maximum_pdu_size = 262144
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, AllTransferSyntaxes)
    ae.add_supported_context(Verification)
    ae.maximum_associations = 64
    print("listening", flush=True)
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)])


if __name__ == "__main__":
    main()
