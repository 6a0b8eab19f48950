"""Reaching out first: daily 平安电话 check-in calls, community notices by voice and SMS, and the
outbound calls both place through Twilio's REST API (revision 0010)."""
