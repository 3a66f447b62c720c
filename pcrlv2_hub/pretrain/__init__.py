"""PCRLv2 pretraining: data in (volumes, images), views and corruptions, the training loop."""
