"""Hot paths as pure tensor code: batched population forward/evaluation. Imports nothing of the project."""
