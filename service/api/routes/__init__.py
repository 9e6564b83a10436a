"""One router per resource; each parses the request, calls the service, returns the result."""
