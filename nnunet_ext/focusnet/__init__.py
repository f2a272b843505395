"""FocusNetV2 pieces that are neither network nor loss: which organs count as small, the ROI box geometry, exact ROI
crop/paste and the Gaussian centroid targets of the localisation heads."""
