"""A requestor and an acceptor wired back to back, no sockets."""

from __future__ import annotations

from pacs.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN, VERIFICATION
from pacs.net import (
    AssociateRQ,
    Association,
    Event,
    PresentationContextRQ,
    Role,
    UserInformation,
    negotiate,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SUPPORTED = {
    VERIFICATION: (IMPLICIT_VR_LITTLE_ENDIAN,),
    CT_IMAGE_STORAGE: (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN),
}


def make_rq(max_length: int = 16384, contexts: tuple[PresentationContextRQ, ...] | None = None):
    if contexts is None:
        contexts = (
            PresentationContextRQ(1, VERIFICATION, (IMPLICIT_VR_LITTLE_ENDIAN,)),
            PresentationContextRQ(
                3, CT_IMAGE_STORAGE, (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)
            ),
            PresentationContextRQ(5, "1.2.3.4.5", (IMPLICIT_VR_LITTLE_ENDIAN,)),
        )
    return AssociateRQ(
        "ARCHIVE",
        "MODALITY",
        contexts,
        UserInformation(maximum_length=max_length, implementation_class_uid="1.2.3.4"),
    )


def drain(assoc: Association) -> list[Event]:
    events = []
    while (event := assoc.next_event()) is not None:
        events.append(event)
    return events


def associate(
    requestor_max: int = 16384, acceptor_max: int = 1024
) -> tuple[Association, Association]:
    """An established pair: requestor announces ``requestor_max``, acceptor ``acceptor_max``."""
    req = Association(Role.REQUESTOR, max_pdu_length=requestor_max)
    acc = Association(Role.ACCEPTOR, max_pdu_length=acceptor_max)
    acc.receive_data(req.send_associate_rq(make_rq(requestor_max)))
    (requested,) = drain(acc)
    ac = negotiate(requested.pdu, SUPPORTED, max_pdu_length=acceptor_max)
    req.receive_data(acc.accept(ac))
    drain(req)
    return req, acc
