"""Kind `preference_dpo`: everything the HH-RLHF and toxic tasks own."""
