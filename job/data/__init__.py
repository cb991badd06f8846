"""Tickets and links in, pairs out: reading and validating inputs (and Jira exports), the link-component
split, pairs and the negative strategies."""
