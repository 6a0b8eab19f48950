"""Care alerts for seniors living alone: sensor readings → graded alerts → people who respond in time."""
