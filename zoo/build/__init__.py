"""Making populations: recipes (:mod:`.recipes`), the builder (:mod:`.builder`), batched training
(:mod:`.training`), fine-tune changes (:mod:`.finetune`), batched evaluation (:mod:`.evaluate`) and the
demo (:mod:`.demo`)."""
