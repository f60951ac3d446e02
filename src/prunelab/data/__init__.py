"""Text corpora for calibration and perplexity, and the BIG-bench benchmark archive."""
