"""CLI verb of the image tokenizer: ``robodream train tokenizer`` (convention: :mod:`robodream.utils.cli`)."""

from __future__ import annotations

from robodream.utils.cli import Apps, register_train_verb


def register(apps: Apps) -> None:
    """Add ``train tokenizer``."""
    from robodream.tokenizer.train import TokenizerRunConfig, train_tokenizer

    register_train_verb(apps, "tokenizer", TokenizerRunConfig, train_tokenizer, "tokenizer",
                        ["held-out PSNR (dB)", "train PSNR (dB)", "held-out frames"],
                        lambda r: [r["psnr_heldout"], r["psnr_train"], r["n_heldout_frames"]])
