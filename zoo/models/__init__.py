"""What a stored model is and what it is trained on: architecture families (:mod:`.architectures`),
data sets (:mod:`.datasets`) and corruption transforms (:mod:`.corruptions`)."""
