"""The vision branch: style LoRAs on a small PixArt transformer, generated from a style image."""
