"""PS3.5 / PS3.10 encoding: UIDs, Part-10 file meta, and the tag scanner (compiled and pure)."""
