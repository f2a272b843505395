"""FocusNetV2 (Gao et al., MedIA 2021): S-Net, SOL-Net heatmaps, SOS-Nets and the adversarial shape prior.

- network.py: FocusNetV2Network (S-Net + SOL head + SOS-Nets, paste at inference) and the shape autoencoder
- loss.py: heatmap, SOS and shape-prior losses
- organs.py: which organs count as small, the ROI box
- roi.py: exact ROI crop/paste, centroids and the Gaussian centroid targets
"""
