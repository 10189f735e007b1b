"""The ``huren`` command: the one place that composes the archive, the gateway and DICOMweb."""
