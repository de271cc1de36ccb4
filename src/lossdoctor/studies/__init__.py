"""One module per lecture study: each runs analyses on a built-in problem and returns a result."""
