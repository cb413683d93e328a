"""The catalog: LMDB records of patients, studies, series and instances (plus Arrow columns later)."""
