"""Reading images, intensity normalisation, patches and datasets (MONAI based)."""
