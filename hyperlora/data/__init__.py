"""Records, their JSONL format, prompt formatting, collators and teacher labelling."""
