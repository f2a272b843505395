"""FreeTumor (Wu et al., Nat. Commun. 2025): tumour synthesis with quality control.

- labels.py: which label is the organ and which its tumour, checked against dataset.json
- shape.py: ellipsoid + elastic deformation inside the eroded organ, boundary blur (2D and 3D)
- appearance.py: smooth textures, intensity statistics, the composition image - blurred shape * difference * texture
- synthesize.py: one tumour in one case or patch (TumourSynthesizer), seeded
- quality.py: baseline segmentor from an nnU-Net checkpoint, EMA copy, the >70% acceptance rule
- network.py, loss.py: the learned appearance generator, its 3-class discriminator and their losses
- cli.py: `nnunet_ext synth`
"""
