"""Face detection and tracking."""
