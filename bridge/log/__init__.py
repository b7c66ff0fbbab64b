"""The settlement log as a contract: its format and the checks anyone can run on it.

`blocks` (sealing, header hashes, attestations, finality), `merkle` (RFC 6962 trees and
inclusion paths), `head` (signed heads), `proof` (inclusion proofs), `source` (reading a log
from a SQLite store, a PostgreSQL store or an export directory) and `verify` (offline
verification). The tidy-table schema (`tables`) and the data package written beside it
(`datapackage`) belong here too, because the verifier checks an export directory by re-deriving
every table row and its `datapackage.json` from the replay: the export format is part of what
`log verify` judges.

What is built on top of the log (the exporter, the researcher's report, the sample generator)
lives in the `analysis` package, which imports this one; nothing in `bridge` imports `analysis`.
"""
