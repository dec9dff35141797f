"""The teacher: operators' marks -> the product's nominal overlay (taught, guarded, undone), which workers follow."""
