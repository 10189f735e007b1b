"""The sharing guideline: rules as data, instance facts recorded at ingest,
judging a study against the rules, compliance records and recognition marks."""
