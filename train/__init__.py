"""Training the three detectors from the clip store (issue 3)."""
