"""Where results are kept: the local content-addressed cache, its checks and walks, and the
per-key claims that keep two runs from paying for the same request."""
