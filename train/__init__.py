"""Training the registry's detectors (the seed's three, the field's backbones, any timm model) from the clip store."""
