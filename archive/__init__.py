"""The archive: configuration, blob stores, the SQL index and the one ingest path.

It imports nothing from the other rooms; :mod:`gateway` and :mod:`dicomweb` call into it.
"""
