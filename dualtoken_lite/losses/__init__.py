"""The objective (notebook 05): loss config, the terms, LPIPS, the discriminator and its schedule, training stages."""
