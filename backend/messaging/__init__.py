"""Messages in and out: the SMS inbox (one unit of work per MessageSid), its ledger and texts, the durable outbox, and call records."""
