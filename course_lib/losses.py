"""The label of a position whose prediction is not scored, the same for every model and loss
of the course: padding in a translation's targets, prompt or padding tokens in a GPT's,
the unselected positions of BERT's masked language model.

It is ``F.cross_entropy``'s default ``ignore_index``: a loss called without one skips these
positions too.
"""

IGNORE_INDEX = -100
