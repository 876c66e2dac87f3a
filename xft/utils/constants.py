"""Constants shared across xft. Each has exactly one home: here."""

# Label value that carries no loss (torch's CrossEntropyLoss ignore_index default).
IGNORE_INDEX = -100

# The token id ``default_collate_fn`` pads ``input_ids`` with when a config gives no
# ``pad_index`` (XTuner's name and value). Padded positions are masked out by attention_mask and
# labelled IGNORE_INDEX, so the id itself never reaches the loss.
DEFAULT_PAD_TOKEN_INDEX = 0
