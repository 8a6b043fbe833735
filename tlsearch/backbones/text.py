"""Text backbones (BERT family through keras-hub) are registered here."""
