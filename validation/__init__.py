"""Reference ingestion, validation protocol, method-comparison statistics, verdicts and reports."""
