"""Screens and dialogs. The session browser (another issue) belongs here too."""
