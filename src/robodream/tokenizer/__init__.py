"""The frozen image tokenizer (convolutional autoencoder)."""
