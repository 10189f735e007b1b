"""The DICOM door: the DIMSE service class provider (PS3.4, PS3.7, PS3.8)."""
