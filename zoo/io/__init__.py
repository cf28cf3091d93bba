"""Moving models in and out of a zoo: checkpoint readers (:mod:`.ingest`), ingest and export through
the store (:mod:`.transfer`), Hugging Face-style folders (:mod:`.export`) and the one guard for output
paths outside the zoo (:mod:`.outpath`)."""
