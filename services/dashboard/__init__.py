"""The operators' live alert dashboard: FastAPI page, live stream, alert images and feedback (see README.md)."""
