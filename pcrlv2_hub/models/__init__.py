"""The PCRLv2 networks (3D and 2D), their encoders for transfer learning, the skip U-Net for
segmentation, and the registry that builds any of them by architecture name."""
