"""Reading the store as data: fluent model queries (:mod:`.fluent`), read-only DuckDB SQL over the
live catalog (:mod:`.analytics`) and derived tables of learner outputs (:mod:`.tables`)."""
