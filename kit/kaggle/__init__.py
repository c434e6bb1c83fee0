"""Kaggle through its official client: connecting and retrying (api), the competition's files
(download), uploads and their scores (submit) and the append-only record of them (ledger)."""
