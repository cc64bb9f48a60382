"""API layer: pydantic models of the resources, release identity, CRD generation. Pure."""
