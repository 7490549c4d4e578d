"""GigaWorld-Policy: the action-centred world-action model (arXiv 2603.17240)."""
