"""Finding, splitting and decoding videos into a clip store."""
