"""Text data formats (CSV, Parquet, JSON Lines) are registered here."""
