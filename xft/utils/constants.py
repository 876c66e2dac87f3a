"""Constants shared across xft. Each has exactly one home: here."""

# Label value that carries no loss (torch's CrossEntropyLoss ignore_index default).
IGNORE_INDEX = -100

# Placeholder for the image token of multimodal templates; kept for XTuner parity.
DEFAULT_PAD_TOKEN_INDEX = 0
