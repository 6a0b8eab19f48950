"""People the store knows besides residents' cases: staff accounts and what each role may read (staff, staff_queries), and family proxy grants (proxy)."""
