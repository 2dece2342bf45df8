"""Kind `lexicon_rl`: everything the paper's VADER task owns."""
