"""Drawing results: matplotlib figures (PNG) and the HTML report. Nothing here computes."""
