"""Text for calibration and perplexity, and the BIG-bench benchmark archive.

`sources` names the texts (corpora, provided prefixes such as "task:", local files),
`calibration` holds the one CalibrationConfig and its checks, `checks` the other plain window
arguments, `corpora` cuts text into token windows; none but `corpora` imports torch.
"""
