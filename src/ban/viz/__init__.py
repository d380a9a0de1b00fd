"""Pictures of what a trained BAN looks at: attention heatmaps, attended boxes, grounded phrases."""
