"""The data: Oxford-IIIT Pet and its splits, near-duplicates, extra folders, ImageNet's names, tensor files."""
