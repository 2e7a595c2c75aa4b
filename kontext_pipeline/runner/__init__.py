"""Running a plan: the async executor, the runner (plan -> results -> outputs), the journal of
submitted tasks, the webhook receiver, and opening a provider by name."""
