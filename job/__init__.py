"""Ticket-similarity fine-tuning job."""
