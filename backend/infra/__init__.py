"""What every domain stands on: database and schema, the transaction runner, jobs, crypto and keys, audit chain, retention, sessions, private files, observability."""
