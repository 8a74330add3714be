"""Data sets on disk: Speech Commands / SC09 split CSVs (splits) and the built-in spoken-digits corpus (digits)."""
