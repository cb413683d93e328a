"""The catalog: LMDB records of patients, studies, series, instances (Arrow columns later)."""
