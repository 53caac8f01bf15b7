"""The torch toolkit of the deep methods: the trainer, augmentations, backbones, shared layers."""
