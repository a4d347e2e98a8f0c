"""Turn labels of the `::::` format (see MODEL_FORMAT.md)."""

LABEL_MARK = "::::"
# No EOS was trained after turns: the model ends its turn by starting the next label, so the label mark itself
# is the stop string.
STOP_STRING = LABEL_MARK
