"""The Dash dashboard for reviewing validation runs."""
