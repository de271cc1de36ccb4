"""Training-side tools: the lr range test, batch sizes timed and swept, warm-up schedules, L2 over the weights."""
