"""status: one view of streams, groups, owners and book freshness."""
