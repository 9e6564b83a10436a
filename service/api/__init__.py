"""The HTTP API: dependencies, the error handlers and one router per resource."""
