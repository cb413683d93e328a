"""RIS integration: HL7 v2 orders over MLLP become Modality Worklist items.

``mllp`` listens (worker 0), ``hl7_orders`` turns ORM^O01 messages into items and ACKs,
``store`` keeps the items in the catalog's ``worklist`` sub-database, and
``pacs.server.worklist_find`` answers C-FIND on the Modality Worklist model.
"""
