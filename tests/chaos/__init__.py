"""The chaos suite: the real worker under injected faults at every edge."""
