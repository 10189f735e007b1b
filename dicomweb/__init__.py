"""The HTTP door: DICOMweb (PS3.18) on Starlette."""
